"""Training cost against rows: seconds per epoch, samples/s and peak RSS of one epoch on UCI Adult
bootstrapped to 32k, 1M and 10M rows and widened to 100 columns (``wide``: Adult's 32k rows,
its columns again from seeded shuffles of its rows), ours held in memory and streamed from row groups
(``train.in_memory_rows``), against MOSTLY AI's TabularARGN and SDV's CTGAN at the sizes they
finish (issue 19). ``--family gan`` measures the GAN instead of the autoregressive family;
``--max-minutes`` cuts each of our epochs short, its length then the rows over the rate measured;
``--constraints`` gives ours the rules ``constraints.py`` gives Adult (the peers none).

    python benchmarks/training_scale.py --out /tmp/scale.json       # ~25 min on 2 cores

The tables are written once (``--data``, default ``/tmp/genai_scale``) as the pipeline stages its
training rows: one Parquet file in row groups of 128k rows. Each measurement runs in a process of
its own, so its peak RSS is its own. **ours, in memory**: the snapshot read whole, as a table of
at most ``train.in_memory_rows`` trains; **ours, streamed**: as the train stage reads a larger
one (a sample of 100,000 rows and one pass over all of them to fit the encoder, then shuffled row
groups). ``prepare`` is the seconds before the first step (reading, the encoder, the pass).
The peers run in their own virtualenvs (``--mostly-python``, ``--sdv-python``; see
``peer_mostly.py`` and ``constraints.py``) on the same file read with pandas, one epoch each with
their defaults (TabularARGN: ``max_epochs=1``, its batch; CTGAN: batch 500). TabularARGN logs
its training's seconds and samples, so its epoch is that and ``prepare`` the rest of its fit
(analysis, encoding); CTGAN's epoch is its whole fit, its data transformer's included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from constraints import ADULT_RULES
from figures import save

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"32k": 32_561, "1M": 1_000_000, "10M": 10_000_000, "wide": 32_561}
#: columns of the wide table (``--sizes wide``)
WIDE_COLUMNS = 100

_OURS = """
import json, resource, sys, time
started = time.perf_counter()
import torch
from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.datasets.base import read_snapshot
from genai_pipeline.datasets.row_groups import FIT_SAMPLE_ROWS, RowGroups
from genai_pipeline.models import model_class
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.storage import Storage

from dataclasses import replace
from pydantic import TypeAdapter
from genai_pipeline.constraints import ConstraintSpec

mode, family, folder, name, epochs, batch, minutes, rules = sys.argv[1:9]
constraints = tuple(TypeAdapter(ConstraintSpec).validate_python(rule) for rule in json.loads(rules))
storage = Storage(folder)
imported = time.perf_counter()
if mode == "streamed":
    groups = RowGroups.of(storage, name)
    sample = groups.sample(FIT_SAMPLE_ROWS, 0)
    roles = column_roles(sample, {{}}, "income")
    data = TabularData(sample, "income", roles=roles, stream=groups)
    rows = groups.rows
else:
    data = read_snapshot(storage, name, "income")
    rows = data.num_rows
data = replace(data, constraints=constraints)
cls = model_class("tabular", family)
model = cls(cls.Config(), device=torch.device("cpu"))
train = TrainSpec(epochs=int(epochs), batch_size=int(batch), device="cpu", seed=0,
                  max_minutes=float(minutes) if minutes != "none" else None)
fit_started = time.perf_counter()
report = model.fit(data, train, None)
done = time.perf_counter()
# an epoch cut short by --max-minutes: its whole length at the rate measured
cut = report.stopped == "time budget"
epoch_seconds = rows / report.samples_per_second if cut else report.seconds / report.epochs
print(json.dumps({{
    "rows": rows, "epochs": report.epochs, "epoch_seconds": epoch_seconds, "stopped": report.stopped,
    "samples_per_second": report.samples_per_second,
    "prepare_seconds": done - imported - report.seconds, "wall_seconds": done - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "validation_loss": report.validation_loss,
}}))
"""

_CTGAN = """
import json, resource, sys, time
import pyarrow.parquet as pq
from sdv.metadata import Metadata
from sdv.single_table import CTGANSynthesizer
path, epochs = sys.argv[1], int(sys.argv[2])
frame = pq.read_table(path).to_pandas()
metadata = Metadata.detect_from_dataframes({"table": frame}, infer_keys=None)
synthesizer = CTGANSynthesizer(metadata, epochs=epochs, enable_gpu=False)
started = time.perf_counter()
synthesizer.fit({"table": frame})
seconds = time.perf_counter() - started
print(json.dumps({"rows": len(frame), "epochs": epochs, "epoch_seconds": seconds / epochs,
    "samples_per_second": len(frame) * epochs / seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_MOSTLY = """
import json, resource, sys, tempfile, time
import pandas as pd, pyarrow.parquet as pq, torch
from mostlyai.engine import TabularARGN
torch.set_num_threads(2)
path, epochs = sys.argv[1], float(sys.argv[2])
frame = pq.read_table(path).to_pandas()
with tempfile.TemporaryDirectory(prefix="scale_mostly_") as workspace:
    model = TabularARGN(max_training_time=600.0, max_epochs=epochs, device="cpu", workspace_dir=workspace,
                        random_state=0, verbose=0)
    started = time.perf_counter()
    model.fit(frame)
    seconds = time.perf_counter() - started
    progress = pd.read_csv(f"{workspace}/ModelStore/model-data/progress-messages.csv")
last = progress.iloc[-1]  # its training's own seconds and samples, after its analysis and encoding
print(json.dumps({"rows": len(frame), "epochs": float(last["epoch"]),
    "epoch_seconds": float(last["total_time"]),
    "samples_per_second": float(last["samples"]) / float(last["total_time"]),
    "prepare_seconds": seconds - float(last["total_time"]),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def widened(adult, columns: int, rng):  # type: ignore[no-untyped-def]
    """Adult's rows with ``columns`` columns: its own, then its columns again from seeded shuffles
    of its rows (``age_2``, ``workclass_2``, …) until there are enough: each column keeps a real
    column's values, the copies are independent of the rest."""
    import pyarrow as pa

    names, arrays, copy = list(adult.column_names), list(adult.columns), 2
    while len(names) < columns:
        shuffled = adult.take(pa.array(rng.permutation(adult.num_rows)))
        for name in adult.column_names[: columns - len(names)]:
            if name != "income":
                names.append(f"{name}_{copy}")
                arrays.append(shuffled.column(name))
        copy += 1
    return pa.table(arrays[:columns], names=names[:columns])


def stage(folder: Path, label: str, rows: int) -> str:
    """Adult bootstrapped to ``rows`` rows (``wide``: Adult with :data:`WIDE_COLUMNS` columns),
    written once as the pipeline stages a snapshot."""
    name = f"adult_{label}.parquet"
    if (folder / name).exists():
        return name
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    import pyarrow as pa
    from benchmark_data import load_adult

    from genai_pipeline.parquet import write_parquet
    from genai_pipeline.storage import Storage

    adult = load_adult()
    rng = np.random.default_rng(0)
    if label == "wide":
        adult = widened(adult, WIDE_COLUMNS, rng)
    chunk = 1_000_000

    def chunks():  # a million rows at a time: the parent holds no more
        for start in range(0, rows, chunk):
            size = min(chunk, rows - start)
            yield (
                adult.take(pa.array(rng.integers(0, adult.num_rows, size)))
                if rows > adult.num_rows
                else adult
            )

    write_parquet(chunks(), Storage(str(folder)), name)
    return name


def measure(command: list[str], timeout: float) -> dict:
    started = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"not finished in {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300]}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/genai_scale"))
    parser.add_argument("--family", default="autoregressive")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", default="32k,1M,10M,wide")
    parser.add_argument("--sdv-python", default=str(ROOT / ".venv-sdv" / "bin" / "python"))
    parser.add_argument("--mostly-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--peer-sizes", default="32k,1M,wide", help="sizes the peers are run at")
    parser.add_argument("--peer-timeout", type=float, default=1800)
    parser.add_argument(
        "--in-memory-sizes", default="32k,1M,wide", help="sizes ours also runs held in memory"
    )
    parser.add_argument(
        "--max-minutes", type=float, help="cut each epoch of ours short (its length then extrapolated)"
    )
    parser.add_argument("--constraints", action="store_true", help="ours under constraints.py's Adult rules")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}
    script = _OURS.format()
    for label in args.sizes.split(","):
        name = stage(args.data, label, SIZES[label])
        runs = [("ours, streamed", "streamed")]
        if label in args.in_memory_sizes.split(","):
            runs.insert(0, ("ours, in memory", "memory"))
        for who, mode in runs:
            minutes = "none" if args.max_minutes is None else str(args.max_minutes)
            command = [sys.executable, "-c", script, mode, args.family, str(args.data), name, "1"]
            rules = json.dumps([rule.spec for rule in ADULT_RULES] if args.constraints else [])
            command += [str(args.batch_size), minutes, rules]
            figures[f"{who}, {label}"] = measure(command, timeout=3600)
        peers = {"TabularARGN": (args.mostly_python, _MOSTLY), "CTGAN": (args.sdv_python, _CTGAN)}
        for peer, (python, child) in peers.items():
            if label in args.peer_sizes.split(",") and Path(python).exists():
                command = [python, "-c", child, str(args.data / name), "1"]
                figures[f"{peer}, {label}"] = measure(command, timeout=args.peer_timeout)
        for key in [key for key in figures if key.endswith(f", {label}")]:
            result = figures[key]
            if "error" in result:
                print(f"{key:<26} {result['error']}", flush=True)
                continue
            print(
                f"{key:<26} {result['epoch_seconds']:>8.1f} s/epoch {result['samples_per_second']:>9,.0f} "
                f"samples/s  peak RSS {result['peak_rss_mb']:>6,.0f} MB"
                + (f"  prepare {result['prepare_seconds']:.1f} s" if "prepare_seconds" in result else ""),
                flush=True,
            )
    save(args.out, args, figures)


if __name__ == "__main__":
    main()
