"""The tabular VAE and the image GAN against the shared model contract; the registry of families."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
from model_contract import CPU, ImageContract, TableContract

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS, Dataset, ImageData, TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import build_job
from genai_pipeline.models import ModelConfig, base, model_class
from genai_pipeline.models.tabular import TabularSynthesizer


class TestTabularVAE(TableContract):
    family = "vae"
    params: ClassVar[dict] = {"hidden": [32], "latent_dim": 8}


class TestImageGAN(ImageContract):
    family = "gan"
    params: ClassVar[dict] = {"channels": 16, "latent_dim": 16}
    held_out_bound = None  # a GAN's losses say nothing about its samples

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        images, labels = BUILTINS["digits"].load()
        return ImageData(images=images[:400], labels=labels[:400])


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


@pytest.mark.parametrize("reveal_rate", [0.5, 0.0])
def test_tabular_vae_without_label(reveal_rate: float) -> None:
    """No label: columns can still be conditioned on, unless the model never learned to."""
    cls = model_class("tabular", "vae")
    model = cls(cls.Config(hidden=(16,), latent_dim=4, reveal_rate=reveal_rate), device=CPU)
    table = pa.table({"x": np.random.default_rng(0).normal(size=200), "c": ["a", "b"] * 100})
    model.fit(TabularData(table), TrainSpec(epochs=1, batch_size=50, device="cpu"), None)
    (batch,) = model.sample(10, conditions=None, seed=0, batch_size=10)
    assert batch.schema.equals(table.schema)
    if reveal_rate:
        (batch,) = model.sample(10, conditions={"c": "a"}, seed=0, batch_size=10)
        assert batch.column("c").to_pylist() == ["a"] * 10
        return
    with pytest.raises(
        ConfigError, match="generate.conditions.c: the tabular VAE was trained with reveal_rate 0"
    ):
        list(model.sample(10, conditions={"c": "a"}, seed=0, batch_size=10))


@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16"])
@pytest.mark.parametrize("family", ["vae", "autoregressive"])
def test_sampling_precision_is_bfloat16_only_where_asked_or_native_and_useful(
    monkeypatch: pytest.MonkeyPatch, family: str, precision: str
) -> None:
    import torch

    from genai_pipeline.models import base

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
