"""Training throughput per family on Adult: samples/s with Adam's fused kernel and without (issue 19).

    python benchmarks/step_throughput.py --out /tmp/steps.json      # ~4 min on 2 cores

Each family (its default configuration, batch 256) trains ``--epochs`` epochs of UCI Adult (32,561
rows) in a fresh process, after an untimed one-epoch warm-up, alternately with
``genai_pipeline.training.FUSED_ADAM`` off (before) and on (after), ``--repeats`` times; the figure
is the training loop's samples/s (``FitReport.samples_per_second``), the median of the repeats.
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
FAMILIES = ("autoregressive", "diffusion", "vae", "gan")

_CHILD = """
import json, sys
import torch
sys.path.insert(0, {benchmarks!r})
from benchmark_data import load_adult
from genai_pipeline import training
from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.models import model_class

family, fused, epochs = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
training.FUSED_ADAM = fused
table = load_adult()
cls = model_class("tabular", family)
cls(cls.Config(), device=torch.device("cpu")).fit(
    TabularData(table.slice(0, 4000), "income"), TrainSpec(epochs=1, device="cpu"), None
)
model = cls(cls.Config(), device=torch.device("cpu"))
report = model.fit(TabularData(table, "income"), TrainSpec(epochs=epochs, batch_size=256, device="cpu"), None)
print(json.dumps({{"samples_per_second": report.samples_per_second, "seconds": report.seconds}}))
"""


def measure(family: str, fused: bool, epochs: int) -> float:
    script = _CHILD.format(benchmarks=str(ROOT / "benchmarks"))
    out = subprocess.run(
        [sys.executable, "-c", script, family, "1" if fused else "0", str(epochs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = {}
    for family in args.families.split(","):
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):  # alternated, so that drift on a shared machine hits both
            runs["before"].append(measure(family, False, args.epochs))
            runs["after"].append(measure(family, True, args.epochs))
        before, after = (statistics.median(runs[key]) for key in ("before", "after"))
        figures[family] = {"runs": runs, "before": before, "after": after, "speed-up": after / before}
        print(
            f"{family:<15} before {before:>9,.0f}  after {after:>9,.0f} samples/s  ({after / before:.2f}×)",
            flush=True,
        )
    save(args.out, args, figures)


if __name__ == "__main__":
    main()
