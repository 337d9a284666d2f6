"""Train a tabular model under a CPU time budget, then measure fidelity and sampling speed.

    python benchmarks/tabular_models.py --dataset adult --family vae --minutes 5 [--set latent_dim=64]
        [--rows 100000] [--condition native-country=Holand-Netherlands]

Fidelity follows SDMetrics' QualityReport: column shapes (1 − KS / 1 − TVD) and column pair trends
(correlation / contingency similarity), computed by ``genai_pipeline.quality.tabular`` on up to
``--score-rows`` synthetic rows. Sampling speed covers sampling and decoding to Arrow.
``--condition COLUMN=VALUE`` (repeatable) also samples ``--rows`` rows with those columns fixed,
times it, checks every row holds the values, and scores the other columns' shapes against the real
rows that meet the conditions (the rows a rejection sampler would have to wait for).
``--streamed GROUP_ROWS`` trains as the train stage does a table of more than
``train.in_memory_rows``: the table written to Parquet in row groups of that many rows, the encoder
fitted on a sample completed by a pass over every row, the rows read a few groups at a time.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from benchmark_data import load_adult

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS, TabularData
from genai_pipeline.datasets.row_groups import FIT_SAMPLE_ROWS, RowGroups
from genai_pipeline.models import model_class
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.quality.tabular import column_shapes, pair_trends, pair_trends_score, rows_meeting
from genai_pipeline.storage import Storage

TABLES = {"penguins": (lambda: BUILTINS["penguins"].load(), "species"), "adult": (load_adult, "income")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="penguins", choices=sorted(TABLES))
    parser.add_argument("--family", required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--epochs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], help="model hyper-parameter NAME=VALUE")
    parser.add_argument("--patience", type=int, help="early stopping patience in epochs (validation loss)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows to sample")
    parser.add_argument("--score-rows", type=int, default=20_000, help="rows scored for fidelity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--condition", action="append", default=[], help="COLUMN=VALUE to condition on")
    parser.add_argument("--import-module", action="append", default=[], help="import a model module first")
    parser.add_argument(
        "--streamed", type=int, metavar="GROUP_ROWS", help="train on rows streamed from row groups"
    )
    args = parser.parse_args()
    for module in args.import_module:
        importlib.import_module(module)

    load, label = TABLES[args.dataset]
    real = load()
    params = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    cls = model_class("tabular", args.family)
    model = cls(cls.Config.model_validate(params), device=torch.device("cpu"))
    train = TrainSpec(
        epochs=args.epochs,
        batch_size=args.batch_size,
        device="cpu",
        seed=args.seed,
        max_minutes=args.minutes,
        early_stopping_patience=args.patience,
    )
    with tempfile.TemporaryDirectory() as folder:
        report = model.fit(_training_rows(real, label, folder, args.streamed, args.seed), train, None)
    print(
        f"{args.family} on {args.dataset} ({real.num_rows} rows"
        f"{f', streamed from groups of {args.streamed}' if args.streamed else ''}): {report.steps} steps, "
        f"{report.epochs} epochs in {report.seconds:.1f} s ({report.stopped}), "
        f"{torch.get_num_threads()} threads"
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    batches = list(model.sample(args.rows, conditions=None, seed=args.seed, batch_size=50_000))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    synthetic = pa.concat_tables(batches)
    rate = synthetic.num_rows / seconds
    # CPU time as well: on shared cores the wall time can be twice the work
    rows = synthetic.num_rows
    print(f"sampling: {rows} rows in {seconds:.2f} s ({cpu_seconds:.2f} s CPU) = {rate:,.0f} rows/s")
    scored = synthetic.slice(0, args.score_rows)
    shapes = float(np.mean(list(column_shapes(real, scored).values())))
    pairs = pair_trends_score(real, scored)
    all_pairs = float(np.mean(list(pair_trends(real, scored).values())))
    print(
        f"column shapes {shapes:.3f}, pair trends {pairs:.3f} (all pairs {all_pairs:.3f}), "
        f"quality {(shapes + pairs) / 2:.3f}"
    )
    if args.condition:
        conditions = {key: yaml.safe_load(value) for key, value in (c.split("=", 1) for c in args.condition)}
        started = time.perf_counter()
        batches = list(model.sample(args.rows, conditions=conditions, seed=args.seed, batch_size=50_000))
        seconds = time.perf_counter() - started
        conditioned = pa.concat_tables(batches)
        assert rows_meeting(conditioned, conditions).num_rows == conditioned.num_rows, (
            "a condition was not met"
        )
        matching = rows_meeting(real, conditions)
        others = [name for name in real.column_names if name not in conditions]
        scores = column_shapes(matching.select(others), conditioned.slice(0, args.score_rows))
        print(
            f"conditioned on {conditions} ({matching.num_rows} real rows meet them): {conditioned.num_rows} "
            f"rows in {seconds:.2f} s = {conditioned.num_rows / seconds:,.0f} rows/s, all exact; "
            f"column shapes against those rows {np.mean(list(scores.values())):.3f}"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _training_rows(real: pa.Table, label: str, folder: str, group_rows: int | None, seed: int) -> TabularData:
    """The rows whole, or with ``group_rows`` staged in row groups and streamed from them."""
    if group_rows is None:
        return TabularData(real, label=label)
    pq.write_table(real, Path(folder) / "rows.parquet", row_group_size=group_rows)
    groups = RowGroups.of(Storage(folder), "rows.parquet")
    sample = groups.sample(FIT_SAMPLE_ROWS, seed)
    return TabularData(sample, label, roles=column_roles(sample, {}, label), stream=groups)


if __name__ == "__main__":
    main()
