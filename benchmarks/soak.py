"""Soak: the tiny job many times in a row against S3 over HTTP while the endpoint is killed at random.

    python benchmarks/soak.py [--runs 50] [--seed 0] [--kill-share 0.6] [--pairs-every 10]

S3 is moto's server behind a proxy (``tests/flaky_endpoint.py``) that a killer thread takes down
at a random moment of a random share of the runs, for a short outage (retries should ride it out)
or a long one (the run should fail cleanly), resetting every open connection; a quarter of the
outages are stalls instead (the endpoint holds every request and answers late, 2-8 s: past the
client's read timeout, and past the lease's renewal period). The runs go through the Prefect flow
(embedded mode), one after another, over three run dates so reruns replace partitions. A reader
polls every run date's ``data/`` the whole time, through the same endpoint, as an analyst's job
would: each view must be one data file, of one run, with the job's row count, and the quality
files of the run it names (``quality/run_date=…/run=<run id>/metrics.parquet``) must be that run's;
a run date's live run must never go back to an older run. Every tenth run (``--pairs-every``) is
started twice at once for the same date (two run ids), as a manual rerun beside the nightly one
would be: the publish lock must keep the two from interleaving, and the older must not replace
the newer (it gives up: ``RunSuperseded``).

Prints runs completed, superseded, failed cleanly (a one-line error, no staging or lock left once
the endpoint is back), and what readers saw: whole views, and duplicated, partial or mixed ones
and older runs replacing newer ones (all must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # a failed run's traceback is an outcome here

from flows.settings import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()

import pyarrow.parquet as pq  # noqa: E402
import s3fs  # noqa: E402
from botocore.exceptions import BotoCoreError  # noqa: E402
from flaky_endpoint import FlakyEndpoint  # noqa: E402

from genai_pipeline.jobs import load_job  # noqa: E402
from genai_pipeline.runs import RUN_ID_KEY, run_started  # noqa: E402

BUCKET, ROWS = "soak", 500
DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]
#: the client gives up on a dead endpoint quickly; the flow's retries do the waiting
CLIENT = {"config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 1, "read_timeout": 5}}


def tiny_job() -> Any:
    """The built-in default job (penguins → VAE), made small: 500 rows in two shards, its model
    trained by the first run and reused by the others, output on the flaky endpoint."""
    root = Path(__file__).resolve().parents[1]
    return load_job(
        root / "deployments/jobs/penguins-vae.yaml",
        overrides={
            "name": "soak",
            "train.reuse": "cached",
            "train.device": "cpu",
            "generate.num_samples": ROWS,
            "generate.shards": 2,
            "export.output": f"s3://{BUCKET}/out",
            "export.storage_options": {
                "endpoint_url": "${SOAK_S3_ENDPOINT}",
                "key": "${SOAK_S3_KEY}",
                "secret": "${SOAK_S3_SECRET}",
                **CLIENT,
            },
            "export.lock_timeout_s": 120,
            "retries": {"count": 3, "delay_seconds": 1.5, "jitter": 0.2},
        },
    )


class Reader(threading.Thread):
    """Polls every run date's data/ and classifies each view it gets."""

    def __init__(self, fs: s3fs.S3FileSystem):
        super().__init__(daemon=True)
        self.fs, self.stop = fs, threading.Event()
        self.views: Counter[str] = Counter()
        self.seen: set[str] = set()
        self.bad: list[str] = []
        self.live: dict[str, str] = {}  # run date → the newest run a reader saw live
        self.went_back = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for date in DATES:
                self.look(f"{BUCKET}/out/soak/data/run_date={date}")
            time.sleep(0.1)

    def look(self, prefix: str) -> None:
        try:
            self.fs.invalidate_cache()
            # data files only, as pandas, DuckDB and Spark read a folder; s3fs's find can also
            # return the folder itself when its first file appears between two of its requests
            files, sizes = [name for name in self.fs.find(prefix) if name.endswith(".parquet")], []
            if not files:
                self.views["empty (not published yet)"] += 1
                return
            tables = []
            for name in files:
                with self.fs.open(name, "rb") as handle:
                    sizes.append(handle.size)
                    tables.append(pq.read_table(handle))
        except (OSError, BotoCoreError):  # the endpoint is down: the reader gets an error, not data
            self.views["unreadable (endpoint down)"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - anything else a reader hits is a finding
            self.bad.append(f"{prefix}: {type(exc).__name__}: {exc} (listed {files}, sizes {sizes})")
            self.views["error"] += 1
            return
        runs = {(table.schema.metadata or {}).get(RUN_ID_KEY, b"?").decode() for table in tables}
        rows = sum(table.num_rows for table in tables)
        if len(files) == 1 and len(runs) == 1 and rows == ROWS:
            (run,) = runs
            if self.same_run_quality(prefix, run):
                self.views["whole"] += 1
                self.seen |= runs
                self.note_live(prefix, run)
        else:
            kind = "duplicated" if rows > ROWS or len(runs) > 1 else "partial"
            self.views[kind] += 1
            self.bad.append(f"{prefix}: {kind}: {len(files)} files, runs {sorted(runs)}, {rows} rows")

    def same_run_quality(self, prefix: str, run: str) -> bool:
        """Whether the quality files of the run the data names are that run's. Missing, they may
        have gone with a newer run published meanwhile: then the data names another run too."""
        quality = prefix.replace("/data/", "/quality/") + f"/run={run}/metrics.parquet"
        try:
            with self.fs.open(quality, "rb") as handle:
                named = set(pq.read_table(handle).column("run_id").to_pylist())
        except FileNotFoundError:
            if self.live_run(prefix) not in (run, None):
                self.views["moved on (a newer run published meanwhile)"] += 1
                return False
            named = set()
        except (OSError, BotoCoreError):
            self.views["unreadable (endpoint down)"] += 1
            return False
        if named != {run}:
            self.views["mixed"] += 1
            self.bad.append(f"{prefix}: data of run {run}, quality naming {sorted(named) or 'nothing'}")
            return False
        return True

    def live_run(self, prefix: str) -> str | None:
        try:
            with self.fs.open(f"{prefix}/part-00000.parquet", "rb") as handle:
                metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
        except (OSError, BotoCoreError):
            return None
        return metadata.get(RUN_ID_KEY, b"?").decode()

    def note_live(self, prefix: str, run: str) -> None:
        """Count a run date going back to an older run than one a reader saw live before."""
        newest = self.live.get(prefix)
        if newest is not None and (run_started(run), run) < (run_started(newest), newest):
            self.went_back += 1
            self.bad.append(f"{prefix}: went back from run {newest} to the older {run}")
        elif newest is None or run != newest:
            self.live[prefix] = run


class Killer(threading.Thread):
    """Takes the endpoint down at a random moment of the current run, for a short or long outage."""

    def __init__(self, endpoint: FlakyEndpoint, rng: random.Random, share: float):
        super().__init__(daemon=True)
        self.endpoint, self.rng, self.share = endpoint, rng, share
        self.armed, self.stop = threading.Event(), threading.Event()
        self.outages: list[float] = []
        self.stalls: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.armed.wait(0.1):
                continue
            self.armed.clear()
            if self.rng.random() > self.share:
                continue
            if self.stop.wait(self.rng.uniform(0.0, 8.0)):  # somewhere in ingest … export
                return
            if self.rng.random() < 0.25:  # a stall: connections stay open, answers come late
                stall = self.rng.uniform(2.0, 8.0)
                self.stalls.append(stall)
                self.endpoint.stall(stall)
                self.stop.wait(stall)
                continue
            outage = self.rng.uniform(0.3, 3.0) if self.rng.random() < 0.7 else self.rng.uniform(12.0, 20.0)
            self.endpoint.down()
            self.outages.append(outage)
            self.stop.wait(outage)
            self.endpoint.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kill-share", type=float, default=0.6, help="share of runs whose endpoint is killed"
    )
    parser.add_argument(
        "--pairs-every", type=int, default=10, help="every Nth run starts twice at once, same date (0: never)"
    )
    args = parser.parse_args()
    endpoint = FlakyEndpoint()
    os.environ |= {
        "SOAK_S3_ENDPOINT": endpoint.url,
        "SOAK_S3_KEY": "soak-key",
        "SOAK_S3_SECRET": "soak-secret",
    }
    fs = s3fs.S3FileSystem(key="soak-key", secret="soak-secret", endpoint_url=endpoint.url, **CLIENT)
    fs.mkdir(BUCKET)
    from flows.synthesize import synthesize

    job, rng = tiny_job(), random.Random(args.seed)
    reader, killer = Reader(fs), Killer(endpoint, rng, args.kill_share)
    reader.start()
    killer.start()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    leftovers: list[str] = []
    started = time.monotonic()

    def attempt(index: int) -> str:
        try:
            synthesize(job=job, run_date=DATES[index % len(DATES)])
        except Exception as exc:  # noqa: BLE001 - a failed run is an outcome to count
            message = str(exc)
            errors[f"{type(exc).__name__}: {message.split(':', 2)[-1].strip()[:80]}"] += 1
            if "\n" in message:
                leftovers.append(f"run {index}: a multi-line error")
            return "superseded" if type(exc).__name__ == "RunSuperseded" else "failed"
        return "completed"

    pairs = 0
    for index in range(args.runs):
        if index == 0:
            synthesize(job=job, run_date=DATES[0])  # trains the cached model, with the endpoint up
            outcomes["completed"] += 1
            continue
        killer.armed.set()
        began = time.monotonic()
        if args.pairs_every and index % args.pairs_every == 0:  # a second run of the same date at once
            pairs += 1
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(attempt, [index, index]))
        else:
            results = [attempt(index)]
        outcomes.update(results)
        while not endpoint.is_up or killer.armed.is_set():
            time.sleep(0.2)
        print(f"run {index:2d}: {' + '.join(results)} in {time.monotonic() - began:.1f} s", flush=True)
    killer.stop.set()
    killer.join()
    if not endpoint.is_up:
        endpoint.up()
    time.sleep(0.5)
    reader.stop.set()
    reader.join()
    fs.invalidate_cache()
    root = f"{BUCKET}/out/soak"
    staging = fs.find(f"{root}/_staging")
    locks = fs.find(f"{root}/_locks")
    manifests = [json.loads(fs.cat_file(name)) for name in fs.ls(f"{root}/_runs") if name.endswith(".json")]
    status = {manifest["run_id"]: manifest["status"] for manifest in manifests}
    published = Counter(manifest["run_date"] for manifest in manifests if manifest["status"] == "published")
    seen_not_published = sorted(run for run in reader.seen if status.get(run) != "published")
    short = sum(outage < 5 for outage in killer.outages)
    seconds = time.monotonic() - started
    print(f"\n{args.runs} runs in {seconds:.0f} s, endpoint killed {len(killer.outages)} times")
    print(f"outages: {short} short (0.3-3 s), {len(killer.outages) - short} long (12-20 s)")
    print(f"stalls: {len(killer.stalls)} (2-8 s)")
    print(f"runs: {sum(outcomes.values())}, of which {pairs} pairs started at once for the same date")
    print(
        f"runs completed: {outcomes['completed']}, superseded by a newer run of the same date: "
        f"{outcomes['superseded']}, failed cleanly: {outcomes['failed']}"
    )
    for error, count in errors.most_common():
        print(f"  {count} × {error}")
    print(f"published manifests per run date: {dict(sorted(published.items()))}")
    print(f"reader views: {dict(reader.views)}")
    duplicated, partial, mixed = reader.views["duplicated"], reader.views["partial"], reader.views["mixed"]
    print(f"duplicated, partial or mixed publishes seen by a reader: {duplicated + partial + mixed}")
    print(f"older runs replacing newer ones (seen by a reader): {reader.went_back}")
    print(f"runs whose data a reader saw without a published manifest: {len(seen_not_published)}")
    print(f"staging areas left: {len({name.split('/')[4] for name in staging})}, locks left: {len(locks)}")
    for line in reader.bad[:10] + leftovers:
        print("  !", line)
    endpoint.close()


if __name__ == "__main__":
    main()
