"""Bulk tabular generation end to end: sample, decode to Arrow, write Parquet; rows/s and peak RSS.

    python benchmarks/bulk_generation.py train --family vae --minutes 0.5 --model-dir /tmp/bulk
    python benchmarks/bulk_generation.py generate --family vae --rows 10000000 --model-dir /tmp/bulk

``train`` fits a family on UCI Adult under a short budget and saves it as the pipeline does
(``model.save``); ``generate`` — one process per size, so its peak RSS is its own — loads it and
streams ``--rows`` rows through the generate stage's writer (``parquet.write_parquet``: zstd,
dictionary encoding, ~128k-row groups) into local Parquet files, ``--shards`` at once in threads
(as the thread runner runs a job's shards), under ``generate.precision``'s rule (``--precision``),
then, with several shards, combines them into one file as the ``combine-shards`` task does.
Throughput does not depend on how well the model was trained; peak RSS must not grow with ``--rows``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from benchmark_data import load_adult

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.generation import threads_per_shard
from genai_pipeline.models import load_model, model_class
from genai_pipeline.models.base import sampling_precision
from genai_pipeline.parquet import concat_parquet, write_parquet
from genai_pipeline.storage import Storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["train", "generate"])
    parser.add_argument("--family", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--minutes", type=float, default=0.5, help="training budget")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=1, help="shards at once, in threads")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--sample-only", action="store_true", help="decode to Arrow, write nothing")
    args = parser.parse_args()
    storage = Storage(args.model_dir)
    if args.mode == "train":
        cls = model_class("tabular", args.family)
        model = cls(cls.Config.model_validate({}), device=torch.device("cpu"))
        spec = TrainSpec(epochs=10_000, batch_size=500, device="cpu", max_minutes=args.minutes)
        report = model.fit(TabularData(load_adult(), label="income"), spec, None)
        model.save(storage, args.family)
        print(f"{args.family}: {report.steps} steps in {report.seconds:.0f} s, saved in {args.model_dir}")
        return
    model = load_model(storage, args.family, torch.device("cpu"))
    rels = [f"out-{args.family}-{args.rows}-{shard}.parquet" for shard in range(args.shards)]

    def shard(index: int) -> int:
        """One shard's rows into its own file, as the generate stage's shards on the thread runner."""
        rows = args.rows // args.shards + (index < args.rows % args.shards)
        with sampling_precision(model, args.precision):
            batches = model.sample(rows, conditions=None, seed=index, batch_size=args.batch_size)
            if args.sample_only:  # as the peers' `sample` is measured: tables in memory, nothing written
                return sum(batch.num_rows for batch in batches)
            return write_parquet(batches, storage, rels[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(args.shards) as pool, threads_per_shard(args.shards):
        rows = sum(pool.map(shard, range(args.shards)))
    seconds = time.perf_counter() - started
    written = [rel for rel in rels if os.path.exists(storage.path(rel))]
    size = sum(os.path.getsize(storage.path(rel)) for rel in written) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.family} ({args.precision}, {args.shards} shard(s)): {rows:,} rows in {seconds:.1f} s = "
        f"{rows / seconds:,.0f} rows/s ({rows / seconds * 60 / 1e6:.1f}M rows/min), {size:.0f} MB Parquet, "
        f"peak RSS {peak:.0f} MB"
    )
    if len(written) > 1:  # the combine-shards task: the parts as the run's one data file
        started = time.perf_counter()
        combined = concat_parquet(storage, written, f"out-{args.family}-{args.rows}.parquet")
        seconds = time.perf_counter() - started
        print(f"combined {len(written)} shards' {combined:,} rows into one file in {seconds:.1f} s")
        written.append(f"out-{args.family}-{args.rows}.parquet")
    storage.delete(written)


if __name__ == "__main__":
    main()
