"""The one model interface, its registry, and how a model is saved and loaded.

Every family and modality implements :class:`Synthesizer`. A ``@register_model`` line maps
``(modality, family)`` to the class, so the job spec picks a model by name and adding a family is
one module in this package plus one decorator (the package imports every module in it);
:func:`model_config_for` checks a job's ``model`` section against the family's ``Config``.

A saved model is a folder with ``model.json`` (family, config, fitted state such as encoders and
label maps, versions) and ``weights.safetensors``. Loading rebuilds the networks from the config
and state and then loads tensors: nothing is unpickled, so a model file cannot execute code.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from pydantic import ConfigDict, ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

import genai_pipeline
from genai_pipeline.config import JobSpec, TrainSpec
from genai_pipeline.datasets.base import Dataset
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError, format_validation_error
from genai_pipeline.storage import Storage
from genai_pipeline.strict import StrictModel
from genai_pipeline.training import CheckpointStore, FitReport


class ModelConfig(StrictModel):
    """Base of every family's hyper-parameters: as strict as the job spec (unknown keys, and
    true/false for a number, are errors), and frozen, since a fitted model's config is its identity."""

    model_config = ConfigDict(frozen=True)


@dataclass(frozen=True)
class ImageBatch:
    """Generated images (uint8 NHWC) and the label each was conditioned on."""

    images: np.ndarray
    labels: np.ndarray


Batch = pa.Table | ImageBatch
Conditions = Mapping[str, Any]


class Synthesizer(ABC):
    """Fit on a dataset, then stream samples; save and load without pickling."""

    family: ClassVar[str]
    modality: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    #: ``generate.precision: auto`` samples in bfloat16 where the device computes it natively:
    #: measured 1.2–3× faster with the same fidelity, except where noted by a family
    bfloat16_sampling: ClassVar[bool] = True
    #: why the family cannot train with differential privacy (``train.privacy``); None: it can
    no_private_training: ClassVar[str | None] = None
    #: whether the family trains on a table's rows read a few row groups at a time
    #: (``train.in_memory_rows``; ``models.tabular.TabularSynthesizer.training_rows``)
    streams: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, *, device: torch.device):
        self.config = config
        self.device = device

    @abstractmethod
    def fit(self, data: Dataset, train: TrainSpec, checkpoints: CheckpointStore | None) -> FitReport:
        """Learn from the data with the shared training loop."""

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        conditions: Conditions | None,
        seed: int,
        batch_size: int,
        rows: RowStream | None = None,
    ) -> Iterator[Batch]:
        """Yield ``n`` samples in batches of at most ``batch_size``; never one giant array. ``rows``
        places them in the run (which rows of how many): tables make their fresh columns from it."""

    @abstractmethod
    def check_conditions(self, conditions: Conditions) -> None:
        """Raise ConfigError naming ``generate.conditions.<key>`` when a condition cannot be met."""

    @classmethod
    @abstractmethod
    def check_plan(cls, data: Dataset, config: ModelConfig, plan: Sequence[Conditions]) -> None:
        """Raise ConfigError naming ``generate.conditions.<key>`` when a model of this class,
        trained on ``data`` with ``config``, could not meet the conditions of every part of a
        sampling plan: checked at ingest, so an impossible request fails before training."""

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The modules whose weights make up the model."""

    @abstractmethod
    def fitted_state(self) -> dict[str, Any]:
        """JSON-able state learned from data (encoders, label maps) needed to sample later."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the networks from :meth:`fitted_state` (weights are loaded afterwards)."""

    @abstractmethod
    def build(self, state: dict[str, Any]) -> None:
        """Build the family's networks once the modality's shared state is restored (``state``
        also holds the family's own parts)."""

    def save(self, storage: Storage, rel: str) -> None:
        meta = {
            "family": self.family,
            "modality": self.modality,
            "config": self.config.model_dump(mode="json"),
            "state": self.fitted_state(),
            "versions": {"genai_pipeline": genai_pipeline.__version__, "torch": torch.__version__},
        }
        tensors = {
            f"{name}.{key}": value.detach().cpu().contiguous()
            for name, module in self.networks().items()
            for key, value in module.state_dict().items()
        }
        storage.write_bytes(f"{rel}/weights.safetensors", save_tensors(tensors))
        storage.write_bytes(f"{rel}/model.json", json.dumps(meta, indent=1).encode())


def load_model(storage: Storage, rel: str, device: torch.device) -> Synthesizer:
    """Rebuild a saved model from its config and state, then load its tensors."""
    meta = json.loads(storage.read_bytes(f"{rel}/model.json"))
    cls = model_class(meta["modality"], meta["family"])
    model = cls(cls.Config.model_validate(meta["config"]), device=device)
    model.restore(meta["state"])
    tensors = load_tensors(storage.read_bytes(f"{rel}/weights.safetensors"))
    for name, module in model.networks().items():
        prefix = f"{name}."
        module.load_state_dict(
            {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        )
        module.to(device).eval()
    return model


_REGISTRY: dict[tuple[str, str], type[Synthesizer]] = {}


def register_model(cls: type[Synthesizer]) -> type[Synthesizer]:
    """Class decorator: make a Synthesizer selectable by ``(modality, family)``."""
    _REGISTRY[(cls.modality, cls.family)] = cls
    return cls


def model_class(modality: str, family: str) -> type[Synthesizer]:
    try:
        return _REGISTRY[(modality, family)]
    except KeyError:
        available = sorted(f for m, f in _REGISTRY if m == modality)
        raise ConfigError(
            f"model.family: no {family!r} model for {modality} data yet (available: {', '.join(available)})"
        ) from None


def model_config_for(job: JobSpec, *, source: str = "job") -> ModelConfig:
    """The job's model hyper-parameters validated by its family's config (errors name the field)."""
    try:
        cls = model_class(job.dataset.modality, job.model.family)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if job.train.privacy is not None and cls.no_private_training:
        raise ConfigError(
            f"{source}: train.privacy: the {cls.family} model for {cls.modality}s {cls.no_private_training}"
        )
    relations = job.dataset.relations
    children = [name for name, key in (relations.context if relations else {}).items() if key is not None]
    if children and not getattr(cls, "completes_rows", False):
        raise ConfigError(
            f"{source}: model.family: {cls.family} cannot generate {children[0]} per row of its parent "
            "table (the autoregressive, VAE and diffusion families can)"
        )
    try:
        return cls.Config.model_validate(job.model.params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{source}: ", section="model")) from None


def require_condition_values(
    key: str, value: Any, known: list[Any], *, field: str | None = None, absent: str = "is not a known value"
) -> None:
    """A condition value must be one the model (or the data) has; compare as the user wrote it.
    The error names ``field`` (default ``generate.conditions.<key>``)."""
    if not any(value == item or str(value) == str(item) for item in known):
        shown = ", ".join(map(str, known[:20])) + (" …" if len(known) > 20 else "")
        raise ConfigError(f"{field or f'generate.conditions.{key}'}: {value!r} {absent} (known: {shown})")


def native_bfloat16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, stay with float32
        return frozenset()
    return frozenset(word for line in info.splitlines() if line.startswith("flags") for word in line.split())


@contextmanager
def sampling_precision(model: Synthesizer, precision: str) -> Iterator[None]:
    """Sample under ``generate.precision``: ``float32``, ``bfloat16`` (autocast: matrix products
    in bfloat16, reductions and the drawn values in float32), or ``auto``: bfloat16 where it is
    native and the family gains from it."""
    native = native_bfloat16(model.device) and model.bfloat16_sampling
    if precision == "bfloat16" or (precision == "auto" and native):
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
