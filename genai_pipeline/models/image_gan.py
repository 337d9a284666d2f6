"""A class-conditional DCGAN with a spectrally normalised projection discriminator and hinge loss.

The generator is DCGAN-shaped (a linear stem to a quarter-resolution map, two upsampling conv
blocks, tanh output; group norm where DCGAN has batch norm), conditioned by concatenating a label
embedding to the noise, with a mode-seeking term against collapse within a class.
The discriminator uses spectral normalisation and the projection trick of Miyato & Koyama (2018),
trained with the hinge loss; an exponential moving average of the generator's weights is what
samples, which steadies GAN output considerably at no training cost.
Any image size is handled: the generator works at ``ceil(size / 4)`` and crops its output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.models.base import ModelConfig, register_model
from genai_pipeline.models.image import ImageSynthesizer, to_unit
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    adam,
    check_gradients,
    fit_loop,
    frozen_copy,
    maybe_compile,
    update_ema,
)


class ImageGANConfig(ModelConfig):
    latent_dim: int = Field(default=64, ge=1, le=1024)
    channels: int = Field(default=64, ge=8, le=1024, multiple_of=8, description="width of the conv layers")
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = Field(default=1, ge=1, le=10, description="discriminator steps per generator step")
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    mode_seeking: float = Field(default=0.1, ge=0, le=100, description="weight of the diversity term")


class Generator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_labels: int, config: ImageGANConfig):
        super().__init__()
        height, width, channels = shape
        ch = config.channels
        self.shape = shape
        self.start = (math.ceil(height / 4), math.ceil(width / 4))
        self.embed = nn.Embedding(num_labels, config.latent_dim)
        # group norm instead of batch norm: it behaves the same in training and sampling, where
        # batch norm's running statistics do not match the generator and collapse its output
        self.stem = nn.Sequential(
            nn.Linear(2 * config.latent_dim, 2 * ch * self.start[0] * self.start[1]),
            nn.ReLU(),
        )
        self.body = nn.Sequential(
            nn.GroupNorm(8, 2 * ch),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ch, ch // 2, 3, padding=1),
            nn.GroupNorm(4, ch // 2),
            nn.ReLU(),
            nn.Conv2d(ch // 2, channels, 3, padding=1),
            nn.Tanh(),
        )
        self.channels = ch

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([z, self.embed(labels)], dim=1))
        h = h.view(len(z), 2 * self.channels, *self.start)
        height, width, _ = self.shape
        return self.body(h)[:, :, :height, :width]


class Discriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_labels: int, config: ImageGANConfig):
        super().__init__()
        ch = config.channels
        channels = shape[2]
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, ch // 2, 3, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(ch // 2, ch, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
        )
        # +1 channel: the minibatch standard deviation (ProGAN), which lets the discriminator see
        # a batch without variety and so keeps the generator from collapsing within a class
        self.head = nn.Sequential(
            spectral_norm(nn.Conv2d(2 * ch + 1, 2 * ch, 3, padding=1)), nn.LeakyReLU(0.2)
        )
        self.linear = spectral_norm(nn.Linear(2 * ch, 1))
        self.embed = spectral_norm(nn.Embedding(num_labels, 2 * ch))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(images)
        spread = h.std(dim=0, unbiased=False).mean().expand(len(h), 1, *h.shape[2:])
        features = self.head(torch.cat([h, spread], dim=1)).sum(dim=(2, 3))
        return self.linear(features)[:, 0] + (self.embed(labels) * features).sum(dim=1)


@register_model
class ImageGAN(ImageSynthesizer):
    family = "gan"
    no_private_training = (
        "cannot train with differential privacy: its spectral normalisation updates the "
        "discriminator's state from every batch, which per-row gradients do not allow (use the "
        "diffusion, vae or autoregressive family)"
    )
    name = "image GAN"
    cpu_chunk = 64  # a conv net's activations for 64 images stay in cache: 2.5x faster than 500
    Config = ImageGANConfig

    config: ImageGANConfig

    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        indices = self.prepare(data, train, checkpoints)
        discriminator = Discriminator(self.shape, len(self.labels), self.config).to(self.device)
        opt_g = adam(self.generator.parameters(), lr=self.config.learning_rate, betas=self.config.betas)
        opt_d = adam(discriminator.parameters(), lr=self.config.learning_rate, betas=self.config.betas)
        latent, d_steps = self.config.latent_dim, self.config.d_steps
        generator, critic = (
            maybe_compile(net, train, self.device) for net in (self.generator, discriminator)
        )

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            real, y = batch
            for _ in range(d_steps):
                z = torch.randn(len(real), latent, device=real.device)
                with torch.no_grad():
                    fake = generator(z, y)
                d_loss = F.relu(1 - critic(real, y)).mean() + F.relu(1 + critic(fake, y)).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                check_gradients(discriminator.parameters(), max_norm=1e3, name="image GAN discriminator")
                opt_d.step()
            # mode seeking (Mao et al., 2019): two noise vectors for each label must give images
            # as far apart as the vectors are, or the generator collapses within each class
            z = torch.randn(2 * len(real), latent, device=real.device)
            fake = generator(z, torch.cat([y, y]))
            g_loss = -critic(fake, torch.cat([y, y])).mean()
            first, second = fake.chunk(2)
            z1, z2 = z.chunk(2)
            seeking = (first - second).abs().mean() / (z1 - z2).abs().mean()
            g_loss = g_loss + self.config.mode_seeking / (seeking + 1e-5)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            check_gradients(self.generator.parameters(), max_norm=1e3, name="image GAN generator")
            opt_g.step()
            update_ema(self.ema, self.generator, opt_g, self.config.ema_decay)
            return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

        return fit_loop(
            name="image GAN",
            modules={"generator": self.generator, "ema": self.ema, "discriminator": discriminator},
            optimizers={"g": opt_g, "d": opt_d},
            step=step,
            data=(to_unit(data.images), torch.from_numpy(indices)),
            train=train,
            device=self.device,
            checkpoints=checkpoints,
        )

    def render(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn((len(labels), self.config.latent_dim), generator=generator, device=self.device)
        return self.ema(z, labels)

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.ema}

    def build(self, state: dict[str, Any]) -> None:
        self.generator = Generator(self.shape, len(self.labels), self.config).to(self.device)
        # the sampling copy is channels-last: oneDNN then skips its layout copies, 2.3 times the
        # images per second on this project's 2-core CPU (weights are saved contiguous either way)
        self.ema = frozen_copy(self.generator).to(memory_format=torch.channels_last)
