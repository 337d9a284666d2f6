"""Errors meant for people: each says what is wrong and where, in one line.

``PermanentError`` marks failures that a retry cannot fix (a bad config, a corrupt file, a failed
quality gate); the flow's retry policy skips them so a nightly job fails fast and loudly instead of
burning its retries on the same deterministic error.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class PermanentError(PipelineError):
    """A failure that retrying will not fix."""


class ConfigError(PermanentError):
    """The job spec (or an override) is invalid; the message names the field."""


class DatasetError(PermanentError):
    """The dataset is missing, unreadable or unusable; the message names the file or column."""


class TrainingDiverged(PermanentError):
    """The loss became NaN/inf or the gradients exploded; the message names the step."""


class QualityGateFailed(PermanentError):
    """The synthetic data failed validation; the message names every failed check."""

    def __init__(self, failures: list[str]):
        self.failures = list(failures)
        super().__init__("quality gate failed: " + "; ".join(self.failures))


class RunConflict(PermanentError):
    """Another run of the same job and run date held the publish lock for longer than the job waits."""


class RunSuperseded(PermanentError):
    """Another run of the same job and date published first, or started later: this run gives up
    rather than replace it."""


class UnsafePath(PermanentError):
    """A path would leave the job's output prefix (or remove the prefix itself): refused, whatever
    identifier it was built from."""


class StorageError(PipelineError):
    """Object storage could not be reached or written (transient: retried)."""


def _problem(error: dict[str, Any], section: str) -> str:
    where = ".".join([section, *map(str, error["loc"])] if section else map(str, error["loc"]))
    if not where and error["type"] == "value_error":  # a check of the whole job names its fields itself
        return error["msg"].removeprefix("Value error, ")
    where = where or "job"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    message = error["msg"].removeprefix("Value error, ")
    shown = error.get("input")
    if error["type"] in ("missing",) or isinstance(shown, dict | list):
        return f"{where}: {message}"
    return f"{where}: {message} (got {shown!r})"


def format_validation_error(exc: ValidationError, *, prefix: str = "", section: str = "") -> str:
    """One line for all of a pydantic ValidationError's problems, each naming its field (under
    ``section``, e.g. ``model``, for a model's own config)."""
    return prefix + "; ".join(_problem(error, section) for error in exc.errors())
