"""What every image model shares: pixel scaling, label bookkeeping and the sampling stream.

Image models are class-conditional: they learn from integer label indices and sample images for
requested (or frequency-weighted random) labels. :class:`LabelCodec` keeps the label names and their
real frequencies; :func:`stream_images` turns a model's ``render(labels, generator)`` into the
streamed batches the pipeline writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genai_pipeline.datasets.base import ImageData
from genai_pipeline.errors import ConfigError
from genai_pipeline.models.base import Conditions, ImageBatch, require_condition_values
from genai_pipeline.training import batched_indices

Render = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] → uint8 NHWC."""
    scaled = images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


@dataclass(frozen=True)
class LabelCodec:
    """Label names (as the data spells them) and their real frequencies."""

    names: tuple[str, ...]
    probs: tuple[float, ...]

    @classmethod
    def fit(cls, data: ImageData) -> tuple[LabelCodec, np.ndarray]:
        """The codec and each image's label index."""
        index = {name: i for i, name in enumerate(data.label_names)}
        indices = np.array([index[label] for label in data.labels], dtype=np.int64)
        counts = np.bincount(indices, minlength=len(index))
        return cls(tuple(data.label_names), tuple((counts / counts.sum()).tolist())), indices

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelCodec:
        return cls(tuple(state["names"]), tuple(state["probs"]))

    def to_state(self) -> dict[str, Any]:
        return {"names": list(self.names), "probs": list(self.probs)}

    def __len__(self) -> int:
        return len(self.names)

    def check(self, conditions: Conditions) -> None:
        """Only ``label`` can be a condition, and only with a value the model saw."""
        for key, value in conditions.items():
            if key != "label":
                raise ConfigError(f"generate.conditions.{key}: images can be conditioned on their label only")
            require_condition_values(key, value, list(self.names))

    def draw(
        self, n: int, conditions: Conditions, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """``n`` label indices: the condition's, or drawn with the real frequencies."""
        if "label" in conditions:
            return torch.full(
                (n,), self.names.index(str(conditions["label"])), dtype=torch.long, device=device
            )
        probs = torch.tensor(self.probs, device=device)
        return torch.multinomial(probs, n, replacement=True, generator=generator)

    def decode(self, indices: torch.Tensor) -> np.ndarray:
        return np.array(self.names, dtype=object)[indices.cpu().numpy()].astype(str)


def stream_images(
    n: int,
    *,
    conditions: Conditions | None,
    seed: int,
    batch_size: int,
    labels: LabelCodec,
    device: torch.device,
    render: Render,
    cpu_chunk: int | None = None,
) -> Iterator[ImageBatch]:
    """Batches of rendered images (``render`` returns NCHW in [-1, 1]) with their labels.

    On a CPU, ``render`` is called on chunks of ``cpu_chunk`` images: a conv net's activations for a
    few dozen images stay in cache, for a whole batch they do not (the image GAN samples 2.5 times
    faster in chunks of 64 than of 500). A GPU takes the whole batch at once.
    """
    conditions = dict(conditions or {})
    labels.check(conditions)
    generator = torch.Generator(device=device).manual_seed(seed)
    for start, stop in batched_indices(n, batch_size):
        drawn = labels.draw(stop - start, conditions, generator, device)
        chunk = cpu_chunk if cpu_chunk and device.type == "cpu" else len(drawn)
        with torch.no_grad():
            rendered = [
                render(drawn[begin:end], generator) for begin, end in batched_indices(len(drawn), chunk)
            ]
        yield ImageBatch(images=to_uint8(torch.cat(rendered)), labels=labels.decode(drawn))
