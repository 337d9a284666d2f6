"""Prefect settings that make the embedded (serverless) mode work well on small machines.

They are defaults only: anything already in the environment wins, so a deployment pointed at a
real server or Prefect Cloud keeps its own settings. They must be applied before Prefect is
imported, because Prefect reads its settings once at import time.
"""

from __future__ import annotations

import logging
import os
import threading

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


def boot_temporary_server() -> threading.Thread | None:
    """In embedded mode (no ``PREFECT_API_URL``), start Prefect's temporary server now, in a thread:
    it boots in a process of its own (~3 s) while this one imports torch and Great Expectations,
    instead of after them. The flow's client finds it started (one server per process); join the
    thread before the flow runs. None with a real server."""
    apply_prefect_defaults()
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-server", daemon=True)
    thread.start()
    return thread
