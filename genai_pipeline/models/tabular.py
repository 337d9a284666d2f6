"""What every tabular model shares: the encoder, conditions on any columns, and the sampling stream.

Conditions come in two kinds, both met exactly and without rejection sampling:

- **The label column** (``dataset.label``, when categorical) conditions every model: models learn
  from its category indices and sample rows for a requested value; unconditioned sampling draws
  labels with their real frequencies (given the other conditioned columns, see :class:`LabelPrior`).
- **Any other columns** are *revealed* to the model. In training, a share ``reveal_rate`` of rows
  show the model a random subset of their own columns (:class:`Reveal`), so it learns the
  distribution of the rest given any subset; at sampling the requested columns are revealed. A
  row that reveals nothing is the unconditional model, so plain sampling is unchanged.

The requested values are then written into the decoded rows in the column's own type, so a
condition holds exactly even where a model's decoding is approximate (a numeric drawn in its bin).
:class:`TabularSynthesizer` holds the encoder, the label prior and the sampling stream; a family
implements training, its networks and ``render(label, known, size, generator)``, which returns an
encoded matrix (one-hot for categories).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field
from scipy.special import ndtri
from torch import nn

from genai_pipeline.columns import dense, encoded_as, value_type
from genai_pipeline.config import TrainSpec
from genai_pipeline.constraints import MAX_DRAWS, Constraints
from genai_pipeline.datasets.base import Dataset, TabularData
from genai_pipeline.encoders.tabular import ColumnCodec, RowStream, TableEncoder, dp_histograms
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.models.base import Conditions, ModelConfig, Synthesizer, require_condition_values
from genai_pipeline.models.text import TextColumns, TextModelConfig
from genai_pipeline.privacy.dp import StatisticsBudget, dp_counts, noise_floor
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    PrivacyPlan,
    StreamedRows,
    Tensors,
    batched_indices,
    seed_everything,
)

#: On a CPU, rows are rendered in chunks whose activations stay in cache: about twice as fast as one
#: pass over 50,000 rows, and peak memory no longer grows with the batch. A GPU takes the whole batch.
CPU_CHUNK_ROWS = 4096
#: A numeric column's evidence about the label is counted in this many equal-probability bins.
PRIOR_BINS = 16
#: with DP, the co-occurrence tables take this many times the statistics' noise: they only weigh
#: a label drawn for known columns (:meth:`LabelPrior.given`), and at a ninth of a histogram each
#: in the budget they leave the distributions the model is decoded with less noise
COOCCURRENCE_NOISE = 3.0
#: the constant column a table that has nothing else to learn is given (:func:`_padded`)
PADDING = "__constant__"
#: The width of one hidden layer: a zero or negative width would build a network that learns nothing.
Width = Annotated[int, Field(ge=1, le=4096)]


class TabularModelConfig(ModelConfig):
    """Hyper-parameters every tabular family has."""

    max_categories: int = Field(default=1000, ge=2, le=100_000)
    reveal_rate: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="share of training rows that show the model some of their columns, so that any "
        "columns can be conditioned on (0: the label column only)",
    )
    text: TextModelConfig = Field(
        default_factory=TextModelConfig,
        description="the language model of the text columns (dataset.columns type text, or detected)",
    )


@dataclass(frozen=True)
class Known:
    """Data columns fixed by a request: a matrix row holding their values (or a row for each row
    sampled, :meth:`TabularSynthesizer.complete`), and which columns they are (a mask over
    :attr:`TableEncoder.span_columns`); and the matrix columns no row may take (``banned``: the
    null of a column ``generate.impute`` names, :meth:`TableEncoder.null_columns`)."""

    row: torch.Tensor
    columns: torch.Tensor
    banned: torch.Tensor | None = None


def matrix_tensors(x: np.ndarray, cond: np.ndarray | None) -> Tensors:
    """The encoded rows and their labels (when the job has a label) as tensors: what a family
    that learns the encoded matrix itself trains on."""
    return (torch.from_numpy(x),) + ((torch.from_numpy(cond),) if cond is not None else ())


def column_tokens(codec: ColumnCodec, block: np.ndarray) -> np.ndarray:
    """A coarse token per row of one column's encoded block: its category, or its numeric bin (the
    last token meaning null); what :class:`LabelPrior` counts."""
    if codec.kind == "categorical":
        return block.argmax(axis=1)
    edges = ndtri(np.linspace(0, 1, PRIOR_BINS + 1)[1:-1])
    bins = np.searchsorted(edges, block[:, 0])
    return np.where(block[:, 2] > block[:, 1], PRIOR_BINS, bins) if codec.has_nulls else bins


@dataclass
class LabelPrior:
    """The label's real frequencies, and how often it co-occurs with each column's tokens.

    A model is always given a label. When a request fixes other columns but not the label, the
    label is drawn from its frequency given those values: exact for one column, naive Bayes
    (evidence multiplied, with half-count smoothing) for several.
    """

    probs: list[float]
    counts: dict[str, list[list[float]]]  # column → label × token co-occurrence counts

    @classmethod
    def fit(
        cls, encoder: TableEncoder, x: np.ndarray, cond: np.ndarray | None, dp: StatisticsBudget | None = None
    ) -> LabelPrior:
        """From the encoded rows; with ``dp``, one DP release of all the counts in two halves of its
        ε: the label's frequencies (a row adds one to one count: L1 sensitivity 1), and the
        co-occurrence tables (one to each column's table: sensitivity the number of columns).
        Released together at the tables' sensitivity, the frequencies labels are drawn from took
        noise of that many times the scale: at ε = 1 on Adult, 1.2% of the rows got the protected
        label. A label count below the noise floor (:func:`noise_floor`) is taken as empty."""
        if cond is None:
            return cls([], {})
        labels = len(encoder.condition_values)
        frequencies = np.bincount(cond, minlength=labels).astype(np.float64)
        tables = {}
        for codec, offset in encoder.span_columns:
            tokens = column_tokens(codec, x[:, offset : offset + sum(s.size for s in codec.spans)])
            size = PRIOR_BINS + 1 if codec.kind == "continuous" else len(codec.categories or [])
            table = np.zeros((labels, max(size, int(tokens.max(initial=0)) + 1) + 1))
            np.add.at(table, (cond, tokens), 1)
            tables[codec.name] = table
        if dp is not None:
            frequencies = dp_counts(frequencies, dp)
            frequencies = np.where(frequencies < noise_floor(labels, dp.sigma), 0.0, frequencies) + 1e-9
            tables = {name: dp_counts(table, dp, scale=COOCCURRENCE_NOISE) for name, table in tables.items()}
        probs = frequencies / frequencies.sum()
        return cls(probs.tolist(), {name: table.tolist() for name, table in tables.items()})

    def given(self, encoder: TableEncoder, row: np.ndarray, known: np.ndarray) -> list[float]:
        """The label's distribution given known values of other columns: ``row`` and ``known`` as
        :meth:`TableEncoder.encode_known` returns them."""
        if not known.any():
            return self.probs
        return self.given_rows(encoder, row[None], known)[0].tolist()

    def given_rows(self, encoder: TableEncoder, rows: np.ndarray, known: np.ndarray) -> np.ndarray:
        """:meth:`given` for each of ``rows`` (an encoded matrix) at once: ``(rows, labels)``."""
        log_probs = np.tile(np.log(np.asarray(self.probs)), (len(rows), 1))
        for (codec, offset), is_known in zip(encoder.span_columns, known, strict=True):
            if is_known:
                tokens = column_tokens(codec, rows[:, offset : offset + sum(s.size for s in codec.spans)])
                table = np.asarray(self.counts[codec.name]) + 0.5
                tokens = np.minimum(tokens.astype(np.int64), table.shape[1] - 1)
                log_probs += np.log(table[:, tokens] / table.sum(axis=1, keepdims=True)).T
        probs = np.exp(log_probs - log_probs.max(axis=1, keepdims=True))
        return probs / probs.sum(axis=1, keepdims=True)

    def to_state(self) -> dict[str, Any]:
        return {"probs": self.probs, "counts": self.counts}


class Reveal:
    """Known columns as a network input: the encoded values of the revealed columns and a mask.

    ``inputs(x, mask)`` is ``[x × mask spread over each column's features, mask]``: a column whose
    value is zero and a hidden column stay distinguishable. :meth:`training_mask` draws, for a share
    ``rate`` of rows, a subset of columns of a random size, so every subset is seen in training.
    """

    def __init__(self, encoder: TableEncoder, given: Sequence[str] = ()):
        sizes = [sum(span.size for span in codec.spans) for codec, _ in encoder.span_columns]
        self.columns = len(sizes)
        self.size = encoder.width + self.columns
        self._feature_column = torch.repeat_interleave(
            torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long)
        )
        #: columns revealed in every training row: what each sampled row is given (a child's context)
        self.always = torch.tensor(
            [codec.name in given for codec, _ in encoder.span_columns], dtype=torch.bool
        )

    def training_mask(
        self, rows: int, rate: float, device: torch.device, *, given: bool = True
    ) -> torch.Tensor:
        """Random subsets for a share ``rate`` of rows, and (``given``) the given columns always."""
        share = torch.rand(rows, 1, device=device) * (torch.rand(rows, 1, device=device) < rate)
        random = torch.rand(rows, self.columns, device=device) < share
        return random | self.always.to(device) if given else random

    def features(self, mask: torch.Tensor) -> torch.Tensor:
        """A column mask spread over the matrix features of each column."""
        return mask[:, self._feature_column.to(mask.device)]

    def inputs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * self.features(mask).to(x.dtype), mask.to(x.dtype)], dim=1)

    def known_inputs(self, known: Known | None, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The input for ``rows`` sampled rows: zeros (nothing revealed) or the request's columns."""
        if known is None:
            return like.new_zeros((rows, self.size))
        return self.inputs(known.row.to(like.dtype).expand(rows, -1), known.columns.expand(rows, -1))


def _fit_codecs(
    data: TabularData, table: pa.Table, max_categories: int, key: int, dp: StatisticsBudget | None = None
) -> TableEncoder:
    """The encoder of ``table`` (all or some of ``data``'s columns) under ``data``'s roles and value
    protection (and with ``dp``, as DP releases)."""
    try:
        return TableEncoder.fit(
            table,
            condition=data.label,
            max_categories=max_categories,
            roles=data.roles,
            protection=data.protection,
            key=key,
            unseen=data.unseen,
            dp=dp,
            facts=data.facts,
        )
    except ValueError as exc:
        raise DatasetError(f"dataset: {exc}") from None


def _histograms(data: TabularData, per_column: int) -> tuple[float, int]:
    """``(histograms, category sets)`` a model of a table releases with DP at most: the encoder's
    (:func:`dp_histograms`), the label prior's (the label's frequencies and a co-occurrence table
    per learned column, each at :data:`COOCCURRENCE_NOISE` times the noise) and ``per_column``
    more for each learned column (the family's)."""
    roles = data.roles if data.roles is not None else column_roles(data.table, {}, data.label)
    histograms, selections = dp_histograms(data.table.schema, roles)
    learned = sum(not (name in roles and roles[name].fresh) for name in data.table.column_names)
    prior = 1 + (learned - 1) / COOCCURRENCE_NOISE**2 if data.label is not None else 0
    return histograms + prior + per_column * learned, selections


def fit_encoder(
    data: Dataset, *, max_categories: int, model: str, key: int = 0, dp: StatisticsBudget | None = None
) -> tuple[TableEncoder, np.ndarray, np.ndarray | None]:
    """``(encoder, x, cond)`` for a table: its matrix and label indices."""
    if not isinstance(data, TabularData):
        raise DatasetError(f"the {model} needs a table")
    encoder = _fit_codecs(data, data.table, max_categories, key, dp)
    x, cond = encoder.encode(data.table)
    return encoder, x, cond


def label_key(encoder: TableEncoder) -> str | None:
    """The column conditioned on by index: the label, when it is categorical."""
    return encoder.condition if encoder.condition_codec is not None else None


def _require_column(key: str, columns: list[str]) -> None:
    if key not in columns:
        raise ConfigError(f"generate.conditions.{key}: no such column (columns: {', '.join(columns)})")


def check_conditions(encoder: TableEncoder, conditions: Conditions, model: str, reveal_rate: float) -> None:
    """Conditions may fix the label column and, when the model learned to, any other columns."""
    columns = [field.name for field in encoder.schema]
    fresh = {codec.name: codec for codec in encoder.codecs if codec.fresh is not None}
    for key, value in conditions.items():
        if key == label_key(encoder):
            require_condition_values(key, value, encoder.condition_values)
            continue
        _require_column(key, columns)
        if key in fresh:
            raise ConfigError(
                f"generate.conditions.{key}: the column is generated fresh (an identifier or personal "
                "data), never from a value: it cannot be fixed"
            )
        if reveal_rate == 0:
            raise ConfigError(
                f"generate.conditions.{key}: the {model} was trained with reveal_rate 0 and can condition "
                f"on the label column ({label_key(encoder) or 'none set: dataset.label'}) only"
            )
        try:
            encoder.value_array(key, value)
        except ValueError as exc:
            raise ConfigError(f"generate.conditions.{key}: {exc}") from None


def check_seed_columns(encoder: TableEncoder, columns: Sequence[str]) -> None:
    """Seed rows may give the learned columns, not those made fresh or written by a text model."""
    names = [field.name for field in encoder.schema]
    kinds = {codec.name: codec.kind for codec in encoder.codecs}
    for name in columns:
        if name not in names:
            raise DatasetError(
                f"generate.complete: the seed rows' column {name!r} is not the dataset's ({', '.join(names)})"
            )
        if kinds.get(name) in ("fresh", "text"):
            what = "made fresh (an identifier or personal data)" if kinds[name] == "fresh" else "text"
            raise DatasetError(f"generate.complete: {name} is {what}: the seed rows cannot give it")


def _given(table: pa.Table, seeds: pa.Table) -> pa.Table:
    """``table`` with the values ``seeds`` give (not null) as they are, in the columns' types."""
    for name in seeds.column_names:
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        wanted = dense(seeds.column(name)).cast(value_type(field.type))
        kept = pc.if_else(wanted.is_valid(), wanted, dense(table.column(index)))
        table = table.set_column(index, field, encoded_as(kept, field.type))
    return table


def _padded(data: Dataset) -> Dataset:
    """``data`` with a constant column (:data:`PADDING`) when nothing but the label is learned value
    by value (a text dataset: label and documents; a lookup table: its key and a name): a family
    needs a column to learn, and this one costs nothing. Sampling leaves it out."""
    if not isinstance(data, TabularData):
        return data
    roles = data.roles if data.roles is not None else column_roles(data.table, {}, data.label)
    learned = [
        name
        for name in data.table.column_names
        if name != data.label and not (name in roles and roles[name].unlearned)
    ]
    if learned:
        return data
    constant = pa.array(np.zeros(data.num_rows, np.int8))
    return replace(data, table=data.table.append_column(PADDING, constant), roles=roles)


def _unpadded(table: pa.Table) -> pa.Table:
    return table.drop_columns([PADDING]) if PADDING in table.column_names else table


class TabularSynthesizer(Synthesizer):
    """Encoder, label prior, conditions and the sampling stream; a family adds its networks."""

    modality = "tabular"
    name: ClassVar[str]  # in messages: "tabular VAE"
    config: TabularModelConfig
    encoder: TableEncoder
    prior: LabelPrior
    reveal: Reveal
    #: the differential-privacy budget of the training under way (None: no ``train.privacy``)
    plan: PrivacyPlan | None = None
    #: histograms a family releases per learned column besides the encoder's and the label prior's
    #: (with privacy)
    dp_histograms_per_column: ClassVar[int] = 0
    #: whether :meth:`complete` can give each row its own known columns (``render`` takes a
    #: :class:`Known` with a row per sampled row)
    completes_rows: ClassVar[bool] = False
    #: the columns every row is given at sampling (``TabularData.given``), revealed in all training
    given: list[str]
    #: the text columns' language models, which write them given the rest of each row
    text: TextColumns
    #: how each text column's model trained (FitReport dicts, with held-out perplexity)
    text_reports: dict[str, dict[str, Any]]
    #: the rules every sampled row follows, fitted on the training rows
    constraints: Constraints

    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        """The family's training (:meth:`fit_family`) on the table as the job's constraints
        rewrite it; the text columns' models are trained in :meth:`prepare` and reported with it."""
        self.text_reports = {}
        streamed = isinstance(data, TabularData) and data.stream is not None
        if streamed and (not self.streams or train.privacy is not None):
            raise ConfigError(f"train.in_memory_rows: the {self.name} trains on rows held in memory here")
        data = self._constrained(data, private=train.privacy is not None)
        if isinstance(data, TabularData) and data.stream is not None:
            roles = data.roles if data.roles is not None else column_roles(data.table, {}, data.label)
            data = replace(data, facts=data.stream.facts(roles))  # the pass over every row
        report = self.fit_family(_padded(data), train, checkpoints)
        report.text = self.text_reports or None
        return report

    def _constrained(self, data: Dataset, *, private: bool = False) -> Dataset:
        """``data`` as the model learns it under its constraints (fitted on its rows here: on
        every row of a table streamed from row groups, whose reads they then rewrite)."""
        self.constraints = Constraints(data.constraints if isinstance(data, TabularData) else ())
        if not isinstance(data, TabularData) or not self.constraints:
            return data
        roles = data.roles if data.roles is not None else column_roles(data.table, {}, data.label)
        stream = data.stream
        self.constraints.fit(
            data.table,
            roles,
            data.protection.threshold,
            data.label,
            private=private,
            every=stream.each if stream is not None else None,
        )
        return replace(
            data,
            table=self.constraints.forward(data.table),
            roles=self.constraints.roles(roles),
            constraints=(),
            stream=stream.mapped(self.constraints.forward) if stream is not None else None,
        )

    @abstractmethod
    def fit_family(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        """Learn the table (its text columns aside) with the shared training loop."""

    @abstractmethod
    def family_networks(self) -> dict[str, nn.Module]:
        """The family's modules (the text columns' are added by :meth:`networks`)."""

    def networks(self) -> dict[str, nn.Module]:
        return {**self.family_networks(), **self.text.networks()}

    def prepare(
        self,
        data: Dataset,
        train: TrainSpec,
        family_state: Callable[[TableEncoder, np.ndarray], dict[str, Any]] | None = None,
        checkpoints: CheckpointStore | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit the encoder and label prior (and the family's state, from the encoded matrix), build
        the networks; ``(x, cond)`` to train on. With ``train.privacy`` the encoder and the prior
        are DP releases from the model's budget (:attr:`plan`), which the family trains within;
        a resumed private training takes them from its checkpoint instead."""
        if not isinstance(data, TabularData):
            raise DatasetError(f"the {self.name} needs a table")
        histograms, selections = _histograms(data, self.dp_histograms_per_column)
        self.plan = PrivacyPlan.of(train, rows=data.num_rows, histograms=histograms, selections=selections)
        saved = self.plan.resumed(checkpoints) if self.plan is not None else None
        if self.plan is not None and saved is not None:
            seed_everything(train.seed)
            self.restore(saved)
            self.plan.released = saved  # and into the checkpoints to come: a second kill resumes alike
            x, cond = self.encoder.encode(data.table)
            return x, cond
        dp = self.plan.statistics if self.plan is not None else None
        encoder, x, cond = fit_encoder(
            data, max_categories=self.config.max_categories, model=self.name, key=train.seed, dp=dp
        )
        prior = LabelPrior.fit(encoder, x, cond, dp)
        state = family_state(encoder, x) if family_state else {}
        seed_everything(train.seed)  # networks are built here, before fit_loop: seed their initial weights
        self.restore(
            {
                "encoder": encoder.to_state(),
                "label_prior": prior.to_state(),
                "given": list(data.given),
                "constraints": self.constraints.to_state(),
                **state,
            }
        )
        if self.plan is not None:
            self.plan.released = self.fitted_state()
        self._fit_text(data, x, cond, train, checkpoints)
        return x, cond

    def _fit_text(
        self,
        data: TabularData,
        x: np.ndarray,
        cond: np.ndarray | None,
        train: TrainSpec,
        checkpoints: CheckpointStore | None,
    ) -> None:
        """Train the text columns' language models on the rows' texts given their encoded rows."""
        names = [codec.name for codec in self.encoder.codecs if codec.kind == "text"]
        if not names:
            return
        if self.plan is not None:
            raise ConfigError(
                f"train.privacy: text columns ({', '.join(names)}) are not trained with differential "
                "privacy yet; declare them dataset.columns: {type: category}, or {skip: true} to leave out"
            )
        self.text, self.text_reports = TextColumns.fit(
            data.table,
            names,
            x,
            cond,
            self.labels,
            self.config.text,
            train,
            self.device,
            data.protection.threshold,
            checkpoints,
        )

    def training_rows(
        self,
        data: Dataset,
        train: TrainSpec,
        tensors: Callable[[np.ndarray, np.ndarray | None], Tensors],
        held: Tensors,
        *,
        holds_out: bool = True,
    ) -> Tensors | StreamedRows:
        """What the family trains on: ``held``, ``tensors`` of the rows ``data`` holds, or where
        those are a sample of rows read a few row groups at a time (``data.stream``,
        ``train.in_memory_rows``), all the rows made ``tensors`` as they are read: through the
        model's encoder, as :meth:`prepare` made the sample's. ``holds_out``: whether the family
        measures a validation loss, for which early stopping holds rows out."""
        if not isinstance(data, TabularData) or data.stream is None:
            return held
        encoder = self.encoder

        def made(table: pa.Table) -> Tensors:
            if PADDING in encoder.schema.names:
                table = table.append_column(PADDING, pa.array(np.zeros(table.num_rows, np.int8)))
            return tensors(*encoder.encode(table))

        stops_early = holds_out and train.early_stopping_patience is not None
        holdout = train.validation_fraction if stops_early else None
        return StreamedRows(data.stream, made, seed=train.seed, holdout=holdout)

    @property
    def labels(self) -> int:
        """How many label values the networks are conditioned on (0: no label)."""
        return len(self.prior.probs)

    def check_conditions(self, conditions: Conditions) -> None:
        check_conditions(self.encoder, conditions, self.name, self.config.reveal_rate)

    @classmethod
    def check_plan(cls, data: Dataset, config: ModelConfig, plan: Sequence[Conditions]) -> None:
        """The plan's conditions, checked as the trained model will check them, by the codecs it
        will fit: only the conditioned columns' and the label's (each column's codec is fitted
        on that column alone, so they are the same as the model's), not a whole encoder."""
        if not isinstance(data, TabularData):
            raise DatasetError(f"the {cls.name} needs a table")
        if not isinstance(config, TabularModelConfig):
            raise TypeError(f"the {cls.name} takes a TabularModelConfig, not {type(config).__name__}")
        constraints = Constraints(data.constraints)
        if constraints and any(plan):
            roles = data.roles if data.roles is not None else column_roles(data.table, {}, data.label)
            constraints.fit(data.table, roles, data.protection.threshold, data.label)
            plan = [constraints.model_conditions(conditions) for conditions in plan]
            data = replace(data, table=constraints.forward(data.table), roles=constraints.roles(roles))
        columns = data.table.column_names
        wanted = {key for conditions in plan for key in conditions}
        for key in sorted(wanted):
            _require_column(key, columns)
        if not wanted:
            return
        selected = [name for name in columns if name in wanted or name == data.label]
        encoder = _fit_codecs(data, data.table.select(selected), config.max_categories, 0)
        for conditions in plan:
            check_conditions(encoder, conditions, cls.name, config.reveal_rate)

    @abstractmethod
    def render(
        self, label: torch.Tensor | None, known: Known | None, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``size`` encoded rows for these labels with the known columns."""

    def family_state(self) -> dict[str, Any]:
        """JSON-able state of the family's own besides the encoder and the label prior."""
        return {}

    def fitted_state(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.to_state(),
            "label_prior": self.prior.to_state(),
            "given": self.given,
            "constraints": self.constraints.to_state(),
            "text": self.text.to_state(),
            **self.family_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.encoder = TableEncoder.from_state(state["encoder"])
        self.prior = LabelPrior(**state["label_prior"])
        self.given = list(state.get("given", []))  # models saved before it gave none
        self.constraints = Constraints.from_state(state.get("constraints"))  # none before constraints
        self.reveal = Reveal(self.encoder, self.given)
        self.text = TextColumns.from_state(state.get("text"), self.device)  # none before text columns
        self.build(state)

    def sample(
        self,
        n: int,
        *,
        conditions: Conditions | None,
        seed: int,
        batch_size: int,
        rows: RowStream | None = None,
        tally: dict[str, int] | None = None,
        impute: Sequence[str] = (),
    ) -> Iterator[pa.Table]:
        """Batches of decoded rows with the input's schema; ``rows``: which rows of the run these
        are, for the columns made fresh (default: a run of these ``n`` rows, keyed by ``seed``).
        Rows a constraint refuses (:attr:`Constraints.rejecting`) are drawn again, ``tally``
        counting the rows ``drawn`` and ``kept``; the columns ``impute`` names are never drawn
        null (their null is masked out of every draw, and the rest of the row drawn given that)."""
        stream = rows or RowStream(key=seed, first=0, total=n)
        wanted = dict(conditions or {})
        conditions = self.constraints.model_conditions(wanted)
        self.check_conditions(conditions)
        for module in self.networks().values():
            module.eval()
        device, encoder = self.device, self.encoder
        label = label_key(encoder)
        others = {key: value for key, value in conditions.items() if key != label}
        row, columns = encoder.encode_known(others)
        banned = torch.from_numpy(encoder.null_columns(impute)).to(device) if impute else None
        known = (
            Known(torch.from_numpy(row).to(device), torch.from_numpy(columns).to(device), banned)
            if others or impute
            else None
        )
        generator = torch.Generator(device=device).manual_seed(seed)
        fixed = encoder.condition_index(conditions[label]) if label in conditions else None
        probs = None
        if self.labels:
            given = self.prior.given(encoder, row, columns)
            if (mask := self.constraints.label_mask(wanted, encoder.condition_values)) is not None:
                # a combination fixed with the label in it leaves the labels it goes with
                weights = np.asarray(given) * mask
                if not weights.sum() > 0:
                    raise ConfigError(f"generate.conditions: no {label} the model emits goes with them")
                given = (weights / weights.sum()).tolist()
            probs = torch.tensor(given, device=device)

        def draw(size: int, batch_seed: int, place: RowStream) -> pa.Table:
            cond = None
            if probs is not None:
                cond = (
                    torch.full((size,), fixed, device=device, dtype=torch.long)
                    if fixed is not None
                    else torch.multinomial(probs, size, replacement=True, generator=generator)
                )
            drawn = self._render_chunks(size, generator, cond, known)
            matrix, labels = drawn.float().cpu().numpy(), None if cond is None else cond.cpu().numpy()
            table = encoder.decode(matrix, labels, seed=batch_seed, rows=place)
            table = self.text.fill(table, matrix, labels, batch_seed)
            for key, value in conditions.items():  # exactly the requested value, in the column's type
                index = table.schema.get_field_index(key)
                table = table.set_column(
                    index, table.schema.field(index), encoder.value_array(key, value, size)
                )
            return self.constraints.inverse(_unpadded(table)) if self.constraints else _unpadded(table)

        for batch_number, (start, stop) in enumerate(batched_indices(n, batch_size)):
            place = RowStream(stream.key, stream.first + start, stream.total)
            table = draw(stop - start, seed * 1_000_003 + batch_number, place)
            if self.constraints.rejecting:
                table = self._redrawn(table, draw, seed * 1_000_003 + batch_number, place, tally)
            yield self.constraints.fixed(table, wanted) if self.constraints else table

    def _redrawn(
        self,
        table: pa.Table,
        draw: Callable[[int, int, RowStream], pa.Table],
        batch_seed: int,
        place: RowStream,
        tally: dict[str, int] | None,
    ) -> pa.Table:
        """``table``'s rows that every rejecting rule takes, topped up with rows drawn again until
        there are as many, at most :data:`MAX_DRAWS` times as many drawn in all; the columns made
        fresh are then those of the rows' places (a pure function of the place, so no identifier
        repeats)."""
        size, drawn = table.num_rows, table.num_rows
        parts = [table.filter(pa.array(self.constraints.accepted(table)))]
        kept = parts[0].num_rows
        while kept < size:
            if drawn >= MAX_DRAWS * size:
                rules = ", ".join(f"{rule.where} ({rule.label()})" for rule in self.constraints.rejecting)
                raise DatasetError(
                    f"{rules}: {kept} of {drawn} rows drawn follow it, fewer than 1 in {MAX_DRAWS}: give "
                    "the rule a reverse_transform that repairs rows, or loosen it"
                )
            share = max(kept / drawn, 1 / MAX_DRAWS)
            more = min(MAX_DRAWS * size - drawn, int(np.ceil((size - kept) / share * 1.1)))
            # candidates' fresh columns are made for their own short run: the kept rows take their
            # places' below
            extra = draw(more, batch_seed + drawn * 7_919, RowStream(place.key, 0, more))
            drawn += more
            parts.append(extra.filter(pa.array(self.constraints.accepted(extra))))
            kept += parts[-1].num_rows
        table = self._fresh_for(pa.concat_tables(parts).slice(0, size), place)
        if tally is not None:
            tally["drawn"] = tally.get("drawn", 0) + drawn
            tally["kept"] = tally.get("kept", 0) + size
        return table

    def _fresh_for(self, table: pa.Table, rows: RowStream) -> pa.Table:
        """``table`` with the columns made fresh those of the run's ``rows`` it stands at: rows drawn
        apart (again, or in groups) take their places' identifiers, which no other row repeats."""
        for name, column in self.encoder.fresh(rows, table.num_rows).items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(index), column)
        return table

    def _render_chunks(
        self, size: int, generator: torch.Generator, cond: torch.Tensor | None, known: Known | None
    ) -> torch.Tensor:
        """``size`` encoded rows, rendered :data:`CPU_CHUNK_ROWS` at a time on a CPU (bounding the
        networks' memory); ``cond``, and a ``known`` with a row per sampled row, go with them."""
        chunk = CPU_CHUNK_ROWS if self.device.type == "cpu" else max(size, 1)
        parts = []
        with torch.no_grad():
            for begin, end in batched_indices(size, chunk):
                part = known
                if known is not None and known.row.dim() == 2:
                    part = replace(known, row=known.row[begin:end])
                parts.append(
                    self.render(None if cond is None else cond[begin:end], part, end - begin, generator)
                )
        return torch.cat(parts) if parts else torch.zeros((0, self.encoder.width), device=self.device)

    @classmethod
    def check_seeds(cls, encoder: TableEncoder, columns: Sequence[str]) -> None:
        """Seed rows holding ``columns`` can be completed by this family (:meth:`fill_in`), with
        ``encoder`` (the model's, or one fitted as it will be: ingest's public view)."""
        if not cls.completes_rows:
            raise ConfigError(
                f"generate.complete: the {cls.family} family cannot complete rows (the autoregressive, "
                "VAE and diffusion families can)"
            )
        check_seed_columns(encoder, columns)

    def fill_in(self, seeds: pa.Table, *, seed: int, rows: RowStream, impute: Sequence[str] = ()) -> pa.Table:
        """A row for each row of ``seeds``, which holds some of the data columns, null where a value
        is not given: the values given as they are, the others drawn by the model given them, row
        by row; ``impute``'s columns never drawn null. ``rows`` places the rows in the run, for
        the columns made fresh.

        Under constraints, the seeds give columns the model learns as they are (the stage checks
        it) and the rest is drawn back through the rules; a row that then breaks one (a bound the
        given value sits outside of, a custom rule without a repair) is drawn again, at most
        :data:`MAX_DRAWS` times, else the run fails naming the rule."""
        table = self._filled(seeds, seed, impute)
        if self.constraints:
            table = self._refilled(seeds, table, seed, impute)
        return self._fresh_for(table, rows)

    def _refilled(self, seeds: pa.Table, table: pa.Table, seed: int, impute: Sequence[str]) -> pa.Table:
        """``table`` (completed from ``seeds``) with the rows that break a rule drawn again."""
        for attempt in range(1, MAX_DRAWS):
            broken = np.flatnonzero(~self.constraints.accepted(table, self.constraints.rules))
            if not len(broken):
                return table
            again = self._filled(seeds.take(pa.array(broken)), seed + attempt * 7_919, impute)
            rows = np.arange(table.num_rows)
            rows[broken] = table.num_rows + np.arange(len(broken))
            table = pa.concat_tables([table, again]).take(pa.array(rows))
        if not (follows := self.constraints.accepted(table, self.constraints.rules)).all():
            rule = next(r for r in self.constraints.rules if not r.holds(table).all())
            raise DatasetError(
                f"generate.complete: {int((~follows).sum())} seed row(s) drawn {MAX_DRAWS} times "
                f"break {rule.where} ({rule.label()}) each time: their given values leave it no room"
            )
        return table

    def _filled(self, seeds: pa.Table, seed: int, impute: Sequence[str]) -> pa.Table:
        """:meth:`fill_in`'s rows once, their columns made fresh not yet placed. Rows are drawn in
        groups that give the same columns (one pass each); a label not given is drawn given the
        row's known values (:meth:`LabelPrior.given`)."""
        for module in self.networks().values():
            module.eval()
        encoder, label = self.encoder, label_key(self.encoder)
        names = list(seeds.column_names)
        given = np.stack(
            [seeds.column(name).is_valid().to_numpy(zero_copy_only=False) for name in names], axis=1
        ).reshape(seeds.num_rows, len(names))
        patterns, group = np.unique(given, axis=0, return_inverse=True)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rng = np.random.default_rng(seed)
        banned = torch.from_numpy(encoder.null_columns(impute)).to(self.device) if impute else None
        parts, order = [], []
        for index, pattern in enumerate(patterns):
            members = np.flatnonzero(group.reshape(-1) == index)
            part = seeds.take(pa.array(members))
            known_names = [
                name for name, present in zip(names, pattern, strict=True) if present and name != label
            ]
            matrix, columns = encoder.encode_given(part.select(known_names))
            cond = None
            if self.labels:
                if label in names and pattern[names.index(label)]:
                    values = part.column(label).to_pylist()
                    cond = np.asarray([encoder.condition_index(value) for value in values])
                else:  # each row's label from its distribution given the row's known values
                    probs = self.prior.given_rows(encoder, matrix, columns)
                    cond = (rng.random((len(matrix), 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
                    cond = np.minimum(cond, self.labels - 1)
            known = None
            if known_names or banned is not None:
                known = Known(
                    torch.from_numpy(matrix).to(self.device),
                    torch.from_numpy(columns).to(self.device),
                    banned,
                )
            label_tensor = None if cond is None else torch.from_numpy(cond).to(self.device)
            drawn = self._render_chunks(len(members), generator, label_tensor, known).float().cpu().numpy()
            table = encoder.decode(drawn, cond, seed=seed + index, rows=RowStream(seed, 0, len(members)))
            parts.append(self.text.fill(table, drawn, cond, seed + index))
            order.append(members)
        order = np.argsort(np.concatenate(order), kind="stable")
        table = _given(_unpadded(pa.concat_tables(parts).take(pa.array(order))), seeds)
        # the rules draw their columns back from the values given (a total from the price given),
        # and may adjust one (a clip): it is given again, and a row it breaks a rule in is redrawn
        return _given(self.constraints.inverse(table), seeds) if self.constraints else table

    def complete(self, given: pa.Table, *, seed: int, rows: RowStream) -> pa.Table:
        """A row for each row of ``given``, which holds some of the data columns (the same in every
        row): those as given, the others drawn by the model given them. ``rows`` places the rows
        in the run, for the columns made fresh. A family that can (:attr:`completes_rows`, exact
        where the given columns come first in its order) and a model without a label column only:
        what a child table's model does with its parent's columns (``models.relational``)."""
        if not self.completes_rows:
            raise ConfigError(
                f"the {self.name} cannot complete rows (the autoregressive, VAE and diffusion families can)"
            )
        if self.labels:
            raise ConfigError(f"the {self.name} has a label column: it completes no rows")
        for module in self.networks().values():
            module.eval()
        matrix, columns = self.encoder.encode_given(given)
        known = Known(torch.from_numpy(matrix).to(self.device), torch.from_numpy(columns).to(self.device))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        drawn = self._render_chunks(given.num_rows, generator, None, known).float().cpu().numpy()
        table = self.text.fill(self.encoder.decode(drawn, None, seed=seed, rows=rows), drawn, None, seed)
        for name in given.column_names:  # exactly as given, in the column's type
            index = table.schema.get_field_index(name)
            table = table.set_column(
                index, table.schema.field(index), given.column(name).cast(table.schema.field(index).type)
            )
        return _unpadded(table)
