"""Generative models behind one interface; importing this package registers every family."""

from __future__ import annotations

from pydantic import ValidationError

from genai_pipeline.models import (  # noqa: F401  (importing registers the models)
    image_autoregressive,
    image_diffusion,
    image_gan,
    image_vae,
    tabular_autoregressive,
    tabular_diffusion,
    tabular_gan,
    tabular_vae,
)
from genai_pipeline.models.base import (
    Batch,
    ImageBatch,
    ModelConfig,
    Synthesizer,
    load_model,
    model_class,
    register_model,
)

__all__ = [
    "Batch",
    "ImageBatch",
    "ModelConfig",
    "Synthesizer",
    "load_model",
    "model_class",
    "model_config_for",
    "register_model",
]


def model_config_for(job: JobSpec, *, source: str = "job") -> ModelConfig:  # noqa: F821
    """The job's model hyper-parameters validated by its family's config (errors name the field)."""
    from genai_pipeline.config import format_validation_error
    from genai_pipeline.errors import ConfigError

    try:
        cls = model_class(job.dataset.modality, job.model.family)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return cls.Config.model_validate(job.model.params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{source}: ", section="model")) from None
