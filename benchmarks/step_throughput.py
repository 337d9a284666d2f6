"""Training throughput per family on Adult: samples/s before and after a change (issue 19).

    python benchmarks/step_throughput.py --out /tmp/steps.json      # ~4 min on 2 cores
    python benchmarks/step_throughput.py --before 9aeb386 --families autoregressive

Each family (its default configuration, batch 256) trains ``--epochs`` epochs of UCI Adult (32,561
rows) in a fresh process, after an untimed one-epoch warm-up, alternately before and after,
``--repeats`` times; the figure is the training loop's samples/s (``FitReport.samples_per_second``),
the median of the repeats. Before and after are, by default, this tree with
``genai_pipeline.training.FUSED_ADAM`` off and on; with ``--before REV``, the code of commit ``REV``
(a temporary git worktree, imported first) and this tree's, both as they are; ``--compile`` adds
``torch.compile`` to the after's training on the CPU (its samples/s then include the compilation,
cached on disk by Inductor after the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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

family, fused, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if fused == "compile":  # torch.compile on the CPU too, which the families leave to CUDA
    training.maybe_compile = lambda module, train, device: torch.compile(module)
    sys.modules[model_class("tabular", family).__module__].maybe_compile = training.maybe_compile
elif fused != "as-is":
    training.FUSED_ADAM = fused == "1"
table = load_adult()
cls = model_class("tabular", family)
cls(cls.Config(), device=torch.device("cpu")).fit(
    TabularData(table.slice(0, 4000), "income"), TrainSpec(epochs=1, device="cpu"), None
)
model = cls(cls.Config(), device=torch.device("cpu"))
report = model.fit(TabularData(table, "income"), TrainSpec(epochs=epochs, batch_size=256, device="cpu"), None)
print(json.dumps({{"samples_per_second": report.samples_per_second, "seconds": report.seconds}}))
"""


def measure(family: str, fused: str, epochs: int, source: Path = ROOT) -> float:
    """Samples/s of one run in a fresh process of the code at ``source``; ``fused``: "1", "0",
    "as-is" (FUSED_ADAM left as the code has it) or "compile" (as-is, and ``torch.compile``)."""
    script = _CHILD.format(benchmarks=str(ROOT / "benchmarks"))
    out = subprocess.run(
        [sys.executable, "-c", script, family, fused, str(epochs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--before", help="a commit to compare this tree with (default: FUSED_ADAM off)")
    parser.add_argument("--compile", action="store_true", help="after: this tree with torch.compile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="step_throughput_") as folder:
        if args.before:
            subprocess.run(["git", "worktree", "add", "-q", folder, args.before], check=True, cwd=ROOT)
        try:
            figures = compare(args, Path(folder))
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", folder], check=True, cwd=ROOT)
    save(args.out, args, figures)


def compare(args: argparse.Namespace, worktree: Path) -> dict:
    """Before against after for each family, alternated, so that drift on a shared machine hits both."""
    before = (worktree, "as-is") if args.before else (ROOT, "0")
    after = (ROOT, "compile" if args.compile else "as-is") if args.before else (ROOT, "1")
    figures = {}
    for family in args.families.split(","):
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            runs["before"].append(measure(family, before[1], args.epochs, before[0]))
            runs["after"].append(measure(family, after[1], args.epochs, after[0]))
        before, after = (statistics.median(runs[key]) for key in ("before", "after"))
        figures[family] = {"runs": runs, "before": before, "after": after, "speed-up": after / before}
        print(
            f"{family:<15} before {before:>9,.0f}  after {after:>9,.0f} samples/s  ({after / before:.2f}×)",
            flush=True,
        )
    return figures


if __name__ == "__main__":
    main()
