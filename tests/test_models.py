"""What every model shares (models/base.py): the registry of families, and sampling precision.

Each family is tested against the shared contract in ``test_model_<modality>_<family>.py``.
"""

from __future__ import annotations

import pytest
import torch
from model_contract import CPU

from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import build_job
from genai_pipeline.models import ModelConfig, base, model_class
from genai_pipeline.models.tabular import TabularSynthesizer


@pytest.mark.parametrize("modality", ["tabular", "image"])
@pytest.mark.parametrize("family", ["gan", "vae", "diffusion", "autoregressive"])
def test_every_family_is_registered_for_both_modalities(modality: str, family: str) -> None:
    cls = model_class(modality, family)
    assert (cls.modality, cls.family) == (modality, family)


def test_a_registered_family_is_a_valid_job_family_without_editing_the_spec(monkeypatch) -> None:
    job = {"name": "j", "dataset": {"uri": "builtin://penguins"}, "model": {"family": "copula", "rho": 0.5}}
    with pytest.raises(ConfigError, match="model.family: no 'copula' model for tabular data yet"):
        build_job(job)

    class CopulaConfig(ModelConfig):
        rho: float = 0.0

    copula = type("Copula", (TabularSynthesizer,), {"family": "copula", "Config": CopulaConfig})
    monkeypatch.setitem(base._REGISTRY, ("tabular", "copula"), copula)
    assert build_job(job).model.family == "copula"
    with pytest.raises(ConfigError, match="model.rho: expected a number, not true/false"):
        build_job({**job, "model": {"family": "copula", "rho": True}})


@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16"])
@pytest.mark.parametrize("family", ["vae", "autoregressive"])
def test_sampling_precision_is_bfloat16_only_where_asked_or_native_and_useful(
    monkeypatch: pytest.MonkeyPatch, family: str, precision: str
) -> None:
    cls = model_class("image", family)
    model = cls(cls.Config.model_validate({}), device=CPU)
    for native in (False, True):
        monkeypatch.setattr(base, "native_bfloat16", lambda device, native=native: native)
        with base.sampling_precision(model, precision):
            in_bfloat16 = (
                torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            )
        auto = native and family != "autoregressive"  # the image transformer samples slower in it
        assert in_bfloat16 == {"auto": auto, "float32": False, "bfloat16": True}[precision]
    assert not torch.is_autocast_enabled("cpu")
