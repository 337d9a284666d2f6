"""The tabular VAE against the shared model contract, plus what is particular to it."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
from model_contract import CPU, TableContract

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import model_class


class TestTabularVAE(TableContract):
    family = "vae"
    params: ClassVar[dict] = {"hidden": [32], "latent_dim": 8}


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
