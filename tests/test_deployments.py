"""Nightly deployments on a real Prefect server and process worker, triggered the way CI does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from flows import deploy

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "train.epochs=2",
    "--set", "generate.num_samples=100",
    "--set", "validate.min_column_shapes=0",
    "--set", "validate.null_tolerance=1",
]  # fmt: skip


def test_every_job_has_a_nightly_deployment() -> None:
    spec = yaml.safe_load(deploy.PREFECT_FILE.read_text())
    by_job = {d["parameters"]["job"]: d for d in spec["deployments"]}
    jobs = {f"deployments/jobs/{path.name}" for path in (ROOT / "deployments" / "jobs").glob("*.yaml")}
    assert set(by_job) == jobs
    for deployment in by_job.values():
        assert deployment["entrypoint"] == "flows/synthesize.py:synthesize"
        assert deployment["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
        assert deployment["work_pool"]["name"] == "genai-process"
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_the_command_line_moves_the_schedule_and_the_pool() -> None:
    spec = deploy.deployment_file(
        deploy.PREFECT_FILE, cron="30 1 * * *", timezone="Europe/Berlin", pool="k8s", on_overlap="cancel"
    )
    assert {json.dumps(d["schedules"]) for d in spec["deployments"]} == {
        json.dumps([{"cron": "30 1 * * *", "timezone": "Europe/Berlin"}])
    }
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"k8s"}
    assert {d["concurrency_limit"]["collision_strategy"] for d in spec["deployments"]} == {"CANCEL_NEW"}
    untouched = deploy.deployment_file(deploy.PREFECT_FILE, cron=None, timezone=None, pool=None)
    assert untouched["deployments"][0]["schedules"][0]["cron"] == "0 2 * * *"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "genai_pipeline.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`genai-pipeline deploy` with no API set: a real server (SQLite) and process worker on
    127.0.0.1, the jobs deployed; `deploy --stop` ends them by pid."""
    state = tmp_path_factory.mktemp("prefect-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    port = _free_port()
    deployed = _cli(env, "deploy", "--state-dir", str(state), "--port", str(port))
    try:
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        jobs = len(list((ROOT / "deployments" / "jobs").glob("*.yaml")))  # one deployment each
        assert f"deployed {jobs} deployments" in deployed.stdout and "synthesize/mnist-gan" in deployed.stdout
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    finally:
        pids = [int((state / f"{name}.pid").read_text()) for name in ("server", "worker")]
        stopped = _cli(env, "deploy", "--stop", "--state-dir", str(state))
        assert "stopped: worker, server" in stopped.stdout
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def _trigger(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _cli(env, "trigger", *args, "--timeout", "300")


@pytest.mark.e2e
def test_a_deployment_runs_on_the_worker_and_ci_sees_its_outcome(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "out"
    done = _trigger(
        prefect_server, "penguins-vae", *TINY, "--set", f"export.output={output}", "--run-date", "2026-03-04"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running" in done.stdout and "Completed" in done.stdout
    data = pads.dataset(output / "penguins-vae" / "data", partitioning="hive").to_table()
    assert data.num_rows == 100 and set(data.column("run_date").to_pylist()) == {"2026-03-04"}

    failing = _trigger(prefect_server, "penguins-vae", *TINY, "--set", f"export.output={output}",
                       "--set", "validate.min_column_shapes=1.0")  # fmt: skip
    assert failing.returncode == 1
    assert "FAILED: task export" in failing.stderr and "column_shapes=" in failing.stderr
    bad = _trigger(prefect_server, "penguins-vae", "--set", "train.epochs=-1")
    assert bad.returncode == 2 and "train.epochs" in bad.stderr  # checked before anything runs

    inspected = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "inspect", "synthesize/penguins-vae"],
        env=prefect_server, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "'cron': '0 2 * * *'" in inspected and "'timezone': 'UTC'" in inspected
