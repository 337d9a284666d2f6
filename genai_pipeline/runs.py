"""A run: its identity and the output layout every stage writes into.

Output contract (what analysts and CI rely on), under ``{output}/{job}/``: synthetic data,
aggregate quality results and manifests, nothing real::

    data/run_date=YYYY-MM-DD/part-00000.parquet     rows, or the image manifest (one file a run)
    data/<table>/run_date=…/part-00000.parquet      several tables (dataset.tables): one file each
    images/run_date=…/label=…/<sample_id>.png       images (labels percent-encoded; sample ids name the run)
    quality/run_date=…/run=<run_id>/{metrics.parquet, report.html, expectations.json, suite.json, data_docs/}
    _runs/<run_id>.json                             manifest, written last
    _staging/<run_id>/…                             invisible to readers ('_' prefix): synthetic only

``run_date`` is the default of ``export.partition_key``: a table with a column of that name keeps
it as data when the job names another key.

Everything derived from real rows lives in the private workspace, ``{workspace}/{job}/``, which
readers of the output are never granted::

    datasets/source-<stamp>.parquet                 the source as last read (dataset.cache)
    runs/<run_id>/input/{dataset,holdout}.parquet   the run's snapshot of the real rows, and its holdout
    runs/<run_id>/input_expectations.json           the real input checked against the job's suite
    models/<key>/{model.json, weights.safetensors}  saved models (and their checkpoints while training)
    models/classifier-<key>/…                       the image metrics' classifier, per dataset
    models/latest.json                              the last published run's model
    expectations/suite.json                         the job's reviewed suite (validate.suite: saved)

A run writes below ``_staging/<run_id>/`` with the same relative layout, is validated there, and
is promoted by :mod:`genai_pipeline.publishing`; readers of ``data/`` see the previous run or this
one, never a mix, a partial run or a failed one. Its ``runs/<run_id>/`` in the workspace goes when
it ends, published or failed.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from genai_pipeline.config import JobSpec
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.relational import renamed
from genai_pipeline.storage import Storage

#: what a run's date is called in messages and lock files, and the default partition key of the
#: published folders (``export.partition_key``: data/run_date=…/)
PARTITION_KEY = "run_date"
#: the model of the last published run, for ``train.reuse: latest`` (in the workspace)
LATEST_MODEL = "models/latest.json"
#: the Parquet footer key naming the run that wrote a data file (lineage: see its manifest)
RUN_ID_KEY = b"genai_pipeline.run_id"
#: the job's reviewed suite (``validate.suite: saved``), in the workspace
SAVED_SUITE = "expectations/suite.json"
#: where ingest keeps what it last read from a (non-built-in) source, by the source's stamp (workspace)
SOURCE_CACHE = "datasets"
#: where a run keeps what it derives from real rows while it runs (workspace)
PRIVATE_RUNS = "runs"


#: how a run id begins: the run's start time (UTC)
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"


def new_run_id() -> str:
    """Sortable by start time, unique across machines."""
    return dt.datetime.now(dt.UTC).strftime(RUN_ID_TIME) + "-" + secrets.token_hex(3)


#: what a run id may be (it names the run's staging folder and manifest): letters, digits, ``_ . -``
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_run_id(run_id: str, *, field: str = "run_id") -> str:
    """A run id that is safe as one path segment, or ConfigError naming ``field``: it comes from
    flow parameters (``trigger --param run_id=…``) too, and ``../..`` would name the output root."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(
            f"{field}: {run_id!r} is not a run id (letters, digits and _ . - only, at most 128, no '..')"
        )
    return run_id


def check_run_date(run_date: str, *, field: str = "run_date") -> str:
    """A run date as YYYY-MM-DD (it names the partition of every published folder)."""
    try:
        if isinstance(run_date, str) and dt.date.fromisoformat(run_date).isoformat() == run_date:
            return run_date
    except ValueError:
        pass
    raise ConfigError(f"{field}: expected YYYY-MM-DD (got {run_date!r})")


def run_started(run_id: str) -> dt.datetime | None:
    """When the run of a :func:`new_run_id` id started; None for an id made otherwise."""
    try:
        return dt.datetime.strptime(run_id.split("-")[0], RUN_ID_TIME).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def encode_partition_value(value: str) -> str:
    """A value safe as one path segment: ``/``, ``..``, spaces and unicode are percent-encoded."""
    encoded = urllib.parse.quote(value, safe="")
    return encoded.replace(".", "%2E") if set(encoded) <= {"."} else encoded


@dataclass(frozen=True)
class Run:
    """One execution of a job for one run date."""

    job: JobSpec
    run_date: str
    run_id: str = field(default_factory=new_run_id)

    def __post_init__(self) -> None:
        """Both identifiers become paths: checked here, where every run enters."""
        check_run_id(self.run_id)
        check_run_date(self.run_date)

    @property
    def root_url(self) -> str:
        return f"{self.job.export.output.rstrip('/')}/{self.job.name}"

    def storage(self) -> Storage:
        """The job's output root (fsspec caches filesystems, so this is cheap)."""
        return Storage(self.root_url, self.job.export.storage_options)

    @property
    def workspace_url(self) -> str:
        return f"{self.job.export.workspace.rstrip('/')}/{self.job.name}"

    def workspace(self) -> Storage:
        """The job's private workspace: everything derived from real rows (see the module docstring)."""
        return Storage(self.workspace_url, self.job.export.storage_options)

    @property
    def private_area(self) -> str:
        """The run's own folder in the workspace (real rows: snapshots, holdout, input checks)."""
        return f"{PRIVATE_RUNS}/{self.run_id}"

    def private(self, rel: str) -> str:
        return f"{self.private_area}/{rel}"

    @property
    def staging(self) -> str:
        return f"_staging/{self.run_id}"

    def staged(self, rel: str) -> str:
        return f"{self.staging}/{rel}"

    def unstaged(self, staged: str) -> str:
        """Where a staged file of this run is published (its path with the staging prefix off)."""
        return staged.removeprefix(f"{self.staging}/")

    def partition(self, kind: str) -> str:
        """``data``, ``images`` or ``quality`` folder of this run's date (``export.partition_key``)."""
        return f"{kind}/{self.job.export.partition_key}={self.run_date}"

    def shard_part(self, shard: int) -> str:
        """The staged file one generation shard writes (combined into :attr:`data_file` afterwards)."""
        return f"shards/part-{shard:05d}.parquet"

    @property
    def tables(self) -> list[str]:
        """The tables a run of several tables publishes, parents first (empty: one table or images)."""
        relations = self.job.dataset.relations
        return [] if relations is None else relations.order

    def table_file(self, table: str) -> str:
        """The data file of one table of several: ``data/<table>/run_date=…/part-00000.parquet``."""
        return f"data/{table}/{self.job.export.partition_key}={self.run_date}/part-00000.parquet"

    def published_names(self, table: str | None = None) -> dict[str, str]:
        """The job's name → the published one, of each column renamed (``dataset.columns``, or
        ``table``'s): published under its own name again unless ``export.column_names: renamed``."""
        if self.job.export.column_names == "renamed":
            return {}
        dataset = self.job.dataset
        columns = dataset.columns if table is None else (dataset.tables or {})[table].columns
        return {new: name for name, new in renamed(columns).items()}

    def job_names(self, table: str | None = None) -> dict[str, str]:
        """The published name → the job's, to read the output back as the job names it."""
        return {published: name for name, published in self.published_names(table).items()}

    def check_columns(self, columns: Sequence[str], where: str, table: str | None = None) -> None:
        """A published column named like the output's partition key would be shadowed by it: a
        reader of ``data/<key>=…/`` sees the run's date in its place. Refused naming the way out."""
        key = self.job.export.partition_key
        names = self.published_names(table)
        if key in (names.get(column, column) for column in columns):
            raise DatasetError(
                f"{where}: column {key!r} has the name of the output's partition key (data/{key}=…/), "
                "which readers would see in its place: set export.partition_key to another name"
            )

    @property
    def data_file(self) -> str:
        """The run's one data file: replaced in a single atomic step, so a reader of ``data/`` never
        sees parts of two runs (a partition of several files cannot be swapped at once on S3). Of
        several tables, the last one's: it is switched in last, so its footer names the run whose
        tables are all live (the publish's mark, see :mod:`genai_pipeline.publishing`)."""
        if self.tables:
            return self.table_file(self.tables[-1])
        return f"{self.partition('data')}/part-00000.parquet"

    @property
    def data_location(self) -> str:
        """Where readers find the run's data: its date's partition, or (several tables) ``data/``,
        with a folder per table."""
        return "data" if self.tables else self.partition("data")

    @property
    def published_partitions(self) -> list[str]:
        """Every folder of this run's date that publishing fills: the data (one per table), the
        images and the quality results."""
        data = [posixpath.dirname(self.table_file(t)) for t in self.tables] or [self.partition("data")]
        return [*data, self.partition("images"), self.partition("quality")]

    @property
    def quality(self) -> str:
        """The run's own quality folder, ``quality/run_date=…/run=<run id>``: named by the run, so
        publishing it shows nothing of this run to a reader led by the live data file until the
        data switch makes this run the live one."""
        return f"{self.partition('quality')}/run={self.run_id}"

    @property
    def report_file(self) -> str:
        """The run's HTML quality report (in staging until published)."""
        return f"{self.quality}/report.html"

    @property
    def suite_file(self) -> str:
        """The data-derived suite the run checks its output against (staged, then published)."""
        return f"{self.quality}/suite.json"

    @property
    def manifest(self) -> str:
        return f"_runs/{self.run_id}.json"
