"""Nightly schedules on a Prefect server, and the CI entry point that runs a deployment.

``deploy`` deploys every job of ``deployments/prefect.yaml`` to the Prefect API in
``PREFECT_API_URL``; with none set it first starts what a newcomer lacks, a local server (SQLite)
and a ``process`` worker on 127.0.0.1, detached, their pids and logs in a state folder so that
``deploy --stop`` ends them. ``trigger`` runs one deployment, prints each state it passes through
and returns 0 only when the flow run Completed; otherwise it names the failed task and its message,
so CI fails loudly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from genai_pipeline.errors import ConfigError, PipelineError
from genai_pipeline.jobs import load_job, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
FLOW_NAME = "synthesize"
#: states a flow run ends in
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _prefect(*args: str, env: dict[str, str], cwd: Path = ROOT) -> str:
    """Run the Prefect CLI of this environment; its output, or an error with its last lines."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise PipelineError(f"prefect {' '.join(args[:2])} failed: " + " | ".join(tail))
    return done.stdout


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _spawn(args: list[str], env: dict[str, str], state: Path, name: str) -> int:
    """Start a detached process (its own session, so it outlives this command); record its pid."""
    with open(state / f"{name}.log", "ab") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (state / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def start_local(state: Path, port: int, pool: str, env: dict[str, str]) -> str:
    """A local Prefect server (SQLite under ``state``) and a process worker; returns the API URL."""
    state.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **env,
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "TMPDIR": str(state / "tmp"),  # workers leave runner_storage folders in TMPDIR
        # the worker polls for scheduled runs every 10 s by default: a triggered run waits for it
        "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
    }
    (state / "tmp").mkdir(exist_ok=True)
    if not _healthy(api_url):
        server = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        _spawn(server, env, state, "server")
        deadline = time.monotonic() + 120
        while not _healthy(api_url):
            if time.monotonic() > deadline:
                raise PipelineError(f"the local Prefect server did not start: see {state / 'server.log'}")
            time.sleep(1)
    _ensure_pool(pool, env)
    if not _running(state / "worker.pid"):
        worker = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
        _spawn(worker, env, state, "worker")
    return api_url


def _running(pid_file: Path) -> bool:
    """Whether the process a pid file names is alive (a deploy run twice starts no second worker)."""
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def stop_local(state: Path) -> list[str]:
    """Stop what :func:`start_local` started, by pid (worker first); the names of what was stopped."""
    stopped = []
    for name in ("worker", "server"):
        pid_file = state / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _running(pid_file):
            _terminate(pid)
            stopped.append(name)
        pid_file.unlink()
    return stopped


def _terminate(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group (its own session: the children too), SIGKILL it after ``grace``
    seconds (a worker whose server is gone can hang in its retries)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (tests): reap it
                    return
            except ChildProcessError:  # not our child: poll for it
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)


def _ensure_pool(pool: str, env: dict[str, str]) -> None:
    """Create a ``process`` work pool of that name unless one exists (of any type)."""
    try:
        _prefect("work-pool", "inspect", pool, env=env)
    except PipelineError:
        _prefect("work-pool", "create", pool, "--type", "process", env=env)


#: what a second run of a job does while one runs (``--on-overlap``)
COLLISION = {"wait": "ENQUEUE", "cancel": "CANCEL_NEW"}


def deployment_file(
    source: Path,
    *,
    cron: str | None,
    timezone: str | None,
    pool: str | None,
    on_overlap: str | None = None,
) -> dict[str, Any]:
    """``prefect.yaml`` with the schedule, pool and overlap policy replaced where the command line
    says so."""
    try:
        spec = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: cannot read the deployments file ({exc})") from None
    for deployment in spec.get("deployments", []):
        schedules = [dict(schedule) for schedule in deployment.get("schedules", [])]
        for schedule in schedules:
            schedule.update({k: v for k, v in {"cron": cron, "timezone": timezone}.items() if v})
        deployment["schedules"] = schedules
        if pool:
            deployment["work_pool"] = {**deployment.get("work_pool", {}), "name": pool}
        if on_overlap:
            limit = {**deployment.get("concurrency_limit", {"limit": 1})}
            deployment["concurrency_limit"] = {**limit, "collision_strategy": COLLISION[on_overlap]}
    return spec


def deploy(
    source: Path = PREFECT_FILE,
    *,
    cron: str | None = None,
    timezone: str | None = None,
    pool: str | None = None,
    on_overlap: str | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Create the work pool if missing and deploy every deployment of ``source``; their names."""
    env = {**(env or os.environ), "GENAI_PIPELINE_ROOT": str(ROOT)}
    spec = deployment_file(source, cron=cron, timezone=timezone, pool=pool, on_overlap=on_overlap)
    for name in {d.get("work_pool", {}).get("name") for d in spec["deployments"]} - {None}:
        _ensure_pool(name, env)
    with tempfile.TemporaryDirectory(prefix="genai-deploy-") as folder:
        rewritten = Path(folder) / "prefect.yaml"
        rewritten.write_text(yaml.safe_dump(spec, sort_keys=False))
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(rewritten), env=env)
    return [f"{FLOW_NAME}/{deployment['name']}" for deployment in spec["deployments"]]


def _failed_tasks(client: Any, flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [
        f"task {run.name}: {run.state.message}"
        for run in runs
        if run.state is not None and run.state.type.value in ("FAILED", "CRASHED")
    ]


def trigger(name: str, parameters: dict[str, Any], *, timeout: float, poll: float = 2.0) -> int:
    """Run deployment ``name`` (``synthesize/NAME`` or ``NAME``), stream its states; 0 iff Completed."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    full = name if "/" in name else f"{FLOW_NAME}/{name}"
    with get_client(sync_client=True) as client:
        defaults = client.read_deployment_by_name(full).parameters
        job = {**defaults, **parameters}.get("job")
        if isinstance(job, str) and (ROOT / job).exists():  # fail here, not on the worker, on a bad --set
            load_job(ROOT / job, overrides=parse_overrides(parameters.get("overrides", [])))
        flow_run = run_deployment(full, parameters=parameters, timeout=0)
        print(f"triggered {full}: flow run {flow_run.name} ({flow_run.id})", flush=True)
        deadline, seen = time.monotonic() + timeout, None
        while True:
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.name != seen:
                seen = state.name
                print(f"  {time.strftime('%H:%M:%S')} {state.name}", flush=True)
            if state is not None and state.type.value in FINAL:
                break
            if time.monotonic() > deadline:
                print(
                    f"FAILED: {full} did not finish within {timeout:.0f} s (last state {seen})",
                    file=sys.stderr,
                )
                return 1
            time.sleep(poll)
        if state.type.value == "COMPLETED":
            return 0
        failures = _failed_tasks(client, flow_run.id) or [state.message or state.name]
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1
