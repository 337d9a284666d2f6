"""A class-conditional convolutional VAE (CVAE; Sohn et al., 2015) with a Bernoulli pixel likelihood.

The encoder sees the image and its label and infers a diagonal Gaussian posterior over ``z``; the
decoder sees ``z`` and the label. Because the label reaches the decoder directly, ``z`` needs to
carry only what the label does not say (slant, thickness, style), so sampling a chosen label is
exact rather than rejection sampling.
Pixels scaled to [0, 1] are scored with a Bernoulli likelihood (cross-entropy against the grey
levels), which needs no noise scale to fit or tune and suits mostly dark-or-bright images such as
digits and documents.
Sampling draws ``z ~ N(0, T² I)`` with a temperature ``T`` < 1 and renders the decoder's mean: the
codes the encoder uses do not fill the prior, and its outskirts decode to ambiguous strokes.
Sampling speed is the decoder's cost: it runs a linear stem to a quarter-resolution map, a stride-2
transposed conv to half resolution and a sub-pixel conv (pixel shuffle; Shi et al., 2016) to full
resolution, so no convolution runs at full resolution. Any image size is handled as in the GAN:
both networks work at ``4 * ceil(size / 4)``; the encoder zero-pads, the decoder crops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.models.base import ModelConfig, register_model
from genai_pipeline.models.image import ImageSynthesizer, to_unit
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    adam,
    fit_loop,
    optimise,
)

NAME = "image VAE"


class ImageVAEConfig(ModelConfig):
    latent_dim: int = Field(default=16, ge=1, le=1024)
    channels: int = Field(default=32, ge=8, le=1024, multiple_of=8, description="width of the conv layers")
    label_dim: int = Field(default=16, ge=1, le=1024, description="size of the label embedding")
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    beta: float = Field(default=1.0, gt=0, le=100, description="weight of the KL term")
    temperature: float = Field(default=0.8, gt=0, le=2, description="scale of z when sampling")


def _grid(shape: tuple[int, int, int]) -> tuple[int, int]:
    """The quarter-resolution map both networks pass through."""
    height, width, _ = shape
    return math.ceil(height / 4), math.ceil(width / 4)


class Encoder(nn.Module):
    """Image and label → mean and log-variance of ``q(z | x, y)``."""

    def __init__(self, shape: tuple[int, int, int], num_labels: int, config: ImageVAEConfig):
        super().__init__()
        ch, rows, cols = config.channels, *_grid(shape)
        self.pad = (0, 4 * cols - shape[1], 0, 4 * rows - shape[0])
        self.body = nn.Sequential(
            nn.Conv2d(shape[2], ch, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
        )
        self.embed = nn.Embedding(num_labels, config.label_dim)
        self.head = nn.Linear(2 * ch * rows * cols + config.label_dim, 2 * config.latent_dim)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(F.pad(images, self.pad))
        # float: under bf16 autocast the KL term's sum would lose precision
        mu, logvar = self.head(torch.cat([h, self.embed(labels)], dim=1)).float().chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)


class Decoder(nn.Module):
    """``z`` and label → pixel logits (a Bernoulli mean per pixel after a sigmoid)."""

    def __init__(self, shape: tuple[int, int, int], num_labels: int, config: ImageVAEConfig):
        super().__init__()
        ch = config.channels
        self.shape = shape
        self.start = _grid(shape)
        self.channels = ch
        self.embed = nn.Embedding(num_labels, config.label_dim)
        self.stem = nn.Sequential(
            nn.Linear(config.latent_dim + config.label_dim, 2 * ch * self.start[0] * self.start[1]),
            nn.SiLU(),
        )
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, 4 * shape[2], 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([z, self.embed(labels)], dim=1))
        h = h.view(len(z), 2 * self.channels, *self.start)
        height, width, _ = self.shape
        return self.body(h)[:, :, :height, :width]


@register_model
class ImageVAE(ImageSynthesizer):
    family = "vae"
    name = NAME
    Config = ImageVAEConfig

    config: ImageVAEConfig
    decoder: Decoder

    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        indices = self.prepare(data, train, checkpoints)
        encoder = Encoder(self.shape, len(self.labels), self.config).to(self.device)
        parameters = [*encoder.parameters(), *self.decoder.parameters()]
        optimizer = adam(parameters, lr=self.config.learning_rate)
        beta = self.config.beta

        def losses(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            """Per image: reconstruction negative log-likelihood and KL(q(z|x,y) || N(0, I))."""
            images, y = batch
            mu, logvar = encoder(images, y)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            logits = self.decoder(z, y)
            targets = images.add(1).div(2)
            recon = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / len(y)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(y)
            return recon, kl

        private = self.plan.sgd(train) if self.plan is not None else None
        networks = {"encoder": encoder, "decoder": self.decoder}

        def objective(*rows: torch.Tensor) -> torch.Tensor:
            recon, kl = losses(rows)
            return recon + beta * kl

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            loss = optimise(
                objective, batch, optimizer, networks=networks, private=private, max_norm=1e3, name=NAME
            )
            return {"loss": loss}

        return fit_loop(
            name=NAME,
            modules={"encoder": encoder, "decoder": self.decoder},
            optimizers={"adam": optimizer},
            step=step,
            data=(to_unit(data.images), torch.from_numpy(indices)),
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=lambda batch: sum(losses(batch)),
            private=private,
            plan=self.plan,
        )

    def render(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn((len(labels), self.config.latent_dim), generator=generator, device=self.device)
        # 2 * sigmoid(l) - 1 = tanh(l / 2): the Bernoulli mean on the [-1, 1] scale
        return torch.tanh(self.decoder(z * self.config.temperature, labels) / 2)

    def networks(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def build(self, state: dict[str, Any]) -> None:
        self.decoder = Decoder(self.shape, len(self.labels), self.config).to(self.device)
