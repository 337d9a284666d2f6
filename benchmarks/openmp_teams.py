"""What a second OpenMP team costs: a loop of torch's small parallel steps in the thread that used
torch first, then in a second thread beside that thread's team, then in a second thread after the
team was released (``genai_pipeline.cpus.release_openmp_team``), each in a fresh process (issue 19).

    python benchmarks/openmp_teams.py --out /tmp/openmp.json     # ~30 s on 2 cores

With more OpenMP threads than cores, libgomp lets a waiting thread spin only briefly before it
sleeps, so each parallel step waits for a wake-up: what slowed a shard sampled in a pool thread of
the flow after training in the flow's thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from figures import save

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, threading, time
import torch
from genai_pipeline.cpus import release_openmp_team

case, steps = sys.argv[1], int(sys.argv[2])
x, w = torch.randn(4096, 64), torch.randn(64, 64)
seconds = {}

def loop(name):
    started = time.perf_counter()
    for _ in range(steps):
        torch.nn.functional.silu(x @ w).exp_().cumsum_(dim=1)
    seconds[name] = time.perf_counter() - started

loop("first thread")
if case == "released":
    assert release_openmp_team()
thread = threading.Thread(target=loop, args=("second thread",))
thread.start()
thread.join()
print(json.dumps(seconds))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"first thread": [], "second thread": [], "second thread, released": []}
    for _ in range(args.repeats):  # alternated, so that drift on a shared machine hits both
        for case in ("beside", "released"):
            command = [sys.executable, "-c", _CHILD, case, str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            if case == "beside":
                runs["first thread"].append(seconds["first thread"])
                runs["second thread"].append(seconds["second thread"])
            else:
                runs["second thread, released"].append(seconds["second thread"])
    figures = {name: {"runs": values, "median": statistics.median(values)} for name, values in runs.items()}
    for name, figure in figures.items():
        print(f"{name:<26} {figure['median']:.3f} s  ({', '.join(f'{v:.3f}' for v in figure['runs'])})")
    save(args.out, args, figures)


if __name__ == "__main__":
    main()
