"""Errors meant for people: each says what is wrong and where, in one line.

``PermanentError`` marks failures that a retry cannot fix (a bad config, a corrupt file, a failed
quality gate); the flow's retry policy skips them so a nightly job fails fast and loudly instead of
burning its retries on the same deterministic error.
"""


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


class StorageError(PipelineError):
    """Object storage could not be reached or written (transient: retried)."""
