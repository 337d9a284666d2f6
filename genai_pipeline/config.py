"""The job spec: what a nightly job reads, trains, generates, checks and publishes.

The pydantic models below declare what a job may say, and nothing else lives here: reading a
job file, overrides and the run date are :mod:`genai_pipeline.jobs`; a family's hyper-parameters
are its own ``Config`` (:mod:`genai_pipeline.models`), built on
:class:`~genai_pipeline.strict.StrictModel` like these.
Every model forbids unknown keys, so a typo fails at load time with one line naming the field,
before anything starts. Secrets in storage options are masked and refused as
:mod:`genai_pipeline.masking` says.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from genai_pipeline.constraints import ConstraintSpec
from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.errors import ConfigError
from genai_pipeline.masking import literal_secret_in, mask_secrets, refuse_url_credentials
from genai_pipeline.relational import ColumnSpec as ColumnSpec  # declared here first: re-exported
from genai_pipeline.relational import Relations, TableSpec, check_renames, renamed
from genai_pipeline.storage import nested_locations, split_url
from genai_pipeline.strict import StrictModel

Modality = Literal["tabular", "image"]
DatasetFormat = Literal["parquet", "csv", "jsonl", "text", "imagefolder", "image_parquet"]


def _one_value(value: Any) -> Any:
    """A condition fixes a column to one value: a list, mapping or null is refused with one message
    naming the field, instead of one message per type the value could have had."""
    if value is None or isinstance(value, list | tuple | dict | set):
        raise ValueError("expected one string, number or boolean")
    return value


ConditionValue = Annotated[str | int | float | bool, BeforeValidator(_one_value)]


class ValueProtectionSpec(StrictModel):
    """Value protection, on by default: no real value that fewer than ``min_rows`` rows hold is
    learned, published or generated (rare categories, the tails of numeric columns)."""

    enabled: bool = Field(
        default=True,
        description="false: models learn and replay every real value (only for data that may be published)",
    )
    min_rows: int = Field(
        default=5,
        ge=2,
        le=100_000,
        description="a category held by fewer rows is never emitted; numeric tails are clipped so that "
        "no value fewer rows hold is learned",
    )
    rare_token: str | None = Field(
        default="_RARE_",
        min_length=1,
        max_length=64,
        description="what a protected category of a text column becomes (null: its most frequent value); "
        "numeric and boolean columns take their most frequent value",
    )


def readable_uri(uri: str) -> str:
    """A dataset URI the pipeline can read: a known built-in, a path or object storage."""
    name = uri.removeprefix("builtin://")
    if uri.startswith("builtin://") and name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset {name!r} (available: {', '.join(sorted(BUILTINS))})")
    if uri.lower().startswith(("http://", "https://", "ftp://")):
        raise ValueError(
            "web URLs are not read (no folder listing, no change stamp for the cache): copy the data "
            "to a local path or object storage (s3://…)"
        )
    return uri


class DatasetSpec(StrictModel):
    """Where the real data lives and how to read it."""

    uri: str | None = Field(
        default=None, min_length=1, description="local path, s3://bucket/key, or builtin://NAME"
    )
    tables: dict[str, TableSpec] | None = Field(
        default=None,
        description="instead of uri: several tables joined by keys, {name: {uri, primary_key, "
        "foreign_keys, order_by, entity, on_orphans}} (see the README's Whole databases)",
    )
    format: DatasetFormat | None = Field(
        default=None,
        description="inferred from the URI: .csv → csv, .jsonl → jsonl, builtins → theirs, anything else "
        "parquet; text: a text dataset (documents in dataset.text_column of a Parquet/CSV/JSONL table, "
        "with an optional label, or a folder ROOT/<label>/*.txt)",
    )
    text_column: str = Field(
        default="text", min_length=1, description="format text: the column of documents (a folder's: text)"
    )
    label: str | None = Field(default=None, description="label/target column")
    image_column: str = "image"
    image_size: tuple[int, int] | None = Field(
        default=None, description="resize images to (height, width); default: most common size"
    )
    channels: Literal[1, 3] | None = Field(
        default=None, description="1 (grayscale) or 3 (RGB); default: what most images are"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)
    cache: bool = Field(
        default=True,
        description="keep what was read beside the output, keyed by the source files' sizes and "
        "ETags/mtimes: an unchanged source is not downloaded and decoded again",
    )
    on_schema_change: Literal["fail", "adapt"] = Field(
        default="fail",
        description="when the data's columns and types (images: size, channels, labels) differ from "
        "the last published run's: fail naming the difference, or go on with a warning (a new model "
        "is trained for the new schema)",
    )
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict,
        description="tables: per column, its type (id, pii, text, category, numeric); undeclared columns "
        "are detected (identifiers and personal data by name and values)",
    )
    value_protection: ValueProtectionSpec = Field(default_factory=ValueProtectionSpec)
    max_mb: int = Field(
        default=8192,
        ge=1,
        le=1_048_576,
        description="the dataset as read into memory (a table's columns, images decoded) may take at "
        "most this many MiB: a larger one fails at ingest, naming this field, before it is read in full",
    )

    _protect = field_validator("storage_options")(mask_secrets)
    _no_credentials = model_validator(mode="before")(refuse_url_credentials)

    @field_validator("uri")
    @classmethod
    def _readable_uri(cls, uri: str | None) -> str | None:
        return None if uri is None else readable_uri(uri)

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        if size is not None and not all(4 <= side <= 1024 for side in size):
            raise ValueError("each side must be between 4 and 1024 pixels")
        return size

    @model_validator(mode="after")
    def _resolve_format(self) -> DatasetSpec:
        if (self.uri is None) == (self.tables is None):
            raise ValueError("give uri (one table or images) or tables (several tables), one of them")
        if self.tables is not None:
            return self._check_tables()
        if self.is_builtin:
            name = self.builtin_name
            builtin = BUILTINS[name]
            if self.format not in (None, builtin.format) and not (
                self.format == "text" and builtin.format == "parquet"
            ):
                raise ValueError(f"builtin://{name} has format {builtin.format!r}")
            object.__setattr__(self, "format", self.format or builtin.format)
            if self.label is None:
                object.__setattr__(self, "label", builtin.label)
        elif self.format is None:
            lowered = (self.uri or "").lower()
            inferred = "csv" if lowered.endswith((".csv", ".csv.gz")) else "parquet"
            if lowered.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
                inferred = "jsonl"
            object.__setattr__(self, "format", inferred)
        if self.format == "text":
            self._declare_text()
        if self.format == "image_parquet" and self.label is None:
            raise ValueError("image_parquet datasets need a label column (dataset.label)")
        if self.columns and self.modality == "image":
            raise ValueError("columns: only tables have columns to declare")
        check_renames(self.columns)
        moved = renamed(self.columns)
        if self.label in moved:
            raise ValueError(f"label: {self.label!r} is renamed {moved[self.label]!r}: name it so")
        declared = next(
            (spec for name, spec in self.columns.items() if (spec.rename or name) == self.label), None
        )
        if declared is not None and (declared.skip or declared.type in ("id", "pii", "text")):
            raise ValueError(
                f"columns.{self.label}: the label column is learned, it cannot be "
                f"{'skipped' if declared.skip else declared.type}"
            )
        return self

    def _declare_text(self) -> None:
        """A text dataset: its documents column is text (declared so, or by the format)."""
        if self.label == self.text_column:
            raise ValueError(f"label: {self.label!r} is the documents column (text_column), not a label")
        declared = self.columns.get(self.text_column)
        if declared is not None and declared.type != "text":
            raise ValueError(f"columns.{self.text_column}: the documents of a text dataset are type text")
        self.columns[self.text_column] = ColumnSpec(type="text")

    def _check_tables(self) -> DatasetSpec:
        """Several tables: the schema checked (:meth:`Relations.of`), and the options that are a
        single table's refused rather than ignored."""
        single = [name for name in ("format", "label", "image_size", "channels") if getattr(self, name)]
        if self.columns:
            single.append("columns")
        if single:
            raise ValueError(f"{', '.join(single)}: for a single table (uri), not with tables")
        try:
            Relations.of(self.tables or {})
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("dataset.")) from None
        for name, table in (self.tables or {}).items():
            try:
                readable_uri(table.uri)
            except ValueError as error:
                raise ValueError(f"tables.{name}.uri: {error}") from None
            builtin = BUILTINS.get(table.uri.removeprefix("builtin://"))
            if table.uri.startswith("builtin://") and builtin is not None and builtin.modality != "tabular":
                raise ValueError(f"tables.{name}.uri: {table.uri} holds images, not a table")
        return self

    @property
    def relations(self) -> Relations | None:
        """The checked schema of a dataset of several tables (None: one table or images)."""
        return None if self.tables is None else Relations.of(self.tables)

    @property
    def source(self) -> str:
        """What the dataset is, for messages: its URI, or its tables."""
        return self.uri if self.uri is not None else f"tables {', '.join(self.tables or {})}"

    def table(self, name: str) -> DatasetSpec:
        """How to read table ``name`` of a dataset of several tables: as a dataset of its own, with
        this one's storage options, cache and size limit, and the columns it leaves out."""
        spec = (self.tables or {})[name]
        return DatasetSpec(
            uri=spec.uri,
            storage_options=self.storage_options,
            cache=self.cache,
            max_mb=self.max_mb,
            value_protection=self.value_protection,
            columns={column: value for column, value in spec.columns.items() if value.skip},
        )

    @property
    def is_builtin(self) -> bool:
        return self.uri is not None and self.uri.startswith("builtin://")

    @property
    def builtin_name(self) -> str:
        return (self.uri or "").removeprefix("builtin://")

    @property
    def modality(self) -> Modality:
        return "image" if self.format in ("imagefolder", "image_parquet") else "tabular"


class ModelSpec(BaseModel):
    """The generative family plus its hyper-parameters. Both are checked against the model
    registry when a job is loaded (``jobs.build_job``): a family is any registered one, so adding
    one takes its module and its ``@register_model``, not an edit here."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    family: str = Field(min_length=1, description="gan | vae | diffusion | autoregressive, or any registered")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PrivacySpec(StrictModel):
    """Differential privacy for training: DP-SGD (opacus) for the networks, DP statistics for what
    the encoder keeps (categories, quantiles, label frequencies), from one (ε, δ) budget."""

    epsilon: float = Field(
        gt=0,
        le=100,
        description="the whole model's budget (encoder statistics and DP-SGD); training stops when "
        "it is spent",
    )
    delta: float | None = Field(
        default=None, gt=0, le=1e-3, description="default: 1e-5, or 1 / (10 × rows) for larger tables"
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0, le=1000, description="per-row gradients are clipped to this"
    )
    noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="default: calibrated so that train.epochs spend the budget; given, training stops at ε",
    )
    statistics_share: float = Field(
        default=0.25,
        ge=0.01,
        le=0.9,
        description="the share of epsilon DP-SGD leaves to the encoder's statistics: its noise is "
        "calibrated to (1 - share) x epsilon alone, and the statistics get the least noise that brings "
        "the two, composed by the accountant, to epsilon",
    )
    accountant: Literal["prv", "rdp"] = Field(
        default="prv", description="opacus's accountant: prv (tighter) or rdp (faster)"
    )


class TrainSpec(StrictModel):
    """How long and where to train; the shared training loop reads these."""

    epochs: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=256, ge=1, le=65_536)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_minutes: float | None = Field(default=None, gt=0, le=24 * 60)
    checkpoint_every: int = Field(default=500, ge=1, description="steps between checkpoints")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, le=10_000, description="epochs without a better validation loss before stopping"
    )
    validation_fraction: float = Field(
        default=0.1, gt=0, le=0.5, description="rows/images held out for the validation loss"
    )
    max_rows: int | None = Field(
        default=None,
        ge=100,
        le=10**10,
        description="train on a sample of at most this many rows (or images), drawn by train.seed: a "
        "bound on training's time and memory; the manifest says how many trained (model.fit.trained_rows)",
    )
    in_memory_rows: int = Field(
        default=500_000,
        ge=100,
        le=10**9,
        description="a table of more rows trains streamed from its staged row groups, a few at a time, "
        "with memory flat in the rows: the encoder and the model's statistics fitted on a sample of "
        "100,000 rows drawn by train.seed and one pass over them all (images, several tables, "
        "train.max_rows and private training hold their rows in memory)",
    )
    compile: bool = Field(default=False, description="torch.compile the networks (CUDA)")
    reuse: Literal["never", "cached", "latest"] = Field(
        default="never",
        description="cached: skip training when a model of the same data, config and code exists; "
        "latest: generate from the last published model, no training",
    )
    privacy: PrivacySpec | None = Field(
        default=None,
        description="differential privacy (DP-SGD); the epochs are what the budget is spread over",
    )

    @model_validator(mode="after")
    def _no_private_early_stopping(self) -> TrainSpec:
        """Choosing the weights by a loss on real held-out rows spends privacy no accountant counts."""
        if self.privacy is not None and self.early_stopping_patience is not None:
            raise ValueError(
                "early_stopping_patience: not with privacy (choosing weights by a loss on real rows "
                "is not covered by the privacy budget)"
            )
        return self


class RunnerSpec(StrictModel):
    """Where the generation shards run: threads in the flow's process, or a Dask cluster."""

    kind: Literal["threads", "dask"] = "threads"
    workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="threads: shards at once (default: the shards, at most the cores); "
        "dask: worker processes of the local cluster (default: the cores)",
    )
    threads_per_worker: int = Field(default=1, ge=1, le=256, description="dask: task threads per worker")
    address: str | None = Field(
        default=None,
        min_length=1,
        description="dask: an existing scheduler, e.g. tcp://scheduler:8786 (default: a local cluster)",
    )

    _no_credentials = model_validator(mode="before")(refuse_url_credentials)

    @model_validator(mode="after")
    def _dask_only(self) -> RunnerSpec:
        if self.kind != "dask" and self.address is not None:
            raise ValueError("address is for kind: dask")
        if self.address is not None and self.workers is not None:
            raise ValueError("workers sizes a local cluster; an existing one (address) has its own")
        return self


#: the most samples one run generates
MAX_SAMPLES = 10_000_000_000


class CompleteSpec(StrictModel):
    """Partial rows for the model to complete: what-if scenarios, rows to fill in."""

    uri: str = Field(min_length=1, description="a table (local path or s3://…; csv, jsonl or parquet)")
    format: Literal["parquet", "csv", "jsonl"] | None = Field(
        default=None, description="default: from the URI"
    )
    rows_per_seed: int = Field(default=1, ge=1, le=100_000, description="output rows drawn for each seed row")

    _no_credentials = model_validator(mode="before")(refuse_url_credentials)

    @field_validator("uri")
    @classmethod
    def _readable_uri(cls, uri: str) -> str:
        return readable_uri(uri)


class FairnessSpec(StrictModel):
    """Statistical parity: the target's distribution the same in every group of the sensitive columns."""

    target: str = Field(min_length=1, description="the outcome, e.g. income")
    sensitive: list[str] = Field(min_length=1, max_length=5, description="e.g. [sex, race]")

    @model_validator(mode="after")
    def _apart(self) -> FairnessSpec:
        if self.target in self.sensitive:
            raise ValueError(f"sensitive: {self.target} is the target")
        if len(set(self.sensitive)) < len(self.sensitive):
            raise ValueError("sensitive: a column is named twice")
        return self


class GenerateSpec(StrictModel):
    """How many samples to generate, in which batches, under which conditions."""

    num_samples: int = Field(default=1000, ge=1, le=MAX_SAMPLES)
    scale: float = Field(
        default=1.0,
        gt=0,
        le=1_000_000,
        description="tables (dataset.tables): rows of each table without a parent table, as a multiple "
        "of its real rows; child tables follow their parents (num_samples is for a single table)",
    )
    batch_size: int = Field(default=4096, ge=1, le=1_000_000)
    shards: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="independent generation tasks, each with its own part file and seed",
    )
    runner: RunnerSpec = Field(default_factory=RunnerSpec, description="where the shards run")
    max_batch_mb: int = Field(
        default=1024,
        ge=16,
        le=1_048_576,
        description="images: a batch larger than this (as float32 + uint8 pixels) is clipped, with a warning",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="sampling arithmetic; auto: bfloat16 where the device computes it natively "
        "(AVX512-BF16/AMX CPUs, recent GPUs) and the family gains from it, else float32",
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="default: train.seed")
    conditions: dict[str, ConditionValue] = Field(
        default_factory=dict, description="fixed values, e.g. {label: 3} or {species: Adelie}"
    )
    per_label: int | dict[ConditionValue, int] | None = Field(
        default=None, description="samples per label: N for every label, or {label: N}; replaces num_samples"
    )
    complete: CompleteSpec | None = Field(
        default=None,
        description="seed rows: a table holding some of the dataset's columns (null where unknown), "
        "each row completed by the model, the values given kept; replaces num_samples",
    )
    impute: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="columns never drawn null: their null is masked out of the model's draws, the rest "
        "of each row drawn given a value (the real column's nulls are still learned from)",
    )
    fairness: FairnessSpec | None = Field(
        default=None,
        description="{target, sensitive}: the target drawn independently of the sensitive columns "
        "(statistical parity), each group and each target value as often as in the real rows",
    )
    rebalance: dict[str, dict[ConditionValue, float]] = Field(
        default_factory=dict,
        description="one categorical column's shares of the rows, e.g. {income: {'>50K': 0.3}}: each "
        "value named gets its share exactly; the other values share the rest as in the real data",
    )
    constraints: list[ConstraintSpec] = Field(
        default_factory=list,
        max_length=100,
        description="rules every generated row follows, enforced by construction: inequality, range, "
        "positive, fixed_combinations, formula, one_of, unique, custom (see README)",
    )

    @field_validator("per_label")
    @classmethod
    def _positive_counts(cls, value: int | dict[Any, int] | None) -> int | dict[Any, int] | None:
        counts = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(count < 0 for count in counts) or (isinstance(value, int) and value < 1):
            raise ValueError("counts must be positive")
        if isinstance(value, dict) and sum(value.values()) < 1:
            raise ValueError("at least one sample must be asked for")
        if sum(counts) > MAX_SAMPLES:
            raise ValueError(f"at most {MAX_SAMPLES:,} samples in all (as num_samples)")
        return value

    @model_validator(mode="after")
    def _one_way_to_count(self) -> GenerateSpec:
        if self.per_label is not None and "num_samples" in self.model_fields_set:
            raise ValueError("give num_samples or per_label, not both")
        if self.rebalance and self.per_label is not None:
            raise ValueError("rebalance: give shares (rebalance) or counts per label (per_label), not both")
        if self.fairness is not None:
            shaped = {"per_label": self.per_label is not None, "rebalance": bool(self.rebalance)}
            if clash := next((name for name, given in shaped.items() if given), None):
                raise ValueError(f"fairness: the plan is the fair one; not with {clash}")
            if fixed := {self.fairness.target, *self.fairness.sensitive} & set(self.conditions):
                raise ValueError(f"fairness: {fixed.pop()} is fixed by conditions")
        if self.complete is not None:
            asked = {
                "num_samples": "num_samples" in self.model_fields_set,
                "per_label": self.per_label is not None,
                "rebalance": bool(self.rebalance),
                "fairness": self.fairness is not None,
            }
            if clash := next((name for name, given in asked.items() if given), None):
                raise ValueError(f"complete: the seed rows say what is drawn; not with {clash}")
        return self

    @field_validator("rebalance")
    @classmethod
    def _shares(cls, value: dict[str, dict[Any, float]]) -> dict[str, dict[Any, float]]:
        if len(value) > 1:
            raise ValueError("one column at a time")
        for column, shares in value.items():
            if not shares:
                raise ValueError(f"{column}: give at least one value's share")
            if bad := next((v for v, share in shares.items() if not 0 < share <= 1), None):
                raise ValueError(f"{column}.{bad}: a share is above 0 and at most 1")
            if sum(shares.values()) > 1 + 1e-9:
                raise ValueError(f"{column}: the shares add up to {sum(shares.values()):g}, more than 1")
        return value


class ExpectationSpec(StrictModel):
    """An extra Great Expectations expectation, by its snake_case type and keyword arguments."""

    type: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    severity: Literal["critical", "warning"] = Field(
        default="critical", description="warning: a failure publishes the run, flagged, instead of failing it"
    )
    check_input: bool = Field(
        default=True, description="also check the real input at ingest (off for synthetic-only checks)"
    )


#: an optional gate threshold: unset, the metric is reported but does not gate the run
OptionalShare = Annotated[float | None, Field(ge=0, le=1)]
#: the metrics a threshold of ``validate`` gates (``min_*`` from below, ``max_*`` from above)
GatedMetric = Literal[
    "column_shapes",
    "pair_trends",
    "new_row_share",
    "dcr_share",
    "utility_ratio",
    "label_consistency",
    "memorised_share",
    "duplicate_share",
    "rare_real_value_share",
    "membership_auc",
    "attribute_gain",
    "epsilon",
    "referential_integrity",
    "text_memorised",
    "text_consistency",
    "constraint_adherence",
    "parity_gap",
]


class ValidateSpec(StrictModel):
    """The quality gate: a run that misses any of these is not published."""

    min_column_shapes: float = Field(
        default=0.75, ge=0, le=1, description="tabular: mean of 1-KS / 1-TVD over columns"
    )
    min_pair_trends: OptionalShare = Field(
        default=None, description="tabular: SDMetrics' pair-trend score (over pairs related in the real data)"
    )
    min_new_rows: OptionalShare = Field(
        default=None, description="tabular: share of synthetic rows that copy no real row (NewRowSynthesis)"
    )
    max_dcr_share: OptionalShare = Field(
        default=0.75,
        description="tabular: share of synthetic rows closer to training than to holdout rows (0.5 is ideal)",
    )
    min_utility_ratio: OptionalShare = Field(
        default=None,
        description="tabular: train-synthetic/train-real score ratio on dataset.label (TSTR/TRTR)",
    )
    min_label_consistency: OptionalShare = Field(
        default=None,
        description="images: share classified as their requested label by a real-data classifier",
    )
    max_memorised_share: OptionalShare = Field(
        default=0.1,
        description="share of generated rows/images closer to training than 98% of real held-out ones are",
    )
    max_duplicate_share: OptionalShare = Field(
        default=0.1, description="images: share of generated images that exactly repeat another one"
    )
    max_rare_real_value_share: OptionalShare = Field(
        default=0.0,
        description="tables: share of rows holding a real value that value protection keeps out (a "
        "category fewer than min_rows rows hold, a clipped outlier, a real identifier); 0 by construction",
    )
    max_membership_auc: OptionalShare = Field(
        default=None,
        description="tables, optional: AUC of a membership-inference attack (DOMIAS-style density ratio) "
        "telling training rows from holdout rows through the output; 0.5 = no signal (always reported)",
    )
    max_attribute_gain: OptionalShare = Field(
        default=None,
        description="tables, optional: how much better an attacker guesses validate.sensitive for training "
        "rows than for holdout rows from the output (always reported)",
    )
    sensitive: str | None = Field(
        default=None,
        description="tables: the column an attribute-inference attacker guesses (default: the label)",
    )
    max_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="the most differential-privacy ε the model may have spent (train.privacy); a model "
        "trained without it fails this gate",
    )
    min_referential_integrity: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="tables: share of synthetic foreign keys that point at a row of the synthetic parent "
        "table (keys are made, so anything less is a defect)",
    )
    max_text_memorised: OptionalShare = Field(
        default=0.01,
        description="text columns: share of synthetic texts sharing a run of 8 words (or the whole, when "
        "shorter) with fewer than dataset.value_protection.min_rows training texts",
    )
    min_text_consistency: OptionalShare = Field(
        default=None,
        description="text columns: how well a classifier trained on the real texts recovers each row's "
        "label (or category) from its synthetic text, over how well it does on held-out real texts",
    )
    min_constraint_adherence: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="generate.constraints: the share of all generated rows that must follow each rule "
        "(they do by construction: a miss means something is broken)",
    )
    max_parity_gap: OptionalShare = Field(
        default=None,
        description="generate.fairness: the most a target value's share may differ between the sensitive "
        "groups of the output (always reported, with the real data's)",
    )
    warn_on: list[GatedMetric] = Field(
        default_factory=lambda: ["dcr_share"],
        description="metrics whose miss publishes the run with a warning instead of failing it",
    )
    null_tolerance: float = Field(
        default=0.1, ge=0, le=1, description="allowed difference of null fractions per column"
    )
    sample_rows: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="rows/images validated at most (images: also clipped to what fits in "
        "generate.max_batch_mb, with a warning)",
    )
    max_pairs: int = Field(
        default=1_000,
        ge=1,
        le=1_000_000,
        description="tables: column pairs scored for pair trends at most (beyond it a seeded sample "
        "of pairs, said in the log); scoring every pair of 1,000 columns takes about half an hour",
    )
    suite: Literal["derived", "saved"] = Field(
        default="derived",
        description="derived: from each night's data; saved: the reviewed expectations/suite.json, "
        "which also checks the real input (written from the data on first use)",
    )
    holdout: float = Field(
        default=0.2,
        ge=0,
        le=0.5,
        description="share of real rows kept from training to judge privacy/utility",
    )
    holdout_max_rows: int = Field(default=5_000, ge=1, description="real rows held out at most")
    classifier_steps: int = Field(
        default=600,
        ge=10,
        le=100_000,
        description="images: training steps of the real-data label classifier and CAS",
    )
    expectations: list[ExpectationSpec] = Field(default_factory=list)


#: which ``validate`` field holds each gated metric's threshold
GATES: dict[str, str] = {
    "column_shapes": "min_column_shapes",
    "pair_trends": "min_pair_trends",
    "new_row_share": "min_new_rows",
    "dcr_share": "max_dcr_share",
    "utility_ratio": "min_utility_ratio",
    "label_consistency": "min_label_consistency",
    "memorised_share": "max_memorised_share",
    "duplicate_share": "max_duplicate_share",
    "rare_real_value_share": "max_rare_real_value_share",
    "membership_auc": "max_membership_auc",
    "attribute_gain": "max_attribute_gain",
    "epsilon": "max_epsilon",
    "referential_integrity": "min_referential_integrity",
    "text_memorised": "max_text_memorised",
    "text_consistency": "min_text_consistency",
    "constraint_adherence": "min_constraint_adherence",
    "parity_gap": "max_parity_gap",
}


class ExportSpec(StrictModel):
    """Where the published output goes, and the private workspace for what is derived from real rows."""

    output: str = Field(default="./output", min_length=1, description="local path or s3://…")
    workspace: str = Field(
        default="./workspace",
        min_length=1,
        description="private: the source cache, snapshots, holdout, models and checkpoints, everything "
        "derived from real rows; local path or s3://…, never inside the output",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)
    lock_timeout_s: float = Field(
        default=600.0,
        ge=0,
        le=86400,
        description="how long a run waits for another run of the same job and date to finish "
        "publishing before it fails (the two are never interleaved)",
    )
    column_names: Literal["original", "renamed"] = Field(
        default="original",
        description="the names of columns renamed in dataset.columns when published: their own "
        "(the warehouse's schema, as readers know it) or the names the job gives them",
    )
    partition_key: str = Field(
        default="run_date",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="the Hive-style partition of the published folders (data/<key>=YYYY-MM-DD/); a "
        "dataset column of that name is refused, so a table with a run_date column of its own "
        "names another one here and keeps its column as data",
    )

    _protect = field_validator("storage_options")(mask_secrets)
    _no_credentials = model_validator(mode="before")(refuse_url_credentials)

    @field_validator("partition_key")
    @classmethod
    def _not_a_subfolder(cls, key: str) -> str:
        """Below the date come ``label=…`` (images) and ``run=…`` (quality): one partition name twice
        in a path is one column twice for a reader of Hive partitions."""
        if key in ("label", "run"):
            raise ValueError(f"{key!r} names a partition below the date (label=…, run=…): choose another")
        return key

    @model_validator(mode="after")
    def _workspace_apart(self) -> ExportSpec:
        """Readers are granted the output: a workspace inside it (or holding it) would grant them
        the real data too."""
        if nested_locations(self.output, self.workspace):
            raise ValueError(
                f"workspace: {self.workspace} and output {self.output} overlap; the workspace holds real "
                "data and must lie apart from what is published"
            )
        return self


class RetriesSpec(StrictModel):
    """Task retries for transient failures (storage, workers); permanent errors are not retried."""

    count: int = Field(default=2, ge=0, le=10)
    delay_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="the first delay; doubled per retry"
    )
    jitter: float = Field(
        default=0.5, ge=0, le=2, description="delays vary by up to this share, so retries do not align"
    )


class NotifySpec(StrictModel):
    """Where a failed run's summary goes, besides the log and the Prefect artifact."""

    webhook_url: SecretStr | None = Field(
        default=None,
        description="POSTed a JSON summary ({text, job, run_id, …}: Slack-compatible) when a run fails; "
        "write ${VAR} to read it from the environment (it is a secret: masked everywhere)",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class JobSpec(StrictModel):
    """One nightly job."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    dataset: DatasetSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    validate_: ValidateSpec = Field(default_factory=ValidateSpec, alias="validate")
    export: ExportSpec = Field(default_factory=ExportSpec)
    retries: RetriesSpec = Field(default_factory=RetriesSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _no_literal_secrets_for_a_remote_cluster(self) -> JobSpec:
        """The job goes to an existing Dask cluster's workers pickled, and a pickle holds a
        ``SecretStr``'s value in clear: there, secrets must be ``${VAR}`` references, set in the
        workers' environment. (A local cluster's workers are this machine's own processes.)"""
        if self.generate.runner.address is None:
            return self
        literal = [
            f"{section}.storage_options"
            for section, options in (
                ("dataset", self.dataset.storage_options),
                ("export", self.export.storage_options),
            )
            if literal_secret_in(options)
        ]
        if literal_secret_in(self.notify.webhook_url):
            literal.append("notify.webhook_url")
        if literal:
            raise ValueError(
                f"generate.runner.address: the job is sent to the cluster's workers pickled, secrets in "
                f"clear; give the secrets of {', '.join(literal)} as ${{VAR}}, set in the workers' "
                "environment"
            )
        if split_url(self.export.workspace)[0] == "file":
            raise ValueError(
                "generate.runner.address: the cluster's workers read the model from export.workspace, "
                f"which is a local path ({self.export.workspace}): give shared storage (s3://…)"
            )
        return self

    @model_validator(mode="after")
    def _constraints_on_a_table(self) -> JobSpec:
        if self.generate.constraints and self.dataset.modality == "image":
            raise ValueError("generate.constraints: rules are about a table's columns, not images")
        if self.generate.complete is not None and self.dataset.modality == "image":
            raise ValueError("generate.complete: seed rows complete a table, not images")
        if self.generate.impute and self.dataset.modality == "image":
            raise ValueError("generate.impute: about a table's columns, not images")
        if self.generate.fairness is not None and self.dataset.modality == "image":
            raise ValueError("generate.fairness: about a table's columns, not images")
        if self.generate.rebalance and self.dataset.modality == "image":
            raise ValueError("generate.rebalance: per label, images take generate.per_label")
        if clash := set(self.generate.rebalance) & set(self.generate.conditions):
            raise ValueError(f"generate.rebalance.{clash.pop()}: the column is fixed by generate.conditions")
        return self

    @model_validator(mode="after")
    def _several_tables(self) -> JobSpec:
        """What a dataset of several tables cannot do yet, refused by the field that asks for it."""
        if self.dataset.tables is None:
            return self
        refused = {
            "train.privacy": (
                self.train.privacy is not None,
                "a parent's row reaches its children's training too, so a per-table budget would not "
                "bound what one entity reveals",
            ),
            "generate.num_samples": (
                "num_samples" in self.generate.model_fields_set,
                "tables are sized by generate.scale",
            ),
            "generate.per_label": (self.generate.per_label is not None, "tables have no label"),
            "train.max_rows": (
                self.train.max_rows is not None,
                "a sample of rows would cut parents from their children; not for several tables yet",
            ),
            "generate.conditions": (bool(self.generate.conditions), "not for several tables yet"),
            "generate.constraints": (
                bool(self.generate.constraints),
                "each table's rules are its own: dataset.tables.<name>.constraints",
            ),
            "generate.rebalance": (bool(self.generate.rebalance), "not for several tables yet"),
            "generate.fairness": (self.generate.fairness is not None, "not for several tables yet"),
            "generate.impute": (bool(self.generate.impute), "not for several tables yet"),
            "generate.complete": (self.generate.complete is not None, "not for several tables yet"),
            "generate.shards": (
                self.generate.shards > 1,
                "several tables are generated in one stream, parents before their children",
            ),
            "validate.sensitive": (self.validate_.sensitive is not None, "not for several tables yet"),
            "validate.suite": (self.validate_.suite == "saved", "not for several tables yet"),
            "validate.expectations": (
                bool(self.validate_.expectations),
                "not for several tables yet (an expectation names no table)",
            ),
            "validate.min_utility_ratio": (
                self.validate_.min_utility_ratio is not None,
                "tables have no label to predict",
            ),
        }
        for field_name, (asked, why) in refused.items():
            if asked:
                raise ValueError(f"{field_name}: not with dataset.tables ({why})")
        return self

    @property
    def generate_seed(self) -> int:
        return self.train.seed if self.generate.seed is None else self.generate.seed

    def public_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data with every literal secret masked (for manifests and logs)."""
        return self.model_dump(mode="json", by_alias=True)
