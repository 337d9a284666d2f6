"""A conditional tabular VAE in the manner of TVAE.

The encoder maps every column to spans (quantile-normal numerics, one-hot categories, null
indicators); the VAE learns per-span Gaussian/categorical reconstructions plus a learned sigma per
numeric column, as TVAE does. When the job names a categorical label column, the VAE is
conditioned on it, so ``generate.conditions: {label: value}`` is exact rather than rejection
sampling, and unconditioned sampling draws labels with their real frequencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.models.base import Conditions, ModelConfig, Synthesizer, register_model
from genai_pipeline.models.spans import reconstruction_loss, sample_spans
from genai_pipeline.models.tabular_common import check_conditions, fit_encoder, stream_rows
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    check_gradients,
    fit_loop,
    maybe_compile,
    seed_everything,
)

NAME = "tabular VAE"


class TabularVAEConfig(ModelConfig):
    latent_dim: int = Field(default=64, ge=1, le=1024)
    hidden: tuple[int, ...] = Field(default=(256, 256), min_length=1, max_length=8)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-5, ge=0, le=1)
    beta: float = Field(default=1.0, gt=0, le=100, description="weight of the KL term")
    max_categories: int = Field(default=1000, ge=2, le=100_000)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class VAENet(nn.Module):
    """Encoder → (mu, logvar) → decoder, both seeing the condition's one-hot vector."""

    def __init__(self, width: int, cond_dim: int, num_continuous: int, config: TabularVAEConfig):
        super().__init__()
        hidden = list(config.hidden)
        self.cond_dim = cond_dim
        self.encoder = _mlp([width + cond_dim, *hidden])
        self.to_latent = nn.Linear(hidden[-1], 2 * config.latent_dim)
        self.decoder = _mlp([config.latent_dim + cond_dim, *reversed(hidden)])
        self.to_output = nn.Linear(hidden[0], width)
        self.log_sigma = nn.Parameter(torch.full((num_continuous,), -2.0))

    def _cond(self, cond: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        if self.cond_dim == 0 or cond is None:
            return like.new_zeros((n, 0))
        return nn.functional.one_hot(cond, self.cond_dim).to(like.dtype)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.to_output(self.decoder(torch.cat([z, self._cond(cond, len(z), z)], dim=1)))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        h = self.encoder(torch.cat([x, self._cond(cond, len(x), x)], dim=1))
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, cond), mu, logvar


@register_model
class TabularVAE(Synthesizer):
    family = "vae"
    modality = "tabular"
    Config = TabularVAEConfig

    config: TabularVAEConfig
    encoder: TableEncoder
    net: VAENet
    cond_probs: list[float]

    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        encoder, x, cond, cond_probs = fit_encoder(
            data, max_categories=self.config.max_categories, model=NAME
        )
        seed_everything(train.seed)  # networks are built here, before fit_loop: seed their initial weights
        self.restore({"encoder": encoder.to_state(), "cond_probs": cond_probs})
        optimizer = torch.optim.Adam(
            self.net.parameters(), lr=self.config.learning_rate, weight_decay=self.config.weight_decay
        )
        beta = self.config.beta
        spans = self.encoder.spans
        net = maybe_compile(self.net, train, self.device)

        def losses(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            real, labels = batch[0], (batch[1] if len(batch) > 1 else None)
            outputs, mu, logvar = net(real, labels)
            recon = reconstruction_loss(outputs, real, spans, self.net.log_sigma)
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
            return recon + beta * kl, kl

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            loss, kl = losses(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check_gradients(self.net.parameters(), max_norm=100.0, name=NAME)
            optimizer.step()
            self.net.log_sigma.data.clamp_(np.log(0.01), 0.0)
            return {"loss": loss.detach(), "kl": kl.detach()}

        tensors = (torch.from_numpy(x),) + ((torch.from_numpy(cond),) if cond is not None else ())
        return fit_loop(
            name=NAME,
            modules={"net": self.net},
            optimizers={"adam": optimizer},
            step=step,
            data=tensors,
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=lambda batch: losses(batch)[0],
        )

    def check_conditions(self, conditions: Conditions) -> None:
        check_conditions(self.encoder, conditions, NAME)

    def sample(
        self, n: int, *, conditions: Conditions | None, seed: int, batch_size: int
    ) -> Iterator[pa.Table]:
        self.net.eval()

        def render(cond: torch.Tensor | None, size: int, generator: torch.Generator) -> torch.Tensor:
            z = torch.randn((size, self.config.latent_dim), generator=generator, device=self.device)
            return sample_spans(self.net.decode(z, cond), self.encoder.spans, self.net.log_sigma, generator)

        return stream_rows(
            n,
            conditions=conditions,
            seed=seed,
            batch_size=batch_size,
            encoder=self.encoder,
            cond_probs=self.cond_probs,
            device=self.device,
            render=render,
            model=NAME,
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def fitted_state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.to_state(), "cond_probs": self.cond_probs}

    def restore(self, state: dict[str, Any]) -> None:
        self.encoder = TableEncoder.from_state(state["encoder"])
        self.cond_probs = list(state["cond_probs"])
        num_continuous = sum(span.kind == "continuous" for span in self.encoder.spans)
        self.net = VAENet(self.encoder.width, len(self.cond_probs), num_continuous, self.config).to(
            self.device
        )
