"""Generative models behind one interface; importing this package registers every family.

Every module in the package is imported here, so a family's module registers itself with its
``@register_model`` decorator: adding a family touches no other file.
"""

from __future__ import annotations

import importlib
import pkgutil

from genai_pipeline.models.base import (
    Batch,
    ImageBatch,
    ModelConfig,
    Synthesizer,
    load_model,
    model_class,
    model_config_for,
    register_model,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
