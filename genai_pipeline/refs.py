"""What passes between the stages: small, frozen references, never the data itself.

Each stage returns one of these and the next takes it. A reference carries the addresses its
consumer reads, so no stage rebuilds another's paths by convention, and everything in it is plain
data: Prefect can hand it to a task on another worker, and a manifest can record it. What is
derived from real rows (the snapshot, the holdout, the model) is addressed relative to the job's
private workspace; what is synthetic or aggregate (the staged suite, the generated data, the
report) relative to the job's output root. A reference never holds a real value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetRef:
    """What ingest read and staged: the training rows, the held-out rows and the data's suite."""

    source: str
    snapshot: str  # the training rows (or images), in the workspace
    modality: str
    fingerprint: str
    num_rows: int
    schema: dict[str, Any]
    label: str | None
    suite: str  # the Great Expectations suite that validate checks the output against (staged output)
    holdout: str | None = None  # real rows kept from training, for privacy and utility (workspace)
    holdout_rows: int = 0
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # columns made fresh, text (roles.py)
    protected: dict[str, int] = field(default_factory=dict)  # per column: values protected or clipped
    #: several tables (``dataset.tables``): each table's own reference, parents first
    tables: dict[str, DatasetRef] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRef:
    """A trained model in storage (``uri``: its folder) and how its training went."""

    uri: str
    family: str
    modality: str
    key: str
    fit: dict[str, Any]


@dataclass(frozen=True)
class GeneratedRef:
    """What generation staged: a shard's part file, or (after combining) the run's data file.

    ``data_file`` is None for a shard that had nothing to generate. For images it is the manifest,
    whose ``path`` column is relative to ``image_root``.
    """

    data_file: str | None
    num_samples: int
    seconds: float
    shards: int = 1
    image_root: str | None = None
    #: several tables: rows per table (their files: ``Run.table_file``; ``data_file`` is the last's)
    tables: dict[str, int] = field(default_factory=dict)
    #: per constraint (its label), how many generated rows break it: every row is checked as written
    violations: dict[str, int] = field(default_factory=dict)
    #: rows drawn for the rows kept, where a constraint refuses rows and they are drawn again
    drawn: int = 0


@dataclass(frozen=True)
class QualityVerdict:
    """The validate stage's verdict on a run, and where its HTML report is staged."""

    passed: bool
    failures: list[str]
    metrics: list[dict[str, Any]]
    expectations_evaluated: int
    expectations_failed: int
    report_file: str  # the staged HTML report
    warnings: list[str] = field(default_factory=list)  # misses that publish the run, flagged

    @property
    def status(self) -> str:
        """``passed``, ``passed with warnings`` or ``failed``, as the report and the log say it."""
        return "failed" if not self.passed else ("passed with warnings" if self.warnings else "passed")

    def record(self) -> dict[str, Any]:
        """What a run's manifest keeps of the verdict: everything but the staged address."""
        return {key: value for key, value in asdict(self).items() if key != "report_file"}


@dataclass(frozen=True)
class PublishedRun:
    """Where a published run's output is."""

    run_id: str
    run_date: str
    data_url: str
    manifest_url: str
    num_samples: int
    files: dict[str, int]
    manifest: dict[str, Any]
