"""The generate stage on threads and on 1 or 2 Dask workers: wall time, speed-up, overhead per shard.

    python benchmarks/dask_scaling.py --family vae --rows 4000000 --shards 8 [--minutes 0.3]

Ingest and training run once (UCI Adult, the family's default configuration, a short budget:
throughput does not depend on how well it trained). Then the pipeline's own ``generate`` subflow
(``flows.synthesize.generate``: one Prefect task per shard on the task runner ``generate.runner``
picks) generates ``--rows`` rows into a run's staging area under each runner in turn, in this
order: threads, Dask with 1 worker, Dask with 2 workers; a local cluster's start and stop are
part of its wall time and also timed on their own. The overhead per shard comes from a second
pass of each runner over ``--tiny-shards`` shards of one row each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from benchmark_data import load_adult

from flows.settings import apply_prefect_defaults

apply_prefect_defaults()

from prefect import flow  # noqa: E402

from flows.synthesize import generate, shard_runner  # noqa: E402
from genai_pipeline import stages  # noqa: E402
from genai_pipeline.config import GenerateSpec  # noqa: E402
from genai_pipeline.jobs import build_job  # noqa: E402
from genai_pipeline.runs import Run  # noqa: E402

RUNNERS = {
    "threads": {"kind": "threads"},
    "dask, 1 worker": {"kind": "dask", "workers": 1},
    "dask, 2 workers": {"kind": "dask", "workers": 2},
}


@flow
def warm_up() -> None:
    """Starts the embedded Prefect server, which later flows (and local Dask workers) share."""


def timed_generate(job_data: dict, runner: dict, rows: int, shards: int, run_date: str) -> float:
    job = build_job({**job_data, "generate": {"num_samples": rows, "shards": shards, "runner": runner}})
    run = Run(job=job, run_date=run_date)
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)  # reused: train.reuse is "cached"
    started = time.perf_counter()
    generated = generate.with_options(task_runner=shard_runner(job.generate))(
        run, model=model, dataset=dataset, policy={}
    )
    seconds = time.perf_counter() - started
    parts = Path(job.export.output) / job.name / run.staged("data")
    written = sum(pq.read_metadata(part).num_rows for part in parts.rglob("part-*.parquet"))
    assert generated.num_samples == written == rows, (generated.num_samples, written, rows)
    return seconds


def cluster_start_stop(workers: int) -> float:
    """The pipeline's local cluster (``shard_runner``: its workers' environment too, which a cluster
    started otherwise would leave in this process's environment for the later ones)."""
    from distributed import LocalCluster

    runner = shard_runner(GenerateSpec.model_validate({"runner": {"kind": "dask", "workers": workers}}))
    started = time.perf_counter()
    with LocalCluster(**runner.cluster_kwargs):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--tiny-shards", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=0.3, help="training budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "adult.parquet"
        pq.write_table(load_adult(), source)
        job_data = {
            "name": f"scaling-{args.family}",
            "dataset": {"uri": str(source), "label": "income"},
            "model": {"family": args.family},
            "train": {"epochs": 10_000, "batch_size": 500, "max_minutes": args.minutes, "reuse": "cached"},
            "export": {"output": work},
        }
        warm_up()
        for workers in (1, 2):
            print(f"local cluster of {workers} worker(s): start + stop {cluster_start_stop(workers):.1f} s")
        print(f"{args.family}, {args.rows:,} rows in {args.shards} shards, {os.cpu_count()} cores:")
        results = {}
        for day, (name, runner) in enumerate(RUNNERS.items(), start=1):
            seconds = timed_generate(job_data, runner, args.rows, args.shards, f"2026-11-{day:02d}")
            tiny = timed_generate(job_data, runner, args.tiny_shards, args.tiny_shards, f"2026-12-{day:02d}")
            results[name] = seconds
            print(
                f"  {name}: {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s, speed-up "
                f"{results['threads'] / seconds:.2f}× over threads; {args.tiny_shards} one-row shards "
                f"{tiny:.1f} s = {tiny / args.tiny_shards * 1000:.0f} ms per shard"
            )
        two, one = results["dask, 2 workers"], results["dask, 1 worker"]
        print(f"  2 workers over 1: {one / two:.2f}×")


if __name__ == "__main__":
    main()
