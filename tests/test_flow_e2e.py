"""The nightly job end to end through Prefect, to a local directory and to S3 over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import S3_OPTIONS, tiny_job
from orders_data import CITIES, RULES, orders
from PIL import Image

from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.errors import ConfigError, QualityGateFailed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
RUN_DATE = "2026-01-02"


def _run(job, run_date: str = RUN_DATE) -> dict:
    from flows.synthesize import synthesize

    return synthesize(job=job, run_date=run_date)


def test_tabular_job_publishes_a_readable_partition(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path))
    result = _run(job)
    root = tmp_path / "tiny"
    table = pads.dataset(root / "data", format="parquet", partitioning="hive").to_table()
    real = BUILTINS["penguins"].load()
    assert table.num_rows == 120 == result["num_samples"]
    assert table.drop_columns(["run_date"]).schema.equals(real.schema)
    assert set(table.column("species").to_pylist()) <= set(real.column("species").to_pylist())
    assert set(table.column("run_date").to_pylist()) == {RUN_DATE}
    manifest = json.loads((root / "_runs" / f"{result['run_id']}.json").read_text())
    assert manifest["status"] == "published"
    assert manifest["dataset"]["fingerprint"] and manifest["dataset"]["num_rows"] == 344
    paths = {entry["path"] for entry in manifest["files"]}
    assert f"data/run_date={RUN_DATE}/part-00000.parquet" in paths
    quality = f"quality/run_date={RUN_DATE}/run={result['run_id']}"
    assert f"{quality}/metrics.parquet" in paths
    metrics = pq.read_table(root / quality / "metrics.parquet")
    assert "column_shapes" in metrics.column("metric").to_pylist()
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]
    summary = _latest_artifact("tiny-summary")
    assert "published" in summary and result["run_id"] in summary and "column_shapes" in summary
    report = root / quality / "report.html"
    assert result["report_url"] == str(report) and report.exists()
    assert report.resolve().as_uri() in _latest_artifact("tiny-report")


def _latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            limit=1,
            sort=ArtifactSort.CREATED_DESC,
        )
    return str(artifact.data)


def test_a_run_id_that_would_leave_the_output_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    """A flow parameter is user input: run_id "../.." named the output root, whose every job's
    files the publish then deleted with the run's staging area."""
    from flows.synthesize import synthesize

    other = tmp_path / "another-job" / "data" / "part-00000.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"PAR1")
    job = tiny_job("builtin://penguins", "vae", str(tmp_path))
    for run_id in ("../..", "a/b", ".."):
        with pytest.raises(ConfigError, match="run_id: .* is not a run id"):
            synthesize(job=job, run_date=RUN_DATE, run_id=run_id)
    assert other.read_bytes() == b"PAR1" and not (tmp_path / "tiny").exists()


def test_rerun_for_the_same_date_replaces_the_partition(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"num_samples": 70})
    first = _run(job)
    second = _run(job)
    partition = tmp_path / "tiny" / "data" / f"run_date={RUN_DATE}"
    assert [p.name for p in partition.iterdir()] == ["part-00000.parquet"]
    assert pq.read_table(partition).num_rows == 70
    assert first["run_id"] != second["run_id"]
    runs = sorted((tmp_path / "tiny" / "_runs").glob("*.json"))
    assert len(runs) == 2


def test_conditioned_image_job_to_s3(s3_env: dict[str, str]) -> None:
    output = f"s3://{s3_env['bucket']}/nightly"
    job = tiny_job(
        "builtin://digits",
        "gan",
        output,
        train={"epochs": 25},
        generate={"num_samples": 60, "batch_size": 25, "conditions": {"label": 3}},
        export={"output": output, "storage_options": S3_OPTIONS},
    )
    result = _run(job)
    fs = s3fs.S3FileSystem(key=s3_env["key"], secret=s3_env["secret"], endpoint_url=s3_env["endpoint_url"])
    root = f"{s3_env['bucket']}/nightly/tiny"
    manifest = pq.read_table(f"{root}/data", filesystem=fs)
    assert manifest.num_rows == 60 == result["num_samples"]
    assert set(manifest.column("label").to_pylist()) == {"3"}
    assert len(set(manifest.column("sample_id").to_pylist())) == 60
    for path in manifest.column("path").to_pylist()[:5]:
        assert path.startswith(f"images/run_date={RUN_DATE}/label=3/")
        image = Image.open(io.BytesIO(fs.cat_file(f"{root}/{path}")))
        assert image.size == (8, 8) and image.mode == "L"
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/_staging") or not fs.find(f"{root}/_staging")
    run_manifest = fs.cat_file(f"{root}/_runs/{result['run_id']}.json").decode()
    assert s3_env["secret"] not in run_manifest and s3_env["key"] not in run_manifest


def test_a_table_with_personal_data_publishes_nothing_real_to_s3(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Through Prefect, to S3, with the private workspace in a bucket prefix of its own: every
    object under the published prefix is read back, and none holds a planted value, a real e-mail
    or a real identifier; the models and snapshots are in the workspace only."""
    from test_canary import CANARY_EMAIL, CANARY_ISLAND, CANARY_MASS, CANARY_REMARK, planted_penguins

    real = planted_penguins(tmp_path / "zoo.parquet")
    output, workspace = f"s3://{s3_env['bucket']}/published", f"s3://{s3_env['bucket']}/private"
    job = tiny_job(
        str(tmp_path / "zoo.parquet"),
        "autoregressive",
        output,
        generate={"num_samples": 400},
        export={"output": output, "workspace": workspace, "storage_options": S3_OPTIONS},
    )
    _run(job)
    fs = s3fs.S3FileSystem(key=s3_env["key"], secret=s3_env["secret"], endpoint_url=s3_env["endpoint_url"])
    fs.invalidate_cache()
    published = fs.find(f"{s3_env['bucket']}/published/tiny")
    assert published and all(
        key.split("/")[3] in ("data", "quality", "_runs", "_locks") for key in published
    ), published
    real_values = {*real.column("keeper_email").to_pylist(), *real.column("penguin_id").to_pylist()}
    for key in published:
        blob = fs.cat_file(key)
        text = (
            json.dumps(pq.read_table(io.BytesIO(blob)).to_pylist(), default=str)
            if key.endswith(".parquet")
            else blob.decode("latin-1")
        )
        assert CANARY_EMAIL not in text and CANARY_ISLAND not in text and str(CANARY_MASS) not in text, key
        assert CANARY_REMARK not in text, key  # the remarks are written by the table's text model
        assert not [value for value in real_values if value in text], key
    private = fs.find(f"{s3_env['bucket']}/private/tiny")
    assert any(key.endswith("model.json") for key in private)
    assert not any("/runs/" in key for key in private)  # the run's real rows went when it ended


def test_a_differentially_private_run_publishes_and_gates_its_epsilon(tmp_path: Path) -> None:
    """DP-SGD through the flow: the ε spent is in the manifest, metrics.parquet, the report and the
    Prefect summary, and validate.max_epsilon passes it; a lower cap fails the run."""
    from test_privacy import _adultish

    pq.write_table(_adultish(), tmp_path / "people.parquet")
    sections = {
        "dataset": {"label": "income"},
        "train": {"epochs": 1, "batch_size": 256, "privacy": {"epsilon": 2.0}},
        "validate": {"max_epsilon": 2.0},
    }
    job = tiny_job(str(tmp_path / "people.parquet"), "vae", str(tmp_path / "out"), **sections)
    result = _run(job)
    manifest = json.loads((tmp_path / "out" / "tiny" / "_runs" / f"{result['run_id']}.json").read_text())
    spent = manifest["model"]["fit"]["privacy"]["epsilon"]
    assert 0 < spent <= 2.0
    metrics = pq.read_table(
        next((tmp_path / "out" / "tiny" / "quality").rglob("metrics.parquet"))
    ).to_pylist()
    assert [m["value"] for m in metrics if m["metric"] == "epsilon"] == [spent]
    assert "differential privacy: ε" in _latest_artifact("tiny-summary")
    assert f"{spent:.3f}" in Path(result["report_url"]).read_text()
    capped = tiny_job(
        str(tmp_path / "people.parquet"),
        "vae",
        str(tmp_path / "out"),
        **{**sections, "validate": {"max_epsilon": 0.5}},
    )
    with pytest.raises(QualityGateFailed, match=r"epsilon=[0-9.]+ > 0\.5"):
        _run(capped, run_date="2026-01-02")


def test_a_job_with_every_kind_of_constraint_publishes_rows_that_follow_them_all(tmp_path: Path) -> None:
    source = tmp_path / "orders.parquet"
    pq.write_table(orders(), source)
    every = [
        *RULES,
        {"kind": "unique", "column": "order_id"},
        {"kind": "unique", "columns": ["order_id", "city"]},  # unique through the identifier
        {"kind": "custom", "rule": "orders_data:BusinessHours", "columns": ["ordered_at"]},
        {"kind": "custom", "rule": "orders_data:NoReturnsInParis", "columns": ["city", "status"]},
    ]
    generate = {"num_samples": 600, "batch_size": 128, "shards": 2, "constraints": every}
    job = tiny_job(
        str(source), "autoregressive", str(tmp_path), generate=generate, validate={"max_memorised_share": 1.0}
    )
    result = _run(job)
    root = tmp_path / "tiny"
    out = pq.read_table(root / "data" / f"run_date={RUN_DATE}").to_pandas()
    assert len(out) == 600 == result["num_samples"]
    # each rule checked here on its own, not by the code that enforced it
    ordered = out["ordered_at"].astype("datetime64[us]")
    assert (pd.to_datetime(out["shipped_on"]) > ordered).all()
    days = pd.to_datetime(out["delivered_on"]) - pd.to_datetime(out["shipped_on"])
    assert (days.dt.days >= 1).all()
    assert ((out["discount"] >= 0) & (out["discount"] <= out["price"])).all()
    assert set(zip(out["city"], out["country"], strict=True)) <= set(CITIES.items())
    assert (abs(out["total"] - (out["price"] * out["quantity"] - out["discount"])) <= 0.0051).all()
    assert set(out["status"]) <= {"new", "shipped", "returned"} and (out["quantity"] > 0).all()
    assert out["order_id"].is_unique and not set(out["order_id"]) & set(orders()["order_id"].to_pylist())
    assert out["ordered_at"].dt.hour.between(8, 19).all()
    assert not ((out["city"] == "Paris") & (out["status"] == "returned")).any()
    quality = root / "quality" / f"run_date={RUN_DATE}" / f"run={result['run_id']}"
    metrics = pq.read_table(quality / "metrics.parquet").to_pandas()
    adherence = metrics[metrics["metric"] == "constraint_adherence"]
    assert len(adherence) == len(every) and (adherence["value"] == 1.0).all() and adherence["passed"].all()
    assert metrics[metrics["metric"] == "rejected_share"]["value"].between(0, 0.9).all()
    results = json.loads((quality / "expectations.json").read_text())["results"]["expectations"]
    checked = [r for r in results if r["expectation_type"].endswith("_to_follow_constraint")]
    assert len(checked) == len(every) and all(r["success"] for r in checked)
    assert "constraint_adherence" in (quality / "report.html").read_text()


def test_rebalanced_fair_and_seeded_jobs_publish_what_they_ask_for(tmp_path: Path) -> None:
    shares = _run(
        tiny_job(
            "builtin://penguins",
            "vae",
            str(tmp_path / "r"),
            generate={"num_samples": 400, "rebalance": {"island": {"Torgersen": 0.5}}},
        )
    )
    islands = (
        pq.read_table(tmp_path / "r" / "tiny" / "data" / f"run_date={RUN_DATE}").column("island").to_pylist()
    )
    assert shares["num_samples"] == 400 and islands.count("Torgersen") == 200
    fairness = {"num_samples": 600, "fairness": {"target": "species", "sensitive": ["island"]}}
    fair = _run(tiny_job("builtin://penguins", "vae", str(tmp_path / "f"), generate=fairness))
    quality = tmp_path / "f" / "tiny" / "quality" / f"run_date={RUN_DATE}" / f"run={fair['run_id']}"
    gaps = pq.read_table(quality / "metrics.parquet").to_pandas().set_index("metric")["value"]
    assert gaps["parity_gap"] < 0.05 < 0.7 < gaps["parity_gap_real"]
    seeds = Path(__file__).resolve().parents[1] / "deployments" / "jobs" / "seeds" / "penguins-what-if.csv"
    complete = {"complete": {"uri": str(seeds), "rows_per_seed": 5}}
    _run(
        tiny_job(
            "builtin://penguins",
            "vae",
            str(tmp_path / "s"),
            generate=complete,
            validate={"max_memorised_share": 1.0},
        )
    )
    done = pq.read_table(tmp_path / "s" / "tiny" / "data" / f"run_date={RUN_DATE}").to_pandas()
    assert (
        len(done) == 20
        and list(done["island"][:5]) == ["Dream"] * 5
        and list(done["body_mass_g"][5:10]) == [5500] * 5
    )


def test_failed_gate_publishes_nothing(tmp_path: Path) -> None:
    impossible = {
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "bill_length_mm", "min_value": 0, "max_value": 1},
                "check_input": False,  # a gate for the synthetic rows only: the real ones pass ingest
            }
        ]
    }
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), validate=impossible)
    with pytest.raises(QualityGateFailed, match=r"expect_column_values_to_be_between\(bill_length_mm\)"):
        _run(job)
    root = tmp_path / "tiny"
    assert not (root / "data").exists() and not (root / "quality").exists()
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]
    (manifest,) = (root / "_runs").glob("*.json")
    record = json.loads(manifest.read_text())
    assert record["status"] == "failed" and "bill_length_mm" in record["error"]
    kept = list((root / "_runs").rglob("expectations.json"))
    assert kept, "the failed run's validation results are kept for review"
    assert "failed" in _latest_artifact("tiny-summary")
    assert record["report"].endswith("report.html") and Path(record["report"]).exists()
    assert Path(record["report"]).resolve().as_uri() in _latest_artifact("tiny-report")


def test_cli_exits_non_zero_and_names_the_failure(tmp_path: Path) -> None:
    job = Path(__file__).parents[1] / "deployments" / "jobs" / "penguins-vae.yaml"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "genai_pipeline.cli",
            "run",
            str(job),
            "--output",
            str(tmp_path / "out"),
            "--set",
            "train.epochs=1",
            "--set",
            "validate.min_column_shapes=1.0",
            "--run-date",
            RUN_DATE,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("FAILED: quality gate failed:") and "column_shapes=" in last_line
    assert not (tmp_path / "out" / "penguins-vae" / "data").exists()


def test_literal_credentials_never_reach_logs_parameters_or_outputs(
    s3_server: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client

    from flows.synthesize import synthesize

    output = f"s3://{s3_server['bucket']}/secrets-test"
    options = {key: s3_server[key] for key in ("endpoint_url", "key", "secret")}  # literals, not ${VAR}
    job = tiny_job("builtin://penguins", "vae", output, export={"output": output, "storage_options": options})
    state = synthesize(job=job, run_date=RUN_DATE, return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs()
    stored = json.dumps(flow_run.parameters) + " ".join(log.message for log in logs)
    assert "**********" in json.dumps(flow_run.parameters)
    fs = s3fs.S3FileSystem(
        key=s3_server["key"], secret=s3_server["secret"], endpoint_url=s3_server["endpoint_url"]
    )
    written = b"".join(fs.cat_file(path) for path in fs.find(f"{s3_server['bucket']}/secrets-test"))
    captured = capfd.readouterr()
    persisted = _prefect_persisted_bytes()  # the server's database and the result storage
    assert persisted, "found none of Prefect's database or result files to search"
    assert _holds(b"x" + base64.b64encode(b"ab" + s3_server["secret"].encode()), s3_server["secret"].encode())
    for secret in (s3_server["secret"], s3_server["key"]):
        assert secret not in stored
        assert secret.encode() not in written
        assert secret not in captured.out + captured.err
        assert not _holds(persisted, secret.encode()), "a literal secret is in Prefect's database or results"
    assert _latest_artifact("tiny-summary") and s3_server["secret"] not in _latest_artifact("tiny-summary")


def _prefect_persisted_bytes() -> bytes:
    """Everything Prefect keeps on disk: its database (with the write-ahead log) and results."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    database = settings.server.database.connection_url.get_secret_value().split(":///", 1)[-1]
    paths = [Path(database + suffix) for suffix in ("", "-wal", "-journal")]
    paths += [path for path in Path(settings.results.local_storage_path).rglob("*") if path.is_file()]
    return b"".join(path.read_bytes() for path in paths if path.is_file())


def _holds(blob: bytes, secret: bytes) -> bool:
    """Whether ``blob`` holds ``secret`` as it is or base64-encoded (at any alignment)."""
    if secret in blob:
        return True
    for run in re.findall(rb"[A-Za-z0-9+/=_-]{16,}", blob):
        for start in range(4):
            chunk = run[start:]
            with suppress(ValueError):
                decoded = base64.b64decode(
                    chunk[: len(chunk) - len(chunk) % 4] + b"==",
                    altchars=b"-_" if b"-" in chunk or b"_" in chunk else None,
                )
                if secret in decoded:
                    return True
    return False


def test_transient_failures_are_retried_and_permanent_ones_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genai_pipeline import stages
    from genai_pipeline.datasets import sources
    from genai_pipeline.errors import DatasetError, StorageError

    calls = {"write": 0, "read": 0}
    real_write = stages.write_parquet

    def flaky_write(*args, **kwargs):
        calls["write"] += 1
        if calls["write"] == 1:
            raise StorageError("s3://bucket: connection reset (simulated)")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(stages, "write_parquet", flaky_write)
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), retries={"count": 2, "delay_seconds": 0})
    assert _run(job)["num_samples"] == 120
    assert calls["write"] == 2

    def broken_read(spec):
        calls["read"] += 1
        raise DatasetError(f"{spec.uri}: not a readable PARQUET file (simulated)")

    monkeypatch.setattr(sources, "read_dataset", broken_read)
    with pytest.raises(DatasetError, match="simulated"):
        _run(job)
    assert calls["read"] == 1


def test_a_training_task_that_crashes_is_retried_and_resumes_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genai_pipeline.training import CheckpointStore

    train = {"epochs": 12, "checkpoint_every": 5}
    retries = {"count": 1, "delay_seconds": 0}
    whole = _run(tiny_job("builtin://penguins", "vae", str(tmp_path / "whole"), train=train, retries=retries))
    steps = json.loads(Path(whole["manifest_url"]).read_text())["model"]["fit"]["steps"]

    saves, real_save = [], CheckpointStore.save

    def crash_after_second_checkpoint(self: CheckpointStore, state: dict) -> None:
        real_save(self, state)
        saves.append(state["step"])
        if len(saves) == 2:
            raise RuntimeError("worker lost mid-training (simulated)")

    monkeypatch.setattr(CheckpointStore, "save", crash_after_second_checkpoint)
    job = tiny_job("builtin://penguins", "vae", str(tmp_path / "crashed"), train=train, retries=retries)
    fit = json.loads(Path(_run(job)["manifest_url"]).read_text())["model"]["fit"]
    assert fit["resumed_from_step"] == saves[1] == 10  # the step counter continues …
    assert fit["steps"] == steps  # … and the total is the uninterrupted run's, not doubled


def test_a_failed_run_posts_its_summary_to_the_webhook_and_never_logs_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret_url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN-s3cret"
    monkeypatch.setenv("GENAI_TEST_HOOK", secret_url)
    try:
        job = tiny_job(
            "builtin://penguins",
            "vae",
            str(tmp_path),
            validate={"min_column_shapes": 1.0},
            notify={"webhook_url": "${GENAI_TEST_HOOK}"},
        )
        with pytest.raises(QualityGateFailed):
            _run(job)
    finally:
        server.shutdown()
    (summary,) = received
    assert summary["job"] == "tiny" and "column_shapes=" in summary["error"]
    assert summary["text"].startswith("genai-pipeline: tiny 2026-01-02 FAILED")
    assert summary["report"].endswith("report.html")
    outputs = [
        p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".parquet"
    ]
    assert all("T0KEN-s3cret" not in text for text in [caplog.text, *outputs])


def test_an_export_cut_off_mid_move_is_retried_without_losing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genai_pipeline.errors import StorageError
    from genai_pipeline.storage import Storage

    real_move, cut = Storage.move, []

    def move_half_then_fail(self: Storage, pairs) -> None:
        pairs = list(pairs)
        if not cut and len(pairs) > 10:
            cut.append(len(pairs))
            real_move(self, pairs[: len(pairs) // 2])
            raise StorageError("connection reset during export (simulated)")
        real_move(self, pairs)

    monkeypatch.setattr(Storage, "move", move_half_then_fail)
    job = tiny_job("builtin://digits", "vae", str(tmp_path), retries={"count": 1, "delay_seconds": 0})
    result = _run(job)
    assert cut, "the export was cut off once"
    root = tmp_path / "tiny"
    manifest = pq.read_table(root / "data" / f"run_date={RUN_DATE}" / "part-00000.parquet")
    assert manifest.num_rows == result["num_samples"] == 120
    assert all((root / path).exists() for path in manifest.column("path").to_pylist())
    assert len(list((root / "images").rglob("*.png"))) == 120
    assert not [p for p in (root / "_staging").rglob("*") if p.is_file()]


def test_a_failed_shard_is_retried_alone_and_writes_its_part_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genai_pipeline import stages
    from genai_pipeline.errors import StorageError

    calls: list[str] = []
    real_write = stages.write_parquet

    def flaky_write(batches, storage, rel, **kwargs):
        calls.append(rel.rsplit("/", 1)[-1])
        if calls.count("part-00001.parquet") == 1 and rel.endswith("part-00001.parquet"):
            raise StorageError("connection reset (simulated)")
        return real_write(batches, storage, rel, **kwargs)

    monkeypatch.setattr(stages, "write_parquet", flaky_write)
    job = tiny_job(
        "builtin://penguins",
        "vae",
        str(tmp_path),
        generate={"num_samples": 90, "shards": 3},
        retries={"count": 1, "delay_seconds": 0},
    )
    assert _run(job)["num_samples"] == 90
    assert sorted(calls) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    parts = sorted((tmp_path / "tiny" / "data" / f"run_date={RUN_DATE}").glob("*.parquet"))
    assert [pq.read_metadata(part).num_rows for part in parts] == [90]  # the shards, as one file


@pytest.mark.parametrize(("shards", "workers", "inline"), [(1, None, True), (3, 1, True), (2, 2, False)])
def test_shards_run_one_at_a_time_sample_in_the_thread_that_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: int, workers: int | None, inline: bool
) -> None:
    # torch's OpenMP threads form a team per thread using them: a shard sampled in a pool thread,
    # beside the training thread's team, found more OpenMP threads than cores and ran 1.7× slower;
    # shards run side by side still take the pool's threads
    import threading

    import flows.synthesize as tasks

    threads: dict[str, set[int]] = {"train": set(), "generate_shard": set()}
    for name in threads:
        real = getattr(tasks, name).fn

        def spy(*args, _real=real, _name=name, **kwargs):
            threads[_name].add(threading.get_ident())
            return _real(*args, **kwargs)

        monkeypatch.setattr(getattr(tasks, name), "fn", spy)
    monkeypatch.setattr(tasks, "available_cores", lambda: 2)
    released: list[int] = []  # the training thread's OpenMP team, before shards run beside it
    monkeypatch.setattr(tasks, "release_openmp_team", lambda: released.append(threading.get_ident()))
    generate = {"num_samples": 120, "shards": shards, "runner": {"kind": "threads", "workers": workers}}
    assert _run(tiny_job("builtin://penguins", "vae", str(tmp_path), generate=generate))["num_samples"] == 120
    assert (threads["generate_shard"] == threads["train"]) is inline
    assert released == ([] if inline else list(threads["train"]))


def test_a_local_clusters_workers_start_with_the_heap_and_threads_sampling_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not Dask's 64 KiB trim threshold (sampling at half speed), set where glibc reads it: in the
    environment the workers start with; torch's share of the cores for each cluster, not what an
    earlier cluster's nanny left in this process's environment."""
    from distributed import Client, LocalCluster

    from flows.synthesize import shard_runner
    from genai_pipeline.config import GenerateSpec

    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # and whatever a nanny sets here goes after the test
    monkeypatch.setattr("flows.synthesize.available_cores", lambda: 2)
    names = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS")
    seen = []
    for workers in (1, 2):
        runner = shard_runner(GenerateSpec.model_validate({"runner": {"kind": "dask", "workers": workers}}))
        with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
            seen.append(client.run(lambda: [__import__("os").environ.get(name) for name in names]))
    one, two = seen
    assert list(one.values()) == [[str(64 * 2**20), str(32 * 2**20), "2"]]
    assert list(two.values()) == [[str(64 * 2**20), str(32 * 2**20), "1"]] * 2


def test_a_dask_cluster_generates_the_same_data_as_threads(tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.synthesize import shard_runner

    def job(runner: dict) -> object:
        return tiny_job(
            "builtin://penguins",
            "vae",
            str(tmp_path),
            train={"reuse": "cached"},  # the second run samples the first run's model
            generate={"num_samples": 300, "batch_size": 64, "shards": 3, "runner": runner},
        )

    on_dask = job({"kind": "dask", "workers": 2})
    assert isinstance(shard_runner(on_dask.generate), DaskTaskRunner)
    assert _run(job({"kind": "threads"}), "2026-01-02")["num_samples"] == 300
    assert _run(on_dask, "2026-01-03")["num_samples"] == 300

    def published(run_date: str) -> list:
        parts = sorted((tmp_path / "tiny" / "data" / f"run_date={run_date}").glob("part-*.parquet"))
        return [pq.read_table(part).to_pylist() for part in parts]

    threads, dask = published("2026-01-02"), published("2026-01-03")
    assert [len(part) for part in threads] == [300]
    assert dask == threads
