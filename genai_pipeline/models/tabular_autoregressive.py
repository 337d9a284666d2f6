"""A column-by-column autoregressive tabular model in the manner of MOSTLY AI's TabularARGN.

Every column becomes one discrete token per row: categories as the encoder numbers them, numerics
by their quantile-normal value (their distinct values when there are few, else equal-probability
bins in Φ(z) plus a null token). The label column comes first, so conditioning on it is exact.
Column ``k``'s distribution is a softmax head on a small MLP of its own, reading the sum of the
embeddings of the tokens before it; training is one teacher-forced pass (NLL summed over columns)
and sampling one pass per column over a batch of rows, at temperature 1, so it costs about as much
as one training forward pass.

Any other columns can be conditioned on as TabularARGN's flexible generation allows, at no cost
to the fixed order: a share of training rows (``reveal_rate``) also add the embeddings of a random
subset of *later* columns to every context and are not scored on those columns. At sampling the
requested columns' tokens are in every context from the start, and their heads are skipped.

A sampled bin decodes by drawing Φ(z) uniformly inside it; a bin that holds a single value (a small
integer range, or a spike such as a zero) decodes to exactly that value. ``TableEncoder.decode``
then restores the real values, types and nulls, so marginals match up to the bin width.

Two choices keep long training honest. Strong decoupled weight decay (biases exempt, so the heads
keep the marginal frequencies; larger for smaller tables) stops the per-column MLPs from memorising
rows: the held-out NLL levels off instead of climbing, so a time budget far beyond convergence does
not copy training data. Sampling uses an exponential moving average of the weights, which removes
the last steps' noise from the heads (a few percent of error in each marginal without it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.special import ndtr, ndtri
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.encoders.tabular import ColumnCodec, TableEncoder
from genai_pipeline.errors import DatasetError
from genai_pipeline.models.base import register_model
from genai_pipeline.models.spans import draw_categorical
from genai_pipeline.models.tabular import (
    Known,
    TabularModelConfig,
    TabularSynthesizer,
    Width,
    fit_encoder,
)
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    Tensors,
    adamw,
    fit_loop,
    frozen_copy,
    maybe_compile,
    optimise,
    row_count,
    update_ema,
)

NAME = "tabular autoregressive model"
# Weight decay is set for a table of this many rows. A smaller table holds less evidence per weight
# and memorises rows sooner, so its decay grows as 1/√rows (measured on Adult and on half of the
# penguins table: one fixed decay either underfits the first or copies the second).
REFERENCE_ROWS = 30_000
# With DP, the heads' frequencies are matched to the released ones (ColumnwiseNet.match_marginals)
# in this many rounds of this many sampled rows, each bias moving at most this much per round.
MATCH_ROUNDS, MATCH_ROWS, MATCH_STEP = 4, 20_000, 4.0


class TabularAutoregressiveConfig(TabularModelConfig):
    embedding_dim: int = Field(
        default=64, ge=1, le=4096, description="width of the context of earlier columns"
    )
    hidden: tuple[Width, ...] = Field(
        default=(64,), min_length=1, max_length=8, description="each column's own MLP widths"
    )
    max_bins: int = Field(
        default=128, ge=2, le=10_000, description="tokens per numeric column (its distinct values if fewer)"
    )
    ema_decay: float = Field(
        default=0.995, ge=0, lt=1, description="the sampled weights are this moving average of training's"
    )
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    weight_decay: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description=f"decoupled decay of the weights (not biases) at {REFERENCE_ROWS:,} rows, times "
        f"√({REFERENCE_ROWS:,} / rows) for other tables",
    )


def fit_bins(z: np.ndarray, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the smallest and largest value of each bin of a numeric column's z values.

    A column with at most ``max_bins`` distinct values keeps each as a bin of its own. Otherwise
    values are grouped into bins of about ``1 / max_bins`` of the rows, and a value at least that
    frequent (a spike) gets a bin of its own, so it is sampled exactly rather than smeared.
    """
    values, counts = np.unique(z, return_counts=True)
    if len(values) <= max_bins:
        return values, values
    first = _group_starts(counts / counts.sum(), max_bins)
    last = np.r_[first[1:] - 1, len(values) - 1]
    return values[first], values[last]


def _group_starts(mass: np.ndarray, max_bins: int) -> np.ndarray:
    """Where each bin starts when consecutive items of these masses are grouped into about
    ``1 / max_bins`` of the total each, an item at least that heavy (a spike) in a bin of its own."""
    group = np.floor((np.cumsum(mass) - mass) * max_bins)
    spike = mass >= 1 / max_bins
    return np.flatnonzero(np.r_[True, (np.diff(group) > 0) | spike[1:] | spike[:-1]])


@dataclass(frozen=True)
class TokenColumn:
    """How one encoded column maps to tokens and back; ``lo``/``hi`` are the bins of a numeric."""

    codec: ColumnCodec
    offset: int
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    @property
    def vocab(self) -> int:
        if self.lo is None:
            return len(self.codec.categories or [])
        return len(self.lo) + self.codec.has_nulls

    def released_counts(self, rows: int) -> torch.Tensor:
        """Counts of each token that a DP encoder released: a category's noisy count, or a numeric
        bin's share of the released distribution; unknown ones (nulls) none."""
        if self.lo is None:
            frequencies = self.codec.frequencies or [0.0] * self.vocab
            return torch.tensor(frequencies, dtype=torch.float64)
        assert self.hi is not None
        share = ndtr(np.nextafter(self.hi.astype(np.float64), np.inf)) - ndtr(self.lo.astype(np.float64))
        counts = torch.from_numpy(rows * share / share.sum())
        return torch.cat([counts, torch.zeros(self.vocab - len(self.lo), dtype=torch.float64)])

    def banned_tokens(self, banned: torch.Tensor) -> torch.Tensor | None:
        """The tokens of this column that a mask over the matrix's columns bans (its null: a
        category's, or a numeric's last token), or None."""
        if self.lo is None:
            mask = banned[self.offset : self.offset + self.vocab]
        elif self.codec.has_nulls:
            mask = torch.zeros(self.vocab, dtype=torch.bool, device=banned.device)
            mask[-1] = banned[self.offset + 2]
        else:
            return None
        return mask if bool(mask.any()) else None

    def tokens(self, x: np.ndarray) -> np.ndarray:
        """Each row's token: its category, or its numeric bin (the last token meaning null)."""
        if self.lo is None:
            return x[:, self.offset : self.offset + self.vocab].argmax(axis=1)
        assert self.hi is not None
        bins = np.minimum(np.searchsorted(self.hi, x[:, self.offset]), len(self.hi) - 1)
        if self.codec.has_nulls:
            return np.where(x[:, self.offset + 2] > x[:, self.offset + 1], len(self.hi), bins)
        return bins

    def render(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The encoded block of these tokens: a one-hot, or ``z`` (drawn in its bin) and nulls."""
        if self.lo is None:
            return F.one_hot(tokens, self.vocab).float()
        assert self.hi is not None
        device = tokens.device
        lo = torch.as_tensor(self.lo, dtype=torch.float64, device=device)
        hi = torch.as_tensor(self.hi, dtype=torch.float64, device=device)
        null = tokens == len(lo)
        index = tokens.clamp(max=len(lo) - 1)
        low, high = torch.special.ndtr(lo[index]), torch.special.ndtr(hi[index])
        u = torch.rand(len(tokens), generator=generator, device=device, dtype=torch.float64)
        z = torch.where(lo[index] == hi[index], lo[index], torch.special.ndtri(low + u * (high - low)))
        z = torch.where(null, 0.0, z).float()[:, None]
        if not self.codec.has_nulls:
            return z
        return torch.cat([z, F.one_hot(null.long(), 2).float()], dim=1)


def released_bins(knot_probs: Sequence[float], max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` z bins along the steps of a DP encoder's released CDF (post-processing, free).

    Each step is a bin of its own when there are at most ``max_bins`` (a whole number's step too:
    Adult's 16 education levels stay 16 tokens, each one level, so ``education`` → ``education_num``
    is one token to one token); otherwise steps are grouped into about ``1 / max_bins`` of the mass,
    a step at least that heavy alone, as :func:`fit_bins` groups values. Bins of equal probability
    instead would straddle steps, and a token would stand for two neighbouring values.
    """
    edges = np.unique(np.clip(np.asarray(knot_probs, dtype=np.float64), 1e-6, 1 - 1e-6))
    mass = np.diff(edges)
    first = _group_starts(mass, max_bins) if len(mass) > max_bins else np.arange(len(mass))
    bounds = np.r_[edges[first], edges[-1]]
    return ndtri(bounds[:-1]), np.nextafter(ndtri(bounds[1:]), -np.inf)


def fit_token_bins(
    encoder: TableEncoder, x: np.ndarray, max_bins: int, *, private: bool = False
) -> dict[str, list[list[float]]]:
    """JSON-able ``{column: [lo, hi]}`` bins of every numeric column, from its non-null rows (or,
    ``private``, from its released distribution alone: :func:`released_bins`)."""
    bins = {}
    for codec, offset in encoder.span_columns:
        if codec.kind == "continuous":
            z = x[:, offset]
            if codec.has_nulls:
                z = z[x[:, offset + 1] >= x[:, offset + 2]]
            edges = released_bins(codec.knot_probs, max_bins) if private else fit_bins(z, max_bins)
            bins[codec.name] = [edge.tolist() for edge in edges]
    return bins


def token_columns(encoder: TableEncoder, bins: dict[str, list[list[float]]]) -> list[TokenColumn]:
    """The encoder's data columns in order; numerics take their bins from ``bins``."""
    columns = []
    for codec, offset in encoder.span_columns:
        if codec.kind == "continuous":
            lo, hi = (np.asarray(edge, dtype=np.float32) for edge in bins[codec.name])
            columns.append(TokenColumn(codec, offset, lo, hi))
        else:
            columns.append(TokenColumn(codec, offset))
    return columns


class ColumnwiseNet(nn.Module):
    """Per-column MLPs and softmax heads over the summed embeddings of the earlier tokens.

    ``vocab`` lists every token column's size, the label first when there is one; ``first`` is the
    index of the first column to predict (the label is given, never predicted). The MLPs of all
    columns are stacked into batched weights so a training step is a handful of ``bmm`` calls.
    """

    def __init__(self, vocab: list[int], first: int, config: TabularAutoregressiveConfig):
        super().__init__()
        self.first = first
        count = len(vocab) - first
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(vocab[:-1]).tolist()]), persistent=False)
        self.embed = nn.Embedding(sum(vocab), config.embedding_dim)
        widths = [config.embedding_dim, *config.hidden]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(count, fan_in, fan_out).uniform_(-1, 1) / fan_in**0.5)
            for fan_in, fan_out in zip(widths[:-1], widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(count, width)) for width in widths[1:])
        self.heads = nn.ModuleList(nn.Linear(widths[-1], size) for size in vocab[first:])

    def start_from_marginals(self, tokens: torch.Tensor) -> None:
        """Set each head's bias to its column's log-frequencies: training starts from the real
        marginals and spends its budget on the dependencies between columns."""
        self.start_from(
            [
                torch.bincount(tokens[:, self.first + k], minlength=head.out_features)
                for k, head in enumerate(self.heads)
            ]
        )

    def start_from(self, counts: list[torch.Tensor]) -> None:
        """Set each head's bias to the log-frequencies of ``counts`` (one per predicted column)."""
        with torch.no_grad():
            for head, column in zip(self.heads, counts):
                column = column.float().to(head.bias.device)
                head.bias.copy_(torch.log(column + 1) - torch.log(column.sum() + len(column)))

    @torch.no_grad()
    def match_marginals(self, targets: list[torch.Tensor], label_probs: Sequence[float], seed: int) -> None:
        """Shift each head's bias until the columns' sampled frequencies match ``targets`` (one per
        predicted column; a token whose target is 0, such as null, keeps its sampled share): for
        :data:`MATCH_ROUNDS` rounds, draw :data:`MATCH_ROWS` rows (labels from ``label_probs``) and
        add ``log(target / sampled)`` to each bias.

        DP-SGD starves rare tokens: a row of a rare value has a large gradient, clipped harder than
        the many rows that push its logit down, so the heads drift from the released frequencies
        they start from (:meth:`start_from`). On Adult at ε = 3, education level 1 (51 rows, its
        count released) was never drawn, which moves every bin edge of a pair-trend metric binning
        the column's own range. Matching is post-processing of DP outputs (the weights and the
        released counts): it costs no budget."""
        generator = torch.Generator(self.embed.weight.device).manual_seed(seed)
        priors = torch.as_tensor(label_probs, dtype=torch.float64, device=self.embed.weight.device)
        for _ in range(MATCH_ROUNDS):
            label = (
                torch.multinomial(priors, MATCH_ROWS, replacement=True, generator=generator)
                if len(priors)
                else None
            )
            drawn = self.sample(label, None, MATCH_ROWS, generator)
            for head, target, tokens in zip(self.heads, targets, drawn):
                target = target.to(torch.float64).to(head.bias.device)
                known = target > 0
                share = torch.bincount(tokens, minlength=len(target)).to(torch.float64) / MATCH_ROWS
                want = target[known] / target[known].sum() * (1 - share[~known].sum())
                step = torch.log((want + 1 / MATCH_ROWS) / (share[known] + 1 / MATCH_ROWS))
                head.bias[known] += step.clamp(-MATCH_STEP, MATCH_STEP).to(head.bias.dtype)

    def hidden(self, context: torch.Tensor, columns: slice) -> torch.Tensor:
        """``(columns, rows, width)`` features of the given predicted columns from their contexts."""
        for weight, bias in zip(self.weights, self.biases):
            context = F.silu(torch.baddbmm(bias[columns].unsqueeze(1), context, weight[columns]))
        return context

    def forward(self, tokens: torch.Tensor, revealed: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced negative log-likelihood of the rows, summed over columns, averaged over rows.

        ``revealed`` (rows × predicted columns) adds those columns' embeddings to the contexts of the
        columns before them and leaves them unscored.
        """
        embedded = self.embed(tokens + self.offsets)
        context = F.pad(embedded[:, :-1].cumsum(dim=1), (0, 0, 1, 0))[:, self.first :]
        if revealed is not None:
            shown = embedded[:, self.first :] * revealed[..., None]
            context = context + shown.sum(dim=1, keepdim=True) - shown.cumsum(dim=1)
        features = self.hidden(context.transpose(0, 1), slice(None))
        nll = torch.stack(
            [
                F.cross_entropy(head(feature), tokens[:, self.first + k], reduction="none")
                for k, (head, feature) in enumerate(zip(self.heads, features))
            ],
            dim=1,
        )
        if revealed is not None:
            nll = nll * ~revealed
        return nll.sum(dim=1).mean()

    def sample(
        self,
        label: torch.Tensor | None,
        known: tuple[torch.Tensor, torch.Tensor] | None,
        size: int,
        generator: torch.Generator,
        banned: list[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """Draw every predicted column in turn, each from its head at temperature 1; ``known`` is
        ``(tokens, mask)`` over the predicted columns: those are given, not drawn (``tokens``: one
        per column, or a row of them per column); ``banned``: per column, tokens never drawn."""
        context = self.embed.weight.new_zeros((size, self.embed.embedding_dim))
        if label is not None:
            context = context + self.embed(label)
        given = [None] * len(self.heads)
        if known is not None:
            tokens, mask = known
            for k in mask.nonzero()[:, 0].tolist():
                given[k] = tokens[k].expand(size)
                context = context + self.embed(given[k] + self.offsets[self.first + k])
        drawn = []
        for k, head in enumerate(self.heads):
            if given[k] is not None:
                drawn.append(given[k])
                continue
            logits = head(self.hidden(context[None], slice(k, k + 1))[0])
            if banned is not None and banned[k] is not None:
                logits = logits.masked_fill(banned[k], float("-inf"))
            token = draw_categorical(logits, generator)
            drawn.append(token)
            context = context + self.embed(token + self.offsets[self.first + k])
        return drawn


@register_model
class TabularAutoregressive(TabularSynthesizer):
    family = "autoregressive"
    name = NAME
    Config = TabularAutoregressiveConfig

    config: TabularAutoregressiveConfig
    columns: list[TokenColumn]
    bins: dict[str, list[list[float]]]
    net: ColumnwiseNet
    completes_rows = True  # a row's known tokens are its own (render)
    streams = True

    def _tensors(self, x: np.ndarray, cond: np.ndarray | None) -> Tensors:
        """The rows' tokens, the label's first."""
        tokens = np.stack([column.tokens(x) for column in self.columns], axis=1)
        if cond is not None:
            tokens = np.concatenate([cond[:, None], tokens], axis=1)
        return (torch.from_numpy(tokens.astype(np.int64)),)

    def fit_family(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        max_bins = self.config.max_bins

        def token_bins(encoder: TableEncoder, x: np.ndarray) -> dict[str, Any]:
            return {"bins": fit_token_bins(encoder, x, max_bins, private=self.plan is not None)}

        x, cond = self.prepare(data, train, token_bins, checkpoints)
        if not self.columns:
            raise DatasetError(f"the {NAME} needs a column with values besides the label")
        (data_tokens,) = self._tensors(x, cond)  # a sample's, when the rows are streamed
        del x, cond
        rows = self.training_rows(data, train, self._tensors, (data_tokens,))
        private = self.plan.sgd(train, rows=len(data_tokens)) if self.plan is not None else None
        if private is None:
            self.net.start_from_marginals(data_tokens.to(self.device))
        else:  # the real marginals are no DP release: start from the encoder's (DP) frequencies
            self.net.start_from([column.released_counts(len(data_tokens)) for column in self.columns])
        trainee = self.net
        average = frozen_copy(trainee)
        nll = maybe_compile(trainee, train, self.device) if private is None else trainee
        # biases stay free of weight decay: the heads' biases carry the marginal frequencies
        decay = self.config.weight_decay * math.sqrt(REFERENCE_ROWS / row_count(rows))
        decayed = [p for name, p in trainee.named_parameters() if "bias" not in name]
        free = [p for name, p in trainee.named_parameters() if "bias" in name]
        optimizer = adamw(
            [{"params": decayed}, {"params": free, "weight_decay": 0.0}],
            lr=self.config.learning_rate,
            weight_decay=min(decay, 0.1 / self.config.learning_rate),
        )
        rate = self.config.reveal_rate

        def loss(rows: torch.Tensor) -> torch.Tensor:
            # given columns come first in the order, so conditioning on them is exact unrevealed;
            # still predicting them trains the embeddings later columns read (revealed and unscored,
            # a child's parent-to-time trend fell from 0.89-0.91 to 0.53-0.79 over three seeds)
            return nll(rows, self.reveal.training_mask(len(rows), rate, rows.device, given=False))

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            value = optimise(
                loss, batch, optimizer, networks={"net": trainee}, private=private, max_norm=100.0, name=NAME
            )
            update_ema(average, trainee, optimizer, self.config.ema_decay)
            return {"nll": value}

        report = fit_loop(
            name=NAME,
            modules={"net": trainee, "average": average},
            optimizers={"adamw": optimizer},
            step=step,
            data=rows,
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=lambda batch: average(batch[0]),
            private=private,
            plan=self.plan,
        )
        self.net = average
        if private is not None:
            self.net.match_marginals(
                [column.released_counts(1) for column in self.columns], self.prior.probs, train.seed
            )
        return report

    def encoder_bins(self, data: Dataset) -> bool:
        """Fit the numeric columns' bins; whether there is any column to model besides the label."""
        encoder, x, _ = fit_encoder(data, max_categories=self.config.max_categories, model=NAME)
        self.bins = fit_token_bins(encoder, x, self.config.max_bins)
        return bool(encoder.span_columns)

    def render(
        self, label: torch.Tensor | None, known: Known | None, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        given = None
        if known is not None:  # one row for all, or a row each
            rows = known.row.reshape(-1, known.row.shape[-1]).cpu().numpy()
            tokens = torch.from_numpy(np.stack([column.tokens(rows) for column in self.columns]))
            given = ((tokens[:, 0] if len(rows) == 1 else tokens).to(self.device), known.columns)
        banned = None
        if known is not None and known.banned is not None:  # generate.impute: a column's null token
            banned = [column.banned_tokens(known.banned) for column in self.columns]
        drawn = self.net.sample(label, given, size, generator, banned)
        return torch.cat(
            [column.render(tokens, generator) for column, tokens in zip(self.columns, drawn)], dim=1
        )

    def family_networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def family_state(self) -> dict[str, Any]:
        return {"bins": self.bins}

    def build(self, state: dict[str, Any]) -> None:
        self.bins = state["bins"]
        self.columns = token_columns(self.encoder, self.bins)
        vocab = ([self.labels] if self.labels else []) + [c.vocab for c in self.columns]
        self.net = ColumnwiseNet(vocab, 1 if self.labels else 0, self.config).to(self.device)
