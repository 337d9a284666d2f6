"""A class-conditional autoregressive image model: a causal transformer over patches of quantised pixels.

Pixels are quantised to ``levels`` intensities per channel and the image is cut into
``patch_size``² patches in raster order, one transformer token each. A token's input is a
PixelCNN-style masked 3×3 convolution over the patch grid (the patches left, up-left, up and
up-right of it: pixels on either side of a patch edge are one layer apart, not left for attention
to find) plus a learned position and the label embedding. The transformer's state at token ``t``
predicts patch ``t``'s pixels one after another with a NADE-style head (Larochelle & Murray,
2011): a small MLP reads that state plus the summed embeddings of the patch's pixels already drawn.
Every pixel is conditioned on every pixel before it, as in a PixelCNN, so the likelihood is exact
and training is one teacher-forced pass with cross-entropy over the levels.

Sampling speed is the point of the patches. A PixelCNN runs its whole network once per pixel;
here the transformer runs once per patch (49 steps for a 28×28 image at 4×4 patches, not 784), on
one new token at a time with a key/value cache so earlier tokens are never recomputed, and only
the head's small MLP runs once per pixel; whole batches are drawn together.

Label consistency comes from classifier-free guidance (Ho & Salimans, 2022) as in the diffusion
model: labels are dropped some of the time in training, and each pixel's logits are pushed away
from the unlabelled model's at sampling (the batch runs twice, with and without its labels). An
exponential moving average of the weights is what samples, and a temperature below 1 trims the
tails of each pixel's distribution, where an autoregressive model's stray specks come from.
Any image size is handled by padding the bottom and right edges to whole patches (the model learns
that padding is dark) and cropping samples; colour channels are more sub-pixels of each patch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.models.base import ModelConfig, register_model
from genai_pipeline.models.image import ImageSynthesizer
from genai_pipeline.training import (
    CheckpointStore,
    FitReport,
    adam,
    fit_loop,
    frozen_copy,
    maybe_compile,
    optimise,
    update_ema,
)

NAME = "image autoregressive model"
# one sub-pixel's logits for every row → the levels drawn (one per image: guidance combines rows)
Draw = Callable[[torch.Tensor], torch.Tensor]


class ImageAutoregressiveConfig(ModelConfig):
    patch_size: int = Field(default=4, ge=1, le=16, description="pixels per side of one transformer token")
    levels: int = Field(
        default=16, ge=2, le=256, description="quantised intensities per channel (256 is lossless)"
    )
    width: int = Field(default=96, ge=8, le=2048, description="size of the transformer's token states")
    head_width: int = Field(default=48, ge=8, le=2048, description="size of the per-pixel head's states")
    depth: int = Field(default=4, ge=1, le=48, description="transformer blocks")
    heads: int = Field(default=4, ge=1, le=64, description="attention heads; must divide width")
    learning_rate: float = Field(default=2e-3, gt=0, le=1)
    ema_decay: float = Field(
        default=0.999, ge=0, lt=1, description="weight averaging for the sampling network"
    )
    temperature: float = Field(default=0.9, gt=0, le=2, description="softmax temperature when sampling")
    guidance_scale: float = Field(
        default=2.0, ge=0, le=20, description="classifier-free guidance: 1 = none, higher = more label-like"
    )
    label_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="share of training images seen without their label"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageAutoregressiveConfig:
        if self.width % self.heads:
            raise ValueError("heads must divide width")
        if self.guidance_scale != 1 and self.label_dropout == 0:
            raise ValueError(
                "guidance_scale other than 1 needs label_dropout > 0 to learn the unlabelled model"
            )
        return self


def quantise(images: np.ndarray, levels: int) -> torch.Tensor:
    """uint8 NHWC → NCHW level indices; 0 and 255 stay exact, so dark backgrounds stay dark."""
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).float().mul((levels - 1) / 255).round().to(torch.uint8)
    )


@dataclass
class KVCache:
    """One attention layer's keys and values for every token generated so far, ``(B, heads, T, d)``."""

    keys: torch.Tensor
    values: torch.Tensor


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention that sees only earlier tokens, in one pass or token by token."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, position: int = 0) -> torch.Tensor:
        """A whole sequence with a causal mask, or (with ``cache``) the one token at ``position``."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:
            cache.keys[:, :, position : position + length] = k
            cache.values[:, :, position : position + length] = v
            k, v = cache.keys[:, :, : position + length], cache.values[:, :, : position + length]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, position: int = 0) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), cache, position)
        return x + self.mlp(self.norm2(x))


class PatchHead(nn.Module):
    """A patch's sub-pixels one after another, each from its token's state and the ones drawn before."""

    def __init__(self, sub_pixels: int, levels: int, state_width: int, width: int):
        super().__init__()
        self.project = nn.Linear(state_width, width)
        # one embedding per (sub-pixel, level): where a value sits in the patch matters
        self.values = nn.Embedding(sub_pixels * levels, width)
        self.register_buffer("offsets", torch.arange(sub_pixels) * levels, persistent=False)
        self.position = nn.Parameter(torch.randn(sub_pixels, width) * 0.02)
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, levels)
        )

    def forward(self, state: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``(B, T, d)`` states and ``(B, T, K)`` true levels → ``(B, T, K, levels)``."""
        embedded = self.values(patches.long() + self.offsets)
        before = F.pad(embedded.cumsum(dim=2)[:, :, :-1], (0, 0, 1, 0))
        return self.mlp(self.project(state)[:, :, None] + before + self.position)

    def sample(self, state: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``(B, d)`` states → ``(B', K)`` levels drawn in order by ``draw``.

        ``draw`` may combine rows (guidance pairs each image with its unlabelled twin) and return
        fewer values than there are states; each value is then given back to all its rows.
        """
        context, drawn = self.project(state), []
        for k, position in enumerate(self.position):
            values = draw(self.mlp(context + position).float())
            drawn.append(values)
            context = context + self.values(values.repeat(len(state) // len(values)) + self.offsets[k])
        return torch.stack(drawn, dim=1)


class PatchTransformer(nn.Module):
    """Label and earlier patches → the distribution of each patch's quantised pixels."""

    def __init__(self, shape: tuple[int, int, int], num_labels: int, config: ImageAutoregressiveConfig):
        super().__init__()
        height, width, channels = shape
        self.shape, self.patch, self.levels = shape, config.patch_size, config.levels
        self.grid = (math.ceil(height / self.patch), math.ceil(width / self.patch))
        sub_pixels = channels * self.patch**2
        # a token's input is its causal neighbourhood: the patches left, up-left, up and up-right of
        # it (a PixelCNN "A" mask over the patch grid), so pixels across patch edges are one layer apart
        self.neighbours = nn.Conv2d(sub_pixels, config.width, 3)
        mask = torch.ones(3, 3)
        mask[1, 1:] = mask[2] = 0
        self.register_buffer("mask", mask, persistent=False)
        self.label = nn.Embedding(num_labels + 1, config.width)  # the last one is "no label"
        self.position = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config.width, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.head = PatchHead(sub_pixels, config.levels, config.width, config.head_width)

    def to_patches(self, levels: torch.Tensor) -> torch.Tensor:
        """NCHW levels → ``(B, T, K)``: padded to whole patches, patches in raster order."""
        height, width, _ = self.shape
        padded = F.pad(levels, (0, self.grid[1] * self.patch - width, 0, self.grid[0] * self.patch - height))
        return F.pixel_unshuffle(padded, self.patch).flatten(2).transpose(1, 2)

    def to_unit(self, levels: torch.Tensor) -> torch.Tensor:
        """Level indices → [-1, 1]."""
        return levels.float() * (2 / (self.levels - 1)) - 1

    def to_grid(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, T, K)`` levels → ``(B, K, rows, cols)`` patch grid in [-1, 1]."""
        return self.to_unit(patches.transpose(1, 2).unflatten(2, self.grid))

    def to_images(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, T, K)`` levels → NCHW in [-1, 1], cropped to the image size."""
        height, width, _ = self.shape
        return F.pixel_shuffle(self.to_grid(patches), self.patch)[:, :, :height, :width]

    def embed_neighbours(self, grid: torch.Tensor) -> torch.Tensor:
        """Masked 3×3 convolution over a zero-padded patch grid → ``(B, T', d)`` for the tokens it covers."""
        out = F.conv2d(grid, self.neighbours.weight * self.mask, self.neighbours.bias)
        return out.flatten(2).transpose(1, 2)

    def forward(self, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: token ``t`` sees the label and patches ``< t`` and scores patch ``t``."""
        x = (
            self.embed_neighbours(F.pad(self.to_grid(patches), (1, 1, 1, 1)))
            + self.position
            + self.label(labels)[:, None]
        )
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x), patches)

    def generate(self, labels: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``(B', T, K)`` levels, one token per transformer pass, earlier tokens held in the caches.

        ``labels`` may list each image's unlabelled twin after the images, for ``draw`` to combine.
        """
        rows, tokens = len(labels), len(self.position)
        attention = self.blocks[0].attention
        cache_shape = (rows, attention.heads, tokens, self.position.shape[1] // attention.heads)
        caches = [
            KVCache(self.position.new_empty(cache_shape), self.position.new_empty(cache_shape))
            for _ in self.blocks
        ]
        label = self.label(labels)
        # the zero-padded patch grid, filled in as patches are drawn; the mask hides the rest
        grid = self.position.new_zeros((rows, len(self.head.position), self.grid[0] + 2, self.grid[1] + 2))
        patches = []
        for t in range(tokens):
            row, col = divmod(t, self.grid[1])
            h = (
                self.embed_neighbours(grid[:, :, row : row + 3, col : col + 3])
                + self.position[t]
                + label[:, None]
            )
            for block, cache in zip(self.blocks, caches, strict=True):
                h = block(h, cache, t)
            patches.append(self.head.sample(self.norm(h[:, 0]), draw))
            grid[:, :, row + 1, col + 1] = self.to_unit(patches[-1]).repeat(rows // len(patches[-1]), 1)
        return torch.stack(patches, dim=1)


@register_model
class ImageAutoregressive(ImageSynthesizer):
    family = "autoregressive"
    name = NAME
    # images per second stop growing at about 256 a pass, and the key/value caches of a 4,096-image
    # batch would hold over a gigabyte
    cpu_chunk = 512
    # its attention over the cache in bfloat16 sampled 0.7× as fast on an AVX512-BF16 CPU, and
    # its drawn pixels differed from float32's for 2% of pixels by more than 8 levels
    bfloat16_sampling = False
    Config = ImageAutoregressiveConfig

    config: ImageAutoregressiveConfig
    network: PatchTransformer  # trained by the optimiser
    ema: PatchTransformer  # its moving average, which samples and is saved

    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        indices = self.prepare(data, train, checkpoints)
        parameters = list(self.network.parameters())
        optimizer = adam(parameters, lr=self.config.learning_rate)
        network = maybe_compile(self.network, train, self.device)

        def nll(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            """Mean negative log-likelihood per sub-pixel, in nats."""
            patches, y = batch
            logits = net(patches, y)
            return F.cross_entropy(logits.flatten(0, 2).float(), patches.flatten().long())

        private = self.plan.sgd(train) if self.plan is not None else None
        if private is not None:
            network = self.network

        def loss(patches: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            dropped = torch.rand(len(y), device=y.device) < self.config.label_dropout
            return nll(network, (patches, torch.where(dropped, len(self.labels), y)))

        def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
            value = optimise(
                loss,
                batch,
                optimizer,
                networks={"network": network},
                private=private,
                max_norm=1.0,
                name=NAME,
            )
            update_ema(self.ema, self.network, optimizer, self.config.ema_decay)
            return {"nll": value}

        # uint8 levels: a quarter of the memory of the float images the other models hold
        patches = self.network.to_patches(quantise(data.images, self.config.levels))
        return fit_loop(
            name=NAME,
            modules={"network": self.network, "ema": self.ema},
            optimizers={"adam": optimizer},
            step=step,
            data=(patches, torch.from_numpy(indices)),
            train=train,
            device=self.device,
            checkpoints=checkpoints,
            evaluate=lambda batch: nll(self.ema, batch),  # the sampling weights' held-out likelihood
            private=private,
            plan=self.plan,
        )

    def render(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale, temperature = self.config.guidance_scale, self.config.temperature

        def draw(logits: torch.Tensor) -> torch.Tensor:
            if scale != 1:  # classifier-free guidance, as in the diffusion model
                conditional, unconditional = logits.chunk(2)
                logits = torch.lerp(unconditional, conditional, scale)
            probs = F.softmax(logits / temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]

        if scale != 1:
            labels = torch.cat([labels, torch.full_like(labels, len(self.labels))])
        return self.ema.to_images(self.ema.generate(labels, draw))

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.ema}

    def build(self, state: dict[str, Any]) -> None:
        self.network = PatchTransformer(self.shape, len(self.labels), self.config).to(self.device)
        self.ema = frozen_copy(self.network)
