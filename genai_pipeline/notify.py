"""Failure notifications: a failed nightly run is logged, and posted to a webhook when one is set.

The Prefect artifact with the run's summary is posted by the flow; this module is what a plain
Python caller (or the flow) uses to tell people. The webhook URL is a secret (a Slack or Teams URL
carries its token): it is read from the spec (``${VAR}`` from the environment) only to send, and
never logged, not even when the post fails.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from genai_pipeline.errors import ConfigError
from genai_pipeline.runs import Run
from genai_pipeline.storage import resolve_options

log = logging.getLogger(__name__)


def failure_summary(run: Run, manifest: dict[str, Any]) -> dict[str, Any]:
    """A failed run in a few fields; ``text`` is one line a chat channel shows as is."""
    error = manifest.get("error", "unknown error")
    return {
        "text": f"genai-pipeline: {run.job.name} {run.run_date} FAILED: {error}",
        "job": run.job.name,
        "run_id": run.run_id,
        "run_date": run.run_date,
        "error": error,
        "failures": manifest.get("failures"),
        "report": manifest.get("report"),
    }


def notify_failure(run: Run, manifest: dict[str, Any]) -> bool:
    """Log the failure; POST its summary to ``notify.webhook_url`` when set. True when posted."""
    summary = failure_summary(run, manifest)
    log.error("%s", summary["text"])
    spec = run.job.notify
    if spec.webhook_url is None:
        return False
    try:
        url = resolve_options({"webhook_url": spec.webhook_url}, field="notify")["webhook_url"]
        request = urllib.request.Request(
            url,
            data=json.dumps(summary).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=spec.timeout_seconds) as response:
            response.read()
    except (OSError, ValueError, ConfigError) as exc:  # the run already failed: a dead hook must not hide why
        log.warning("notify.webhook_url: the failure summary was not delivered (%s)", type(exc).__name__)
        return False
    return True
