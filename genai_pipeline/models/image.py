"""What every image model shares: pixel scaling, label bookkeeping and the sampling stream.

Image models are class-conditional: they learn from integer label indices and sample images for
requested (or frequency-weighted random) labels. :class:`LabelCodec` keeps the label names and their
real frequencies; :func:`stream_images` turns a model's ``render(labels, generator)`` into the
streamed batches the pipeline writes. :class:`ImageSynthesizer` holds the shape, the labels and the
sampling stream; a family implements training, its networks (``build``) and ``render``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets.base import Dataset, ImageData
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError, DatasetError
from genai_pipeline.models.base import (
    Conditions,
    ImageBatch,
    ModelConfig,
    Synthesizer,
    require_condition_values,
)
from genai_pipeline.privacy.dp import StatisticsBudget, dp_counts
from genai_pipeline.training import CheckpointStore, PrivacyPlan, batched_indices, seed_everything

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
    def fit(cls, data: ImageData, dp: StatisticsBudget | None = None) -> tuple[LabelCodec, np.ndarray]:
        """The codec and each image's label index; with ``dp``, the frequencies are a DP release
        (the label names are the dataset's folders: its schema, not a release)."""
        index = {name: i for i, name in enumerate(data.label_names)}
        indices = np.array([index[label] for label in data.labels], dtype=np.int64)
        counts = np.bincount(indices, minlength=len(index)).astype(np.float64)
        if dp is not None:
            counts = dp_counts(counts, dp) + 1e-9
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


class ImageSynthesizer(Synthesizer):
    """Shape, labels, conditions and the sampling stream; a family adds its networks."""

    modality = "image"
    name: ClassVar[str]  # in messages: "image GAN"
    #: images per ``render`` call when sampling on a CPU (see :func:`stream_images`; None: a batch)
    cpu_chunk: ClassVar[int | None] = None
    labels: LabelCodec
    shape: tuple[int, int, int]
    #: the differential-privacy budget of the training under way (None: no ``train.privacy``)
    plan: PrivacyPlan | None = None

    @abstractmethod
    def render(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images (NCHW in [-1, 1]) for these label indices."""

    def prepare(
        self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None = None
    ) -> np.ndarray:
        """Fit the labels and build the networks (seeded, so initial weights are reproducible);
        each image's label index, to train on. With ``train.privacy``, the label frequencies are a
        DP release from the model's budget (:attr:`plan`), which the family trains within; a
        resumed private training takes them from its checkpoint instead."""
        if not isinstance(data, ImageData):
            raise DatasetError(f"the {self.name} needs images")
        # the label frequencies: one histogram, no category set (the labels are the folders' names)
        self.plan = PrivacyPlan.of(train, rows=data.num_rows, histograms=1, selections=0)
        saved = self.plan.resumed(checkpoints) if self.plan is not None else None
        labels, indices = LabelCodec.fit(data, self.plan.statistics if self.plan and saved is None else None)
        seed_everything(train.seed)  # networks are built here, before fit_loop seeds
        self.restore(saved or {"shape": list(data.shape), "labels": labels.to_state()})
        if self.plan is not None:
            self.plan.released = self.fitted_state()
        return indices

    def check_conditions(self, conditions: Conditions) -> None:
        self.labels.check(conditions)

    @classmethod
    def check_plan(cls, data: Dataset, config: ModelConfig, plan: Sequence[Conditions]) -> None:
        if not isinstance(data, ImageData):
            raise DatasetError(f"the {cls.name} needs images")
        labels, _ = LabelCodec.fit(data)
        for conditions in plan:
            labels.check(conditions)

    def sample(
        self,
        n: int,
        *,
        conditions: Conditions | None,
        seed: int,
        batch_size: int,
        rows: RowStream | None = None,
    ) -> Iterator[ImageBatch]:
        """Images have no fresh columns: ``rows`` is not needed."""
        for module in self.networks().values():
            module.eval()
        return stream_images(
            n,
            conditions=conditions,
            seed=seed,
            batch_size=batch_size,
            labels=self.labels,
            device=self.device,
            render=self.render,
            cpu_chunk=self.cpu_chunk,
        )

    def fitted_state(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "labels": self.labels.to_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.shape = tuple(state["shape"])  # type: ignore[assignment]
        self.labels = LabelCodec.from_state(state["labels"])
        self.build(state)
