"""UCI Adult through our whole nightly job against MOSTLY AI's TabularARGN: fit, sampling, peak RSS
and fidelity, in one run (issue 19; the goal, ``../shared/PEERS.md``: a third of its fit time, 5×
its sampling rate, at most 800 MB for the whole job).

    python benchmarks/adult_side_by_side.py --out /tmp/side.json        # ~6 min on 2 cores

**Ours**: ``genai-pipeline run`` on a job of Adult's training rows (``adult.data``, written as a
Parquet file) with the autoregressive family, early stopping, 100,000 rows generated, validated and
published, in a process of its own: wall seconds and peak RSS from ``/usr/bin/time`` (the largest
process of the job: Prefect's temporary server runs in its own), fit and sampling seconds from the
run's manifest. **TabularARGN**: ``peer_mostly.py --epsilon none`` in its virtualenv
(``--mostly-python``): fit and sample 100,000 rows, its defaults (model Medium, value protection,
early stopping), the peak RSS of its process. Fidelity for both: column shapes and pair trends
(``genai_pipeline.quality.tabular``, SDMetrics' definitions) of the first 20,000 rows against the
training rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchmark_data import load_adult  # noqa: E402
from figures import save  # noqa: E402

from genai_pipeline.quality.tabular import column_shapes, pair_trends_score  # noqa: E402

SCORE_ROWS = 20_000

JOB = """
name: adult-side-by-side
dataset:
  uri: {data}
  label: income
model:
  family: autoregressive
train:
  epochs: {epochs}
  batch_size: {batch}
  device: cpu
  seed: 0
  early_stopping_patience: {patience}
generate:
  num_samples: {rows}
validate:
  max_memorised_share: 1.0
export:
  output: {output}
  workspace: {workspace}
"""


def fidelity(real, synthetic) -> dict[str, float]:  # type: ignore[no-untyped-def]
    scored = synthetic.slice(0, SCORE_ROWS)
    return {
        "column_shapes": round(float(np.mean(list(column_shapes(real, scored).values()))), 4),
        "pair_trends": round(pair_trends_score(real, scored), 4),
    }


def ours(args: argparse.Namespace, folder: Path, real) -> dict:  # type: ignore[no-untyped-def]
    data = folder / "adult.parquet"
    pq.write_table(real, data)
    output, workspace = folder / "output", folder / "workspace"
    job = folder / "job.yaml"
    job.write_text(
        JOB.format(
            data=data,
            epochs=args.epochs,
            batch=args.batch_size,
            patience=args.patience,
            rows=args.rows,
            output=output,
            workspace=workspace,
        )
    )
    timing = folder / "time.txt"
    command = [
        "/usr/bin/time",
        "-f",
        "%e %M",
        "-o",
        str(timing),
        str(Path(sys.executable).parent / "genai-pipeline"),
    ]
    done = subprocess.run([*command, "run", str(job)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"our job failed: {done.stderr.strip().splitlines()[-1:]}")
    wall, rss_kb = timing.read_text().split()[-2:]
    (manifest_path,) = (output / "adult-side-by-side" / "_runs").glob("*.json")
    manifest = json.loads(manifest_path.read_text())
    fit = manifest["model"]["fit"]
    synthetic = pq.read_table(sorted((output / "adult-side-by-side").glob("data/*/part-*.parquet"))[0])
    return {
        "wall_seconds": float(wall),
        "fit_seconds": round(fit["seconds"], 2),
        "epochs": fit["epochs"],
        "stopped": fit["stopped"],
        "sample_seconds": round(manifest["generated"]["seconds"], 2),
        "sampled_rows": manifest["generated"]["num_samples"],
        "peak_rss_mb": round(int(rss_kb) / 1024),
        **fidelity(real, synthetic),
    }


def theirs(args: argparse.Namespace, folder: Path, real) -> dict:  # type: ignore[no-untyped-def]
    out = folder / "mostly"
    command = [args.mostly_python, "peer_mostly.py", "--epsilon", "none", "--rows", str(args.rows)]
    done = subprocess.run(
        [*command, "--max-minutes", str(args.peer_minutes), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT / "benchmarks",
    )
    if done.returncode != 0:
        raise SystemExit(f"TabularARGN failed: {done.stderr.strip().splitlines()[-1:]}")
    run = json.loads((out / "run.json").read_text())
    synthetic = pq.read_table(out / "synthetic.parquet")
    return {
        "fit_seconds": run["fit_seconds"],
        "epochs": run["epochs_trained"],
        "sample_seconds": run["sample_seconds"],
        "sampled_rows": run["sampled_rows"],
        "peak_rss_mb": run["peak_rss_mb"],
        **fidelity(real, synthetic),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--mostly-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--peer-minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    real = load_adult()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as folder:
        figures["ours"] = ours(args, Path(folder), real)
        print("ours       ", figures["ours"], flush=True)
        figures["TabularARGN"] = theirs(args, Path(folder), real)
        print("TabularARGN", figures["TabularARGN"], flush=True)
    a, b = figures["ours"], figures["TabularARGN"]
    figures["ratios"] = {
        "fit_time": a["fit_seconds"] / b["fit_seconds"],
        "sampling_rate": (a["sampled_rows"] / a["sample_seconds"])
        / (b["sampled_rows"] / b["sample_seconds"]),
        "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"],
    }
    print("ratios     ", {key: round(value, 2) for key, value in figures["ratios"].items()})
    save(args.out, args, figures)


if __name__ == "__main__":
    main()
