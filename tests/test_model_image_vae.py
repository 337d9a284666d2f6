"""The image VAE against the shared model contract, plus what is particular to it."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
from model_contract import CPU, ModelContract

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS, Dataset, ImageData
from genai_pipeline.models.image_vae import ImageVAE, ImageVAEConfig  # registers the model

PARAMS: dict = {"channels": 8, "latent_dim": 4, "label_dim": 4}


class TestImageVAE(ModelContract):
    modality, family = "image", "vae"
    params: ClassVar[dict] = PARAMS
    condition = ("label", "3")

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        images, labels = BUILTINS["digits"].load()
        return ImageData(images=images[:300], labels=labels[:300])

    def test_temperature_scales_the_variety(self, fitted: ImageVAE) -> None:
        """A colder prior gives samples of one label that differ less from each other."""
        cold = ImageVAE(ImageVAEConfig(**PARAMS, temperature=0.05), device=CPU)
        cold.restore(fitted.fitted_state())
        cold.decoder.load_state_dict(fitted.decoder.state_dict())

        def spread(model: ImageVAE) -> float:
            (batch,) = model.sample(50, conditions={"label": "3"}, seed=0, batch_size=50)
            return float(batch.images.astype(float).std(axis=0).mean())

        assert spread(cold) < spread(fitted) / 2


def test_any_size_and_colour_images() -> None:
    rng = np.random.default_rng(0)
    data = ImageData(images=rng.integers(0, 256, (60, 10, 13, 3), dtype=np.uint8), labels=["a", "b"] * 30)
    model = ImageVAE(ImageVAEConfig(**PARAMS), device=CPU)
    report = model.fit(data, TrainSpec(epochs=1, batch_size=20, device="cpu"), None)
    assert report.steps == 3
    batches = list(model.sample(9, conditions={"label": "b"}, seed=0, batch_size=5))
    assert [b.images.shape for b in batches] == [(5, 10, 13, 3), (4, 10, 13, 3)]
    assert all(b.images.dtype == np.uint8 and set(b.labels) == {"b"} for b in batches)


def test_early_stopping_reads_the_held_out_elbo() -> None:
    images, labels = BUILTINS["digits"].load()
    model = ImageVAE(ImageVAEConfig(**PARAMS), device=CPU)
    train = TrainSpec(epochs=3, batch_size=50, device="cpu", early_stopping_patience=5)
    report = model.fit(ImageData(images=images[:200], labels=labels[:200]), train, None)
    # 10% held out: 180 training images give 3 steps an epoch
    assert report.steps == 9
    assert report.validation_loss is not None and math.isfinite(report.validation_loss)
    assert report.validation_loss > 0
