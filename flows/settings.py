"""Prefect settings that make the embedded (serverless) mode work well on small machines.

They are defaults only: anything already in the environment wins, so a deployment pointed at a
real server or Prefect Cloud keeps its own settings. They must be applied before Prefect is
imported, because Prefect reads its settings once at import time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PREFECT_DEFAULTS = {
    # the first flow run of a process starts a temporary server: 9-19 s on 2 cores
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # offline and quiet: no phoning home, no UI assets
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # the library logs through the standard `logging` module; show it in flow run logs
    "PREFECT_LOGGING_EXTRA_LOGGERS": "genai_pipeline",
    # …and stay quiet when the library runs outside a flow in a process that also runs flows
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def apply_prefect_defaults() -> None:
    """Set Prefect's environment defaults and the log levels that show a run's progress."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("genai_pipeline").setLevel(os.environ.get("GENAI_PIPELINE_LOG_LEVEL", "INFO"))
    for chatty in ("great_expectations", "distributed"):  # a Dask cluster logs every worker's start
        logging.getLogger(chatty).setLevel(logging.WARNING)


def apply_memory_defaults() -> None:
    """Arrow's buffers from jemalloc, which hands freed pages back to the system, instead of pyarrow's
    default mimalloc, which keeps them for reuse: the whole Adult job's peak RSS is ~70 MB lower
    (BENCHMARKS.md, "Adult through the whole job"). ``ARROW_DEFAULT_MEMORY_POOL``, when set, wins;
    a pyarrow built without jemalloc keeps its default."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    import pyarrow as pa

    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


#: prctl's option for the signal a process receives when its parent ends (linux/prctl.h)
PR_SET_PDEATHSIG = 1


def _ends_with(parent: int) -> Callable[[], None]:
    """For a child process (``preexec_fn``): the kernel sends it SIGTERM when the thread that
    started it ends, so a job killed outright (SIGKILL, the OOM killer) leaves no server behind,
    holding a port and memory until the machine restarts; and it exits at once if its parent has
    already ended. Linux only (``prctl``). The CLI starts the server from its main thread before
    any other thread exists (``preexec_fn`` is unsafe beside threads)."""

    def set_parent_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(0)

    return set_parent_death_signal


class TemporaryServer:
    """Prefect's temporary server, started as Prefect's embedded mode starts it (uvicorn serving
    ``prefect.server.api.server:create_app`` in a process of its own, SQLite under ``PREFECT_HOME``)
    but without importing Prefect's server into this process, which Prefect's own launcher
    (``SubprocessASGIServer``) does: 74 MB of resident memory and 1.2 s of imports in the job's
    process, for a class that only starts a subprocess.

    This process binds the port and hands the listening socket to uvicorn (``--fd``), so no other
    process can take the port in between, and the server that answers is this one, never another
    job's (Prefect's launcher picks a free port, then lets the server bind it)."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Start the server process on a port of its own and point this process's Prefect (and the
        processes it starts) at it; return at once: :meth:`wait` before the first flow runs."""
        import prefect  # the package only (its modules load lazily): where the server's app lives
        from prefect.context import refresh_global_settings_context

        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(128)
            self.port = listening.getsockname()[1]
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1])]
                + ["--factory", "prefect.server.api.server:create_app", "--fd", str(listening.fileno())]
                + ["--log-level", "error", "--lifespan", "on"],
                env=env,
                pass_fds=(listening.fileno(),),
                preexec_fn=_ends_with(os.getpid()) if sys.platform == "linux" else None,
            )
        atexit.register(self.stop)
        os.environ["PREFECT_API_URL"] = self.api_url
        refresh_global_settings_context()

    def wait(self, timeout: float) -> None:
        """Until the server answers its health check; RuntimeError if it exits or does not answer
        within ``timeout`` seconds."""
        import httpx

        assert self.process is not None, "start() the server first"
        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if client.get(f"{self.api_url}/health", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        code = self.process.poll()
        raise RuntimeError(
            f"Prefect's temporary server exited with code {code}"
            if code is not None
            else f"Prefect's temporary server did not answer within {timeout:.0f} s"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def boot_temporary_server() -> TemporaryServer | None:
    """In embedded mode (no API URL in the environment or Prefect's profile), start Prefect's
    temporary server now (it boots in ~3 s while this process imports torch and Great
    Expectations) and point this process's Prefect at it, so the flow's client starts no server of
    its own. Call it before anything reads Prefect's settings beyond this function, and
    :meth:`TemporaryServer.wait` before the flow runs. None with a real server."""
    apply_prefect_defaults()
    from prefect.settings import get_current_settings

    if get_current_settings().api.url or os.name != "posix":  # Windows: Prefect starts its own
        return None
    server = TemporaryServer()
    server.start()
    return server
