"""The tabular VAE and the image GAN against the shared model contract; the registry of families."""

from __future__ import annotations

import typing
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
from model_contract import CPU, ImageContract, TableContract

from genai_pipeline.config import ModelSpec, TrainSpec
from genai_pipeline.datasets import BUILTINS, Dataset, ImageData, TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import model_class


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
@pytest.mark.parametrize("family", typing.get_args(ModelSpec.model_fields["family"].annotation))
def test_every_family_is_registered_for_both_modalities(modality: str, family: str) -> None:
    cls = model_class(modality, family)
    assert (cls.modality, cls.family) == (modality, family)


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
