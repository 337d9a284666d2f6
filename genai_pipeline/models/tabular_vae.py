"""A conditional tabular VAE in the manner of TVAE.

The encoder maps every column to spans (quantile-normal numerics, one-hot categories, null
indicators); the VAE learns per-span Gaussian/categorical reconstructions plus a learned sigma per
numeric column, as TVAE does. Encoder and decoder both see the label's one-hot vector (when the
job names a categorical label column) and the revealed columns (``models.tabular``), so
``generate.conditions`` on the label or on any other columns is met by the decoder rather than
by rejection sampling; unconditioned sampling draws labels with their real frequencies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.models.base import register_model
from genai_pipeline.models.spans import reconstruction_loss, sample_spans
from genai_pipeline.models.tabular import (
    Known,
    TabularModelConfig,
    TabularSynthesizer,
    Width,
    matrix_tensors,
)
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    adam,
    fit_loop,
    maybe_compile,
    optimise,
)

NAME = "tabular VAE"


class TabularVAEConfig(TabularModelConfig):
    latent_dim: int = Field(default=64, ge=1, le=1024)
    hidden: tuple[Width, ...] = Field(default=(256, 256), min_length=1, max_length=8)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-5, ge=0, le=1)
    beta: float = Field(default=1.0, gt=0, le=100, description="weight of the KL term")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VAENet(nn.Module):
    """Encoder → (mu, logvar) → decoder, both seeing the condition: the label's one-hot vector and
    the revealed columns."""

    def __init__(self, width: int, labels: int, reveal: int, num_continuous: int, config: TabularVAEConfig):
        super().__init__()
        hidden = list(config.hidden)
        self.labels = labels
        cond_dim = labels + reveal
        self.encoder = _mlp([width + cond_dim, *hidden])
        self.to_latent = nn.Linear(hidden[-1], 2 * config.latent_dim)
        self.decoder = _mlp([config.latent_dim + cond_dim, *reversed(hidden)])
        self.to_output = nn.Linear(hidden[0], width)
        self.log_sigma = nn.Parameter(torch.full((num_continuous,), -2.0))

    def condition(self, label: torch.Tensor | None, revealed: torch.Tensor) -> torch.Tensor:
        if label is None:
            return revealed
        # an identity row per label rather than one_hot, which checks the labels' range (a
        # data-dependent step that per-row gradients for differential privacy cannot take)
        one_hot = torch.eye(self.labels, dtype=revealed.dtype, device=revealed.device)[label]
        return torch.cat([one_hot, revealed], dim=1)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.to_output(self.decoder(torch.cat([z, cond], dim=1)))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.encoder(torch.cat([x, cond], dim=1))
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, cond), mu, logvar


@register_model
class TabularVAE(TabularSynthesizer):
    family = "vae"
    name = NAME
    Config = TabularVAEConfig

    config: TabularVAEConfig
    completes_rows = True  # its revealed inputs take a row each (Reveal.known_inputs)
    streams = True
    net: VAENet

    def fit_family(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        x, cond = self.prepare(data, train, checkpoints=checkpoints)
        held = matrix_tensors(x, cond)  # a sample's, when the rows are streamed
        rows = self.training_rows(data, train, matrix_tensors, held)
        optimizer = adam(
            self.net.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        beta, rate = self.config.beta, self.config.reveal_rate
        spans = self.encoder.spans
        private = self.plan.sgd(train, rows=len(x)) if self.plan is not None else None
        net = maybe_compile(self.net, train, self.device) if private is None else self.net

        def losses(batch: tuple[torch.Tensor, ...], rate: float) -> tuple[torch.Tensor, torch.Tensor]:
            """Held out, ``rate`` is 0: the unconditional model is what early stopping watches."""
            real, labels = batch[0], (batch[1] if len(batch) > 1 else None)
            revealed = self.reveal.inputs(real, self.reveal.training_mask(len(real), rate, real.device))
            outputs, mu, logvar = net(real, self.net.condition(labels, revealed))
            recon = reconstruction_loss(outputs, real, spans, self.net.log_sigma)
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
            return recon + beta * kl, kl

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            loss = optimise(
                lambda *rows: losses(rows, rate)[0],
                batch,
                optimizer,
                networks={"net": self.net},
                private=private,
                max_norm=100.0,
                name=NAME,
            )
            self.net.log_sigma.data.clamp_(np.log(0.01), 0.0)
            return {"loss": loss}

        return fit_loop(
            name=NAME,
            modules={"net": self.net},
            optimizers={"adam": optimizer},
            step=step,
            data=rows,
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=lambda batch: losses(batch, 0.0)[0],
            private=private,
            plan=self.plan,
        )

    def render(
        self, label: torch.Tensor | None, known: Known | None, size: int, generator: torch.Generator
    ) -> torch.Tensor:
        z = torch.randn((size, self.config.latent_dim), generator=generator, device=self.device)
        cond = self.net.condition(label, self.reveal.known_inputs(known, size, z))
        banned = known.banned if known is not None else None
        return sample_spans(
            self.net.decode(z, cond), self.encoder.spans, self.net.log_sigma, generator, banned
        )

    def family_networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def build(self, state: dict[str, Any]) -> None:
        num_continuous = sum(span.kind == "continuous" for span in self.encoder.spans)
        self.net = VAENet(self.encoder.width, self.labels, self.reveal.size, num_continuous, self.config).to(
            self.device
        )
