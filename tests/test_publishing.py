"""Publishing under faults: an S3 endpoint killed at every step of an export, two runs of the same
job and date at once, locks left by killed runs, an endpoint down from the start.

The endpoint is real S3 over HTTP (moto) behind a proxy that a test kills and restores
(``flaky_endpoint.py``); readers are checked the way analysts read the output: every file under
``data/``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import tiny_job, workspace_for
from flaky_endpoint import FlakyEndpoint

from genai_pipeline import locks, stages
from genai_pipeline.config import JobSpec
from genai_pipeline.errors import RunConflict, RunSuperseded, StorageError
from genai_pipeline.runs import RUN_ID_KEY, RUN_ID_TIME, Run, new_run_id, run_started
from genai_pipeline.storage import Storage

RUN_DATE = "2026-03-04"
BUCKET = "flaky"
#: fail fast when the endpoint is down (the defaults retry for ~25 s per request)
FAST_FAIL = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5}}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FlakyEndpoint]:
    flaky = FlakyEndpoint()
    s3fs.S3FileSystem(key="k", secret="s", endpoint_url=flaky.url, skip_instance_cache=True).mkdir(BUCKET)
    yield flaky
    flaky.close()


def _options(endpoint: FlakyEndpoint) -> dict[str, Any]:
    return {"endpoint_url": endpoint.url, "key": "k", "secret": "s", **FAST_FAIL}


def _fs(endpoint: FlakyEndpoint) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key="k", secret="s", endpoint_url=endpoint.url, skip_instance_cache=True)


def _job(output: str, options: dict[str, Any] | None = None, **sections: Any) -> JobSpec:
    return tiny_job(
        "builtin://penguins",
        "vae",
        output,
        train={"reuse": "cached"},
        generate={"num_samples": 120, "shards": 2},
        export={"output": output, "storage_options": options or {}, **sections.pop("export", {})},
        **sections,
    )


@dataclass
class Staged:
    """A run taken through validation, ready to export."""

    run: Run
    refs: dict[str, Any]

    def export(self, job: JobSpec | None = None) -> Any:
        run = Run(job=job or self.run.job, run_date=self.run.run_date, run_id=self.run.run_id)
        return stages.export(run, **self.refs)


def _stage(job: JobSpec, run_date: str = RUN_DATE, run_id: str | None = None) -> Staged:
    run = Run(job=job, run_date=run_date, **({"run_id": run_id} if run_id else {}))
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    report = stages.validate(run, dataset=dataset, generated=generated)
    assert report.passed, report.failures
    return Staged(run, {"dataset": dataset, "model": model, "generated": generated, "verdict": report})


def _read_published(storage: Storage) -> tuple[str, pa.Table]:
    """What a reader of ``data/`` sees for the run date: one file, the run that wrote it, its rows."""
    files = storage.list_files(f"data/run_date={RUN_DATE}")
    assert list(files) == [f"data/run_date={RUN_DATE}/part-00000.parquet"], files
    with storage.open_read(f"data/run_date={RUN_DATE}/part-00000.parquet") as handle:
        table = pq.read_table(handle)
    return table.schema.metadata[RUN_ID_KEY].decode(), table.replace_schema_metadata(None)


def test_an_endpoint_killed_at_any_step_of_an_export_never_shows_readers_a_partial_run(
    endpoint: FlakyEndpoint,
) -> None:
    """Kill the endpoint at request k of an export (before or after the server handled it), for
    k spread over the whole export: readers see the previous run or the new one, whole; the
    retried export then publishes the new run exactly once and leaves nothing behind."""
    fs, options = _fs(endpoint), _options(endpoint)
    base = f"s3://{BUCKET}/base"
    first = _stage(_job(base, options))
    first.export()
    second = _stage(_job(base, options))
    storage = Storage(f"{base}/tiny", options)
    before = _read_published(storage)
    staged_rows = pq.read_table(storage.open_read(second.run.staged(second.run.data_file)))

    def trial(name: str) -> tuple[JobSpec, Storage]:
        fs.copy(f"{BUCKET}/base/tiny", f"{BUCKET}/{name}/tiny", recursive=True)
        output = f"s3://{BUCKET}/{name}"
        return _job(output, options), Storage(f"{output}/tiny", options)

    job, clean = trial("clean")
    start = endpoint.requests
    second.export(job)
    requests = endpoint.requests - start
    expected = set(clean.list_files("quality")), set(clean.list_files("data"))
    assert _read_published(clean)[0] == second.run.run_id
    assert 20 < requests < 400, requests

    points = sorted({1 + (requests - 1) * i // 11 for i in range(12)})
    for number, point in enumerate(points):
        after = number % 2 == 1
        job, storage = trial(f"kill-{point}-{after}")
        endpoint.kill_at(point, after_handling=after)
        with pytest.raises(StorageError):
            second.export(job)
        assert not endpoint.is_up
        endpoint.up()
        run_id, rows = _read_published(storage)
        if run_id == first.run.run_id:
            assert rows.equals(before[1]), f"a mix of runs after a kill at request {point}"
        else:
            assert run_id == second.run.run_id and rows.equals(staged_rows.replace_schema_metadata(None))
        published = second.export(job)  # the flow's retry of the export task
        assert published.run_id == second.run.run_id
        assert _read_published(storage) == (second.run.run_id, staged_rows.replace_schema_metadata(None))
        assert (set(storage.list_files("quality")), set(storage.list_files("data"))) == expected
        assert not storage.list_files(second.run.staging) and not storage.list_files("_locks")
        manifest = json.loads(storage.read_bytes(second.run.manifest))
        assert manifest["status"] == "published" and manifest["generated"]["num_samples"] == 120


def test_an_endpoint_down_at_the_start_is_retried_then_fails_naming_it(
    endpoint: FlakyEndpoint, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.synthesize import synthesize

    attempts: list[float] = []
    real = stages._check_schema  # ingest's first request to the store

    def counted(*args: Any) -> None:
        attempts.append(time.monotonic())
        real(*args)

    monkeypatch.setattr(stages, "_check_schema", counted)
    job = _job(f"s3://{BUCKET}/down", _options(endpoint), retries={"count": 2, "delay_seconds": 0.2})
    endpoint.down()
    try:
        with pytest.raises(
            StorageError, match=r"s3://flaky/down(-workspace)?/tiny.*Could not connect to the endpoint"
        ):
            synthesize(job=job, run_date=RUN_DATE)
    finally:
        endpoint.up()
    assert len(attempts) == 3  # the first try and two retries
    assert not _fs(endpoint).exists(f"{BUCKET}/down/tiny/data")


def test_an_export_killed_in_a_flow_is_retried_and_publishes_once(
    endpoint: FlakyEndpoint, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Prefect: the endpoint dies in the middle of the export and comes back a second
    later; the export task's retry publishes the run, once."""
    from flows.synthesize import synthesize

    real_publish = stages.publish

    def publish_while_the_endpoint_dies(run: Run, **refs: Any) -> Any:
        if endpoint.is_up and not getattr(publish_while_the_endpoint_dies, "done", False):
            publish_while_the_endpoint_dies.done = True  # type: ignore[attr-defined]
            endpoint.kill_at(12)
            threading.Timer(1.0, endpoint.up).start()
        return real_publish(run, **refs)

    monkeypatch.setattr(stages, "publish", publish_while_the_endpoint_dies)
    job = _job(f"s3://{BUCKET}/flow", _options(endpoint), retries={"count": 2, "delay_seconds": 2})
    result = synthesize(job=job, run_date=RUN_DATE)
    storage = Storage(f"s3://{BUCKET}/flow/tiny", _options(endpoint))
    run_id, rows = _read_published(storage)
    assert run_id == result["run_id"] and rows.num_rows == 120 == result["num_samples"]
    manifests = [json.loads(storage.read_bytes(rel)) for rel in storage.list_files("_runs")]
    assert [m["status"] for m in manifests] == ["published"]
    assert not storage.list_files("_staging") and not storage.list_files("_locks")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_of_one_date_publish_one_after_the_other_never_interleaved(
    where: str, endpoint: FlakyEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = str(tmp_path) if where == "local" else f"s3://{BUCKET}/race"
    options = {} if where == "local" else _options(endpoint)
    runs = [_stage(_job(output, options)) for _ in range(2)]
    held: list[tuple[str, float, float]] = []
    real_lock = locks.publish_lock

    def timed_lock(storage: Storage, rel: str, owner: str, **kwargs: Any) -> Any:
        @contextmanager
        def held_for() -> Iterator[Any]:
            with real_lock(storage, rel, owner, **kwargs) as lease:
                start = time.monotonic()
                time.sleep(0.5)  # a slow publish: without the lock the two would overlap
                try:
                    yield lease
                finally:  # a run that gives up held the lock too
                    held.append((owner, start, time.monotonic()))

        return held_for()

    monkeypatch.setattr("genai_pipeline.publishing.publish_lock", timed_lock)
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def publish(staged: Staged) -> None:
        barrier.wait()
        try:
            results[staged.run.run_id] = staged.export()
        except RunSuperseded as superseded:
            results[staged.run.run_id] = superseded
            stages.record_failure(staged.run, superseded)  # as the flow does

    threads = [threading.Thread(target=publish, args=(staged,)) for staged in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and len(held) == 2
    (first, _, first_end), (second, second_start, _) = sorted(held, key=lambda hold: hold[1])
    assert first_end <= second_start, "the two publishes overlapped"
    older, newer = sorted(
        (staged.run.run_id for staged in runs), key=lambda run_id: (run_started(run_id), run_id)
    )
    # the newer run is live either way: second, it replaced the older; first, the older gave up
    assert isinstance(results[older], RunSuperseded) == (second == older)
    if second == older:
        manifest = json.loads(runs[0].run.storage().read_bytes(f"_runs/{older}.json"))
        assert manifest["status"] == "failed" and manifest["error"].startswith("RunSuperseded: ")
    storage = runs[0].run.storage()
    run_id, rows = _read_published(storage)
    assert run_id == newer and rows.num_rows == 120
    assert storage.list_dirs(f"quality/run_date={RUN_DATE}") == [f"run={newer}"]  # no other run's quality
    metrics = pq.read_table(storage.open_read(f"quality/run_date={RUN_DATE}/run={newer}/metrics.parquet"))
    assert set(metrics.column("run_id").to_pylist()) == {newer}
    assert not storage.list_files("_staging")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_run_that_cannot_get_the_lock_fails_naming_the_holder(
    where: str, endpoint: FlakyEndpoint, tmp_path: Path
) -> None:
    output = str(tmp_path) if where == "local" else f"s3://{BUCKET}/held"
    options = {} if where == "local" else _options(endpoint)
    staged = _stage(_job(output, options, export={"lock_timeout_s": 1}))
    storage = staged.run.storage()
    lock = f"_locks/run_date={RUN_DATE}.lock"
    holder = locks.publish_lock(storage, lock, "20260304T020000Z-abcdef", timeout=1, what="held")
    conflict = pytest.raises(
        RunConflict, match=r"job tiny, run_date 2026-03-04 is being published by run 2026"
    )
    with holder, conflict:
        staged.export()
    assert not storage.list_files("data")
    assert staged.export().run_id == staged.run.run_id  # once the holder is done


def test_a_lease_left_by_a_killed_run_expires_and_a_live_one_is_renewed(
    endpoint: FlakyEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks, "LEASE_SECONDS", 1.5)
    storage = Storage(f"s3://{BUCKET}/lease", _options(endpoint))
    dead = {"owner": "killed-run", "host": "gone", "pid": 1, "expires": "2026-01-01T00:00:00+00:00"}
    storage.write_bytes("_locks/x.lock", json.dumps(dead).encode())
    started = time.monotonic()
    with locks.publish_lock(storage, "_locks/x.lock", "next-run", timeout=5, what="x"):
        assert (
            time.monotonic() - started >= 1.5
        )  # a lease unchanged for a lease period, by the waiter's clock
        holder = json.loads(storage.read_bytes("_locks/x.lock"))
        assert holder["owner"] == "next-run"
        time.sleep(3.5)  # over two lease lifetimes: renewed meanwhile, so still held
        with (
            pytest.raises(RunConflict, match="next-run"),
            locks.publish_lock(storage, "_locks/x.lock", "third-run", timeout=0.5, what="x"),
        ):
            pass
    assert not storage.exists("_locks/x.lock")


def test_an_export_that_fails_after_its_data_switch_is_finished_not_called_failed(
    endpoint: FlakyEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint dies right after the data file is switched in and stays away past the export's
    retries: readers see the run, whole. The failure handler then finishes the publish."""
    from genai_pipeline.publishing import live_run_id, record_failure

    staged = _stage(_job(f"s3://{BUCKET}/switched", _options(endpoint)))
    real_move = Storage.move

    def move_then_die(self: Storage, pairs: Any) -> None:
        pairs = list(pairs)
        real_move(self, pairs)
        if any(dst.startswith("data/") for _, dst in pairs):
            endpoint.down()

    monkeypatch.setattr(Storage, "move", move_then_die)
    with pytest.raises(StorageError) as failure:
        staged.export()
    endpoint.up()
    storage = staged.run.storage()
    assert live_run_id(storage, staged.run) == staged.run.run_id and not storage.exists(staged.run.manifest)
    manifest = record_failure(staged.run, failure.value)
    assert manifest["status"] == "published"
    assert json.loads(storage.read_bytes(staged.run.manifest))["status"] == "published"
    assert json.loads(staged.run.workspace().read_bytes("models/latest.json"))["run_id"] == staged.run.run_id
    assert not storage.list_files("_staging") and not storage.list_files("_locks")
    assert not staged.run.workspace().list_files(staged.run.private_area)  # its real rows went too


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_publish_sweeps_staging_areas_abandoned_for_a_week(
    where: str, endpoint: FlakyEndpoint, tmp_path: Path
) -> None:
    output = str(tmp_path) if where == "local" else f"s3://{BUCKET}/sweep"
    staged = _stage(_job(output, {} if where == "local" else _options(endpoint)))
    storage, workspace = staged.run.storage(), staged.run.workspace()
    abandoned, recent, other = "20261001T020000Z-0a0b0c", new_run_id(), "not-a-run"
    for name in (abandoned, recent, other):
        storage.write_bytes(f"_staging/{name}/data/part.parquet", b"left behind")
        workspace.write_bytes(f"runs/{name}/input/dataset.parquet", b"left behind")  # real rows
    staged.export()
    assert storage.list_dirs("_staging") == sorted([recent, other])
    assert workspace.list_dirs("runs") == sorted([recent, other])


def _runs_in_start_order(job: JobSpec, count: int = 3) -> list[Staged]:
    """``count`` runs staged with ids a second apart from now (ids a week older the staging sweep
    takes), so that each is newer than the one before it."""
    now = dt.datetime.now(dt.UTC)
    ids = [f"{(now + dt.timedelta(seconds=i)).strftime(RUN_ID_TIME)}-{i:06d}" for i in range(count)]
    return [_stage(job, run_id=run_id) for run_id in ids]


@contextmanager
def _data_switch_fails(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every move into ``data/`` fails, as when the endpoint resets during the data switch; the
    other moves (images, quality) go through."""
    real_move = Storage.move

    def switch_fails(self: Storage, pairs: Any) -> None:
        pairs = list(pairs)
        if any(dst.startswith("data/") for _, dst in pairs):
            raise StorageError("s3://…: connection reset during the data switch (simulated)")
        real_move(self, pairs)

    monkeypatch.setattr(Storage, "move", switch_fails)
    try:
        yield
    finally:
        monkeypatch.setattr(Storage, "move", real_move)


def _reader_view(storage: Storage) -> tuple[str, set[str]]:
    """What a reader led by the live data file sees: its run, and the runs named by the quality
    files it finds for that run (the metrics' run_id column)."""
    run_id, _ = _read_published(storage)
    quality = f"quality/run_date={RUN_DATE}/run={run_id}"
    with storage.open_read(f"{quality}/metrics.parquet") as handle:
        named = set(pq.read_table(handle).column("run_id").to_pylist())
    return run_id, named


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_older_runs_retry_never_mixes_with_nor_replaces_a_newer_run(
    where: str, endpoint: FlakyEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B's quality files went live before its data switch failed (a reader saw B's quality
    beside A's data); run C then published, and B's retry put B's data back over C's. Now B's
    files are named by B and live only through the switch, and B's retry gives up."""
    output = str(tmp_path) if where == "local" else f"s3://{BUCKET}/older-{tmp_path.name}"
    options = {} if where == "local" else _options(endpoint)
    a, b, c = _runs_in_start_order(_job(output, options))
    a.export()
    storage = a.run.storage()
    with pytest.raises(StorageError, match="during the data switch"), _data_switch_fails(monkeypatch):
        b.export()
    assert _reader_view(storage) == (a.run.run_id, {a.run.run_id})  # B's quality is not A's
    c.export()
    assert _reader_view(storage) == (c.run.run_id, {c.run.run_id})
    with pytest.raises(RunSuperseded, match=f"run {c.run.run_id} published after this run {b.run.run_id}"):
        b.export()  # the flow's retry of B's export
    stages.record_failure(b.run, RunSuperseded("superseded"))
    assert _reader_view(storage) == (c.run.run_id, {c.run.run_id})
    assert storage.list_dirs(f"quality/run_date={RUN_DATE}") == [f"run={c.run.run_id}"]
    assert json.loads(c.run.workspace().read_bytes("models/latest.json"))["run_id"] == c.run.run_id
    assert json.loads(storage.read_bytes(b.run.manifest))["status"] == "failed"


def test_an_image_jobs_live_manifest_always_names_images_that_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For image jobs the older run's retry switched in a manifest whose PNGs the newer run's
    publish had deleted as leftovers: readers were pointed at images that no longer existed."""
    job = tiny_job(
        "builtin://digits",
        "vae",
        str(tmp_path),
        train={"reuse": "cached", "epochs": 5},
        generate={"num_samples": 20, "batch_size": 10},
    )
    a, b, c = _runs_in_start_order(job)
    a.export()
    root = tmp_path / "tiny"

    def live_manifest_is_whole() -> str:
        manifest = pq.read_table(root / f"data/run_date={RUN_DATE}/part-00000.parquet")
        assert all((root / path).exists() for path in manifest.column("path").to_pylist())
        return manifest.schema.metadata[RUN_ID_KEY].decode()

    with pytest.raises(StorageError, match="during the data switch"), _data_switch_fails(monkeypatch):
        b.export()
    assert live_manifest_is_whole() == a.run.run_id
    c.export()
    with pytest.raises(RunSuperseded):
        b.export()
    assert live_manifest_is_whole() == c.run.run_id
    pngs = list((root / "images").rglob("*.png"))  # the others' were removed with their publishes
    assert len(pngs) == 20 and all(png.name.startswith(c.run.run_id) for png in pngs)


def test_a_backfill_of_an_earlier_date_leaves_the_latest_model_where_it_is(tmp_path: Path) -> None:
    """models/latest.json (what train.reuse: latest generates from) followed whichever run
    published last: a backfill of an earlier date took it back in time."""
    job = _job(str(tmp_path))
    _stage(job, run_date="2026-03-05").export()
    latest = Path(workspace_for(str(tmp_path))) / "tiny" / "models" / "latest.json"
    later = json.loads(latest.read_text())
    _stage(job, run_date="2026-03-01").export()
    assert json.loads(latest.read_text()) == later


def test_a_live_lease_is_never_taken_whatever_its_holders_clock_says(
    endpoint: FlakyEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry was written with the holder's clock and judged with the waiter's: a waiter 90 s ahead
    took over a live lease, and both switched the data. Now a waiter judges by its own monotonic
    clock whether the lease's ETag changed: renewed, it is live, whatever its "expires" says."""
    monkeypatch.setattr(locks, "LEASE_SECONDS", 1.5)
    storage = Storage(f"s3://{BUCKET}/skew", _options(endpoint))
    skewed = {"owner": "holder", "host": "h", "pid": 1, "expires": "2020-01-01T00:00:00+00:00"}
    lock = locks._S3Object(storage, "_locks/x.lock")
    etag = lock.create(json.dumps(skewed).encode())
    stop = threading.Event()

    def holder_renews() -> None:
        current = etag
        while not stop.wait(0.3):
            current = lock.replace(json.dumps({**skewed, "n": time.monotonic()}).encode(), current) or current

    renewer = threading.Thread(target=holder_renews)
    renewer.start()
    try:
        with (
            pytest.raises(RunConflict, match="run holder"),
            locks.publish_lock(storage, "_locks/x.lock", "waiter", timeout=4, what="x"),
        ):
            pass
    finally:
        stop.set()
        renewer.join()
    assert json.loads(storage.read_bytes("_locks/x.lock"))["owner"] == "holder"


def test_a_holder_whose_renewal_hangs_does_not_switch_the_data(
    endpoint: FlakyEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that hangs (botocore waits 60 s for an answer) set no flag, so the holder's check
    passed after its lease had expired and it overwrote the new holder's data. Now the check
    refuses once the last successful renewal is older than the lease less a margin; and a check
    that passes renews the lease, conditionally, right before the switch."""
    monkeypatch.setattr(locks, "LEASE_SECONDS", 1.5)
    storage = Storage(f"s3://{BUCKET}/stall", _options(endpoint))
    with locks.publish_lock(storage, "_locks/x.lock", "holder", timeout=0, what="x") as lease:
        before = storage.fs.info(storage.path("_locks/x.lock"))["ETag"]
        lease.check()  # fresh: passes, and fences with a renewal
        assert storage.fs.info(storage.path("_locks/x.lock"))["ETag"] != before
        endpoint.stall(4.0)  # renewals now hang (read timeout 5 s)
        time.sleep(1.6)  # past the lease less its margin since the last renewal
        with pytest.raises(StorageError, match="not switching the data"):
            lease.check()
        time.sleep(2.5)  # the stall passes
    assert not storage.exists("_locks/x.lock")
