"""The command line: listing, checking, and clear errors with the documented exit codes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genai_pipeline.cli import main
from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import literal_secrets, parse_overrides

ROOT = Path(__file__).parents[1]
JOB = str(ROOT / "deployments" / "jobs" / "penguins-vae.yaml")


def test_datasets_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("builtin://penguins", "builtin://digits", "builtin://mnist"):
        assert name in out


def test_check_accepts_a_valid_job_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", JOB, "--set", "generate.num_samples=10", "--output", "s3://b/p"]) == 0
    assert "10 samples to s3://b/p/penguins-vae" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", JOB, "--set", "train.epochs=0"],
            "train.epochs: Input should be greater than or equal to 1",
        ),
        (["check", "missing.yaml"], "missing.yaml: job file not found"),
        (["check", JOB, "--set", "nonsense"], "--set 'nonsense': expected KEY=VALUE"),
        (["run", JOB, "--run-date", "yesterday"], "--run-date: expected YYYY-MM-DD"),
        # identifiers that become paths, refused before a deployment is even looked up
        (["trigger", "penguins-vae", "--param", "run_id=../.."], "--param run_id: '../..' is not a run id"),
        (["trigger", "penguins-vae", "--param", "run_date=../x"], "--param run_date: expected YYYY-MM-DD"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.parametrize(
    "assignment",
    [
        "export.storage_options.secret=hunter2",
        "dataset.storage_options.headers.Authorization=Bearer hunter2",
        "export.storage_options={key: AKIA, secret: hunter2}",
        "notify.webhook_url=https://hooks.example/hunter2",
    ],
)
def test_trigger_refuses_a_literal_secret_that_prefect_would_store(
    assignment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Overrides go to the deployment as flow-run parameters, which Prefect keeps in its database
    as they are: a literal secret there was readable by anyone with the API. ${VAR} is accepted."""
    assert main(["trigger", "penguins-vae", "--set", assignment]) == 2
    err = capsys.readouterr().err
    assert "is stored as it is in Prefect's flow-run parameters; write ${VAR}" in err and "hunter2" not in err
    key = assignment.split("=")[0]
    assert literal_secrets(parse_overrides([f"{key}=${{SOME_VAR}}"])) == []  # a reference is no secret


def test_the_flow_refuses_overrides_with_a_literal_secret() -> None:
    from flows.synthesize import synthesize

    with pytest.raises(ConfigError, match="overrides: export.storage_options.secret: a secret given here"):
        synthesize.fn(job=JOB, overrides=["export.storage_options.secret=hunter2"])


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    """This environment without a Prefect API to report to (embedded mode), with a home of its own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect")}


def test_the_temporary_server_booted_early_is_the_one_the_flow_runs_on(tmp_path: Path) -> None:
    # embedded mode: the CLI starts Prefect's server while it imports the rest, without importing
    # Prefect's server itself (74 MB); its port is held from the start (no other process can take
    # it before the server is up); a flow then runs on it and starts no second one, and the
    # server stops when the process ends
    script = (
        "import os, socket, sys\n"
        "from flows.settings import boot_temporary_server\n"
        "server = boot_temporary_server()\n"
        "try:\n"
        "    socket.socket().bind(('127.0.0.1', server.port)); print('port free while booting')\n"
        "except OSError:\n"
        "    print('port held while booting')\n"
        "server.wait(timeout=120)\n"
        "from prefect import flow\n"
        "from prefect.client.orchestration import get_client\n"
        "print(flow(lambda: 41)() + 1, 'prefect.server.api.server' in sys.modules)\n"
        "with get_client(sync_client=True) as client:\n"
        "    url = str(client.api_url).rstrip('/')\n"
        "    print(len(client.read_flow_runs()), url == os.environ['PREFECT_API_URL'])\n"
        "print(server.process.pid)\n"
    )
    env = _embedded_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *_, port, answer, runs, pid = done.stdout.strip().splitlines()
    assert port == "port held while booting"
    assert answer.split() == ["42", "False"]  # the flow ran, and Prefect's server code stayed out
    assert runs.split() == ["1", "True"]  # on the server booted early: its one flow run is there
    assert not Path(f"/proc/{pid}").exists()  # stopped at exit
    env["PREFECT_API_URL"] = "http://127.0.0.1:1/api"  # a real server's: nothing is booted
    check = "from flows.settings import boot_temporary_server; print(boot_temporary_server())"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.stdout.strip() == "None", done.stderr[-2000:]


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_a_job_killed_outright_leaves_no_temporary_server_behind(tmp_path: Path) -> None:
    import signal
    import time

    script = (
        "from flows.settings import boot_temporary_server\n"
        "server = boot_temporary_server(); server.wait(timeout=120)\n"
        "print(server.process.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    env = _embedded_env(tmp_path)
    job = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert job.stdout is not None
    server = int(job.stdout.readline())
    assert Path(f"/proc/{server}").exists()
    job.send_signal(signal.SIGKILL)  # no atexit, no finally: what the OOM killer does
    job.wait()

    def running(pid: int) -> bool:  # a zombie has ended: whoever adopted it reaps it
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        return False

    deadline = time.monotonic() + 30
    while running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(server)


def test_a_temporary_server_that_does_not_start_fails_the_run_in_one_line(tmp_path: Path) -> None:
    env = {**_embedded_env(tmp_path), "PREFECT_HOME": "/dev/null/prefect"}  # no database can be made
    done = subprocess.run(
        [sys.executable, "-m", "genai_pipeline.cli", "run", JOB, "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "FAILED: RuntimeError: Prefect's temporary server exited with code 3"
    )
    assert not (tmp_path / "out").exists()


def test_a_temporary_server_that_dies_while_booting_fails_the_wait_at_once() -> None:
    from flows.settings import TemporaryServer

    server = TemporaryServer()
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    server.process.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        server.wait(timeout=60)
