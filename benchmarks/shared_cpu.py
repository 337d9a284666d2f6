"""Training on a shared machine: samples/s alone and beside a busy process, with torch's threads
fixed at the cores the process may use (before) and following the cores other processes leave it
free (after, ``genai_pipeline.training.CpuThreads``; issue 19).

    python benchmarks/shared_cpu.py --out /tmp/shared_cpu.json      # ~3 min on 2 cores

Each measurement runs in a process of its own. **before**: the pipeline's thread watch is switched
off, so torch keeps a thread per core it may run on, as it did; **after**: the pipeline as it is.
The competitor is one Python process spinning on a core for the whole measurement, as a neighbour
on a shared node or CI runner would. The workload is the autoregressive family's training on UCI
Adult (``benchmark_data.load_adult``, 32,561 rows), ``--epochs`` epochs of batch ``--batch-size``
after an untimed warm-up; the figure is training rows per second, the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from figures import save

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
import torch
from genai_pipeline.training import CpuThreads
if sys.argv[1] == "fixed":  # before: the threads stay a thread per core the process may use
    CpuThreads.adjust = lambda self, now: None
sys.path.insert(0, {benchmarks!r})
from benchmark_data import load_adult
from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.models import model_class

epochs, batch = int(sys.argv[2]), int(sys.argv[3])
table = load_adult()
cls = model_class("tabular", "autoregressive")
warm = cls(cls.Config(), device=torch.device("cpu"))
warm.fit(TabularData(table.slice(0, 2000), "income"), TrainSpec(epochs=1, device="cpu"), None)
model = cls(cls.Config(), device=torch.device("cpu"))
train = TrainSpec(epochs=epochs, batch_size=batch, device="cpu", seed=0, early_stopping_patience=None)
started = time.perf_counter()
model.fit(TabularData(table, "income"), train, None)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "rows": table.num_rows * epochs}}))
"""


def measure(threads: str, busy: bool, args: argparse.Namespace) -> dict:
    """One training run in a fresh process (``threads``: fixed or following), beside a spinning
    process when ``busy``."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        script = _CHILD.format(benchmarks=str(ROOT / "benchmarks"))
        out = subprocess.run(
            [sys.executable, "-c", script, threads, str(args.epochs), str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["samples_per_second"] = result["rows"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = {}
    for label, threads in (("before", "fixed"), ("after", "following")):
        for busy in (False, True):
            runs = [measure(threads, busy, args) for _ in range(args.repeats)]
            best = max(runs, key=lambda run: run["samples_per_second"])
            key = f"{label}, {'beside a busy process' if busy else 'alone'}"
            figures[key] = {"best": best, "runs": [round(run["samples_per_second"]) for run in runs]}
            print(f"{key:<32} {best['samples_per_second']:>9,.0f} samples/s", flush=True)
    for label in ("before", "after"):
        alone = figures[f"{label}, alone"]["best"]["samples_per_second"]
        busy = figures[f"{label}, beside a busy process"]["best"]["samples_per_second"]
        figures[f"{label} slowdown"] = alone / busy
        print(f"{label}: beside a busy process {alone / busy:.2f}× slower (losing one core of 2: 2×)")
    save(args.out, args, figures)


if __name__ == "__main__":
    main()
