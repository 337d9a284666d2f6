"""A conditional tabular diffusion model in the manner of TabDDPM (Kotelnikov et al., 2023).

Numeric values (the encoder's quantile-normal z) are diffused with the Gaussian
:class:`~genai_pipeline.models.noise_schedule.NoiseSchedule`; every categorical span (a column's
categories, or a numeric column's null flag) is diffused by *masking*: absorbing-state diffusion
(Austin et al., 2021; MDLM, Sahoo et al., 2024), where a category is replaced by a mask token with
the probability that the Gaussian schedule removes signal, instead of TabDDPM's uniform multinomial
noise. Masking suits few-step sampling: a category, once drawn, is final, and a step only decides
which of the still-masked columns to draw; the loss is a plain cross-entropy on masked columns.

One residual MLP denoises all columns at once: numeric values, the timestep's sinusoidal features,
each categorical token (mask included), the job's label and the revealed columns (any columns a
request fixes, see ``models.tabular``) each enter through a linear map or an embedding, summed, so
conditioning is learned rather than imposed by rejection. It outputs the numeric ``v`` (or noise)
and one set of logits per categorical span.

Three choices make 10 sampling steps enough (100,000 Adult rows in a few CPU seconds, where
TabDDPM walks 1,000): a value shared by many rows (a zero capital gain) is dequantised in training
(:class:`Dequantiser`) and decoded exactly by the encoder; the numeric ODE is stepped in its angle
(:meth:`NoiseSchedule.angular_step`), which does not shrink the columns' spread as DDIM does; and a row's
columns are unmasked at different steps (:meth:`MaskSchedule.levels`). An exponential moving
average of the weights samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from scipy.special import ndtr
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.encoders.tabular import Span, TableEncoder
from genai_pipeline.models.base import register_model
from genai_pipeline.models.noise_schedule import (
    BetaSchedule,
    MaskSchedule,
    NoiseSchedule,
    Prediction,
    timestep_features,
)
from genai_pipeline.models.spans import span_slices
from genai_pipeline.models.tabular import Known, TabularModelConfig, TabularSynthesizer
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    Tensors,
    adamw,
    fit_loop,
    frozen_copy,
    maybe_compile,
    optimise,
    update_ema,
)

NAME = "tabular diffusion model"
CDF_EPS = 1e-6  # the encoder clips the CDF to [1e-6, 1 - 1e-6] before Φ⁻¹


class TabularDiffusionConfig(TabularModelConfig):
    width: int = Field(default=128, ge=8, le=4096, description="width of the denoising MLP")
    depth: int = Field(default=3, ge=1, le=16, description="residual blocks of the denoising MLP")
    train_timesteps: int = Field(default=1000, ge=2, le=10_000, description="steps of the noise schedule")
    beta_schedule: BetaSchedule = "cosine"
    prediction: Prediction = Field(default="v", description="what the network predicts: epsilon or v")
    sampling_steps: int = Field(default=10, ge=1, le=10_000, description="denoising steps when sampling")
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-5, ge=0, le=1)
    ema_decay: float = Field(
        default=0.999, ge=0, lt=1, description="the sampled weights are this moving average of training's"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TabularDiffusionConfig:
        if self.sampling_steps > self.train_timesteps:
            raise ValueError("sampling_steps cannot exceed train_timesteps")
        return self


class SpanLayout:
    """The encoder's matrix as the model sees it: numeric values and one token per softmax span.

    Tokens rather than one-hot columns keep a high-cardinality column cheap: the network embeds a
    token instead of multiplying a wide one-hot vector, and a batch holds one integer per column.
    """

    def __init__(self, spans: Sequence[Span]):
        self.width = sum(span.size for span in spans)
        slices = span_slices(spans)
        self.numeric = [cols.start for span, cols in slices if span.kind == "continuous"]
        # a numeric column with nulls has a [present, null] softmax span too
        numeric_columns = {span.column for span in spans if span.kind == "continuous"}
        flags = {
            span.column: cols.start + 1
            for span, cols in slices
            if span.kind == "softmax" and span.column in numeric_columns
        }
        self.null_flags = [flags.get(span.column) for span in spans if span.kind == "continuous"]
        self.starts = [cols.start for span, cols in slices if span.kind == "softmax"]
        self.sizes = [span.size for span in spans if span.kind == "softmax"]

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric, tokens)`` of an encoded matrix."""
        tokens = [x[:, start : start + size].argmax(axis=1) for start, size in zip(self.starts, self.sizes)]
        return x[:, self.numeric], np.stack(tokens, axis=1) if tokens else np.zeros((len(x), 0), np.int64)

    def missing(self, x: np.ndarray) -> np.ndarray:
        """Which numeric values of an encoded matrix are null (their z is a placeholder)."""
        flags = [x[:, flag] > 0.5 if flag is not None else np.zeros(len(x), bool) for flag in self.null_flags]
        return np.stack(flags, axis=1) if flags else np.zeros((len(x), 0), bool)

    def join(self, numeric: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The encoded matrix (one-hot categories) of numeric values and tokens."""
        x = numeric.new_zeros((len(numeric), self.width))
        x[:, self.numeric] = numeric
        starts = torch.tensor(self.starts, dtype=torch.long, device=tokens.device)
        return x.scatter_(1, tokens + starts, 1.0)


class Dequantiser:
    """Point masses of numeric columns spread over their share of the CDF for training.

    The encoder maps a value held by many rows (Adult's capital gain is 0 in 92 % of rows, hours per
    week 40 in 47 %) to a single z: a spike that Gaussian diffusion can only learn approximately
    and with few sampling steps smears over neighbouring values. Training therefore sees such a
    value's z spread uniformly over its interval of the column's CDF (``z = Φ⁻¹(u)`` with
    ``u ~ U(F(v⁻), F(v))``, the encoder's spikes), so the numbers the network learns are smooth and
    standard normal; the encoder decodes any z whose ``Φ(z)`` falls in that interval to the value.
    A null's placeholder z is spread over the whole range the same way: it is never decoded.
    """

    def __init__(self, encoder: TableEncoder, device: torch.device):
        self.spikes = [codec.spikes or [] for codec in encoder.data_codecs if codec.kind == "continuous"]
        # flat over columns; entry 0 stands for a null: the whole range
        intervals = torch.tensor([[0.0, 1.0], *(spike[1:] for column in self.spikes for spike in column)])
        self.lows = intervals[:, 0].to(device)
        self.widths = (intervals[:, 1] - intervals[:, 0]).to(device)

    def entries(self, numeric: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Each training value's interval: -1 for none, 0 for a null, else its spike's."""
        probs = ndtr(numeric.astype(np.float64))
        entries = np.where(missing, 0, -1)
        entry = 1
        for j, column in enumerate(self.spikes):
            for _, low, high in column:
                entries[(low <= probs[:, j]) & (probs[:, j] < high) & ~missing[:, j], j] = entry
                entry += 1
        return entries

    def spread(
        self, numeric: torch.Tensor, entries: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training values with each point mass's z drawn uniformly from its interval of the CDF."""
        picked = entries.clamp(min=0)
        uniform = torch.rand(picked.shape, generator=generator, device=picked.device)
        probs = (self.lows[picked] + uniform * self.widths[picked]).clamp(CDF_EPS, 1 - CDF_EPS)
        return torch.where(entries >= 0, torch.special.ndtri(probs), numeric)


class Block(nn.Module):
    """Pre-norm residual MLP block: stable at any depth, and the identity at initialisation."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.outer(F.silu(self.inner(self.norm(h))))


class Denoiser(nn.Module):
    """``(numeric x_t, tokens x_t, t, label, revealed) → (numeric prediction, logits of every span)``."""

    def __init__(
        self,
        num_numeric: int,
        sizes: Sequence[int],
        num_labels: int,
        reveal: int,
        config: TabularDiffusionConfig,
    ):
        super().__init__()
        width = config.width
        self.sizes = list(sizes)
        self.num_numeric = num_numeric
        # each span's categories and its mask token, numbered across spans
        offsets = np.cumsum([0, *(size + 1 for size in self.sizes[:-1])]).tolist()
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.numeric = nn.Linear(num_numeric, width) if num_numeric else None
        self.time = nn.Linear(width, width)
        self.tokens = nn.Embedding(max(sum(self.sizes) + len(self.sizes), 1), width)
        self.label = nn.Embedding(max(num_labels, 1), width)
        self.revealed = nn.Linear(reveal, width, bias=False)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(config.depth)))
        self.out = nn.Sequential(
            nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, num_numeric + sum(self.sizes))
        )

    def start_from_marginals(self, tokens: torch.Tensor) -> None:
        """Set the logits' biases to each span's log-frequencies: training starts from the real
        marginals and spends its budget on the dependencies between columns."""
        biases = self.out[-1].bias[self.num_numeric :].split(self.sizes)
        with torch.no_grad():
            for column, size, bias in zip(tokens.T, self.sizes, biases):
                counts = torch.bincount(column, minlength=size).float() + 1
                bias.copy_(torch.log(counts / counts.sum()))

    def forward(
        self,
        numeric: torch.Tensor,
        tokens: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        revealed: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = (
            self.time(timestep_features(t, self.time.in_features))
            + self.label(labels)
            + self.revealed(revealed)
        )
        if self.numeric is not None:
            h = h + self.numeric(numeric)
        if self.sizes:
            h = h + F.embedding_bag(tokens + self.offsets, self.tokens.weight, mode="sum")
        output = self.out(self.blocks(h))
        prediction, logits = output.split([self.num_numeric, sum(self.sizes)], dim=1)
        return prediction, list(logits.split(self.sizes, dim=1))


@register_model
class TabularDiffusion(TabularSynthesizer):
    family = "diffusion"
    name = NAME
    Config = TabularDiffusionConfig

    config: TabularDiffusionConfig
    completes_rows = True  # its revealed inputs take a row each (Reveal.known_inputs)
    streams = True
    layout: SpanLayout
    masks: MaskSchedule
    dequantiser: Dequantiser
    network: Denoiser
    ema: Denoiser

    def __init__(self, config: TabularDiffusionConfig, *, device: torch.device):
        super().__init__(config, device=device)
        self.schedule = NoiseSchedule(
            config.train_timesteps, beta_schedule=config.beta_schedule, prediction=config.prediction
        )

    def loss(
        self, network: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The numeric MSE plus the masked categories' cross-entropy, per column, averaged over rows.

        Training draws the timesteps and noise and reveals columns to a share of rows; evaluation
        passes a seeded ``generator`` and gets evenly spread timesteps and no revealed columns (the
        unconditional model), so its loss is comparable from epoch to epoch.
        """
        numeric, entries, tokens, labels = batch
        rate = self.config.reveal_rate if generator is None else 0.0
        shown = self.reveal.training_mask(len(numeric), rate, numeric.device)
        revealed = self.reveal.inputs(self.layout.join(numeric, tokens), shown)
        numeric = self.dequantiser.spread(numeric, entries, generator)
        schedule = self.schedule
        if generator is None:
            t = schedule.sample_timesteps(len(numeric), device=numeric.device)
        else:  # evaluation: evenly spread steps
            t = torch.linspace(0, schedule.num_steps - 1, len(numeric), device=numeric.device).round().long()
        noise = torch.randn(numeric.shape, generator=generator, device=numeric.device)
        noisy = self.masks.add_noise(tokens, t, generator)
        prediction, logits = network(schedule.add_noise(numeric, noise, t), noisy, t, labels, revealed)
        total = F.mse_loss(prediction, schedule.target(numeric, noise, t), reduction="none").sum(dim=1)
        masked = self.masks.is_masked(noisy)
        for k, span in enumerate(logits):
            total = total + F.cross_entropy(span, tokens[:, k], reduction="none") * masked[:, k]
        return total.mean() / max(numeric.shape[1] + tokens.shape[1], 1)

    def _tensors(self, x: np.ndarray, cond: np.ndarray | None) -> Tensors:
        """The rows' numbers, their dequantising entries, their tokens and labels (0 without one)."""
        numeric, tokens = self.layout.split(x)
        entries = self.dequantiser.entries(numeric, self.layout.missing(x))
        numeric, entries, tokens = (torch.from_numpy(array) for array in (numeric, entries, tokens))
        labels = torch.zeros(len(x), dtype=torch.long) if cond is None else torch.from_numpy(cond)
        return numeric, entries, tokens, labels

    def fit_family(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        x, cond = self.prepare(data, train, checkpoints=checkpoints)
        held = self._tensors(x, cond)  # a sample's, when the rows are streamed
        del x, cond
        rows = self.training_rows(data, train, self._tensors, held)
        tokens = held[2]
        private = self.plan.sgd(train, rows=len(tokens)) if self.plan is not None else None
        if private is None:  # the real marginals are no DP release: with privacy, learned like the rest
            self.network.start_from_marginals(tokens.to(self.device))
        self.ema.load_state_dict(self.network.state_dict())
        optimizer = adamw(
            self.network.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        network = maybe_compile(self.network, train, self.device) if private is None else self.network

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            loss = optimise(
                lambda *rows: self.loss(network, rows),
                batch,
                optimizer,
                networks={"network": network},
                private=private,
                max_norm=1.0,
                name=NAME,
            )
            update_ema(self.ema, self.network, optimizer, self.config.ema_decay)
            return {"loss": loss}

        def evaluate(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            """The sampling (EMA) weights' loss at fixed noise, masks and evenly spread steps."""
            return self.loss(self.ema, batch, torch.Generator(self.device).manual_seed(0))

        return fit_loop(
            name=NAME,
            modules={"network": self.network, "ema": self.ema},
            optimizers={"adam": optimizer},
            step=step,
            data=rows,
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=evaluate,
            private=private,
            plan=self.plan,
        )

    def render(
        self, label: torch.Tensor | None, known: Known | None, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Encoded rows: numbers by the ODE from pure noise, categories by unmasking."""
        labels = torch.zeros(size, dtype=torch.long, device=self.device) if label is None else label
        x = torch.randn((size, self.network.num_numeric), generator=generator, device=self.device)
        revealed = self.reveal.known_inputs(known, size, x)
        tokens = self.masks.masks.to(self.device).expand(size, -1)
        levels = self.masks.levels(size, generator, self.device)
        timesteps = self.schedule.timesteps(self.config.sampling_steps).tolist()
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1]):
            # one timestep for the whole chunk: its embedding is computed once and broadcast
            time = torch.tensor([t], device=self.device)
            prediction, logits = self.ema(x, tokens, time, labels, revealed)
            if known is not None and known.banned is not None:  # generate.impute: no null drawn
                logits = [
                    span.masked_fill(known.banned[start : start + size], float("-inf"))
                    for span, start, size in zip(logits, self.layout.starts, self.layout.sizes, strict=True)
                ]
            x = self.schedule.angular_step(prediction, t, t_prev, x)
            tokens = self.masks.step(logits, t_prev, tokens, levels, generator)
        return self.layout.join(x, tokens)

    def family_networks(self) -> dict[str, nn.Module]:
        return {"ema": self.ema}

    def build(self, state: dict[str, Any]) -> None:
        self.layout = SpanLayout(self.encoder.spans)
        self.masks = MaskSchedule(self.schedule, self.layout.sizes)
        self.dequantiser = Dequantiser(self.encoder, self.device)
        self.network = Denoiser(
            len(self.layout.numeric), self.layout.sizes, self.labels, self.reveal.size, self.config
        ).to(self.device)
        self.ema = frozen_copy(self.network)
