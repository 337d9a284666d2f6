"""The image GAN against the shared model contract."""

from __future__ import annotations

from typing import ClassVar

import pytest
from model_contract import ImageContract

from genai_pipeline.datasets import BUILTINS, Dataset, ImageData


class TestImageGAN(ImageContract):
    family = "gan"
    params: ClassVar[dict] = {"channels": 16, "latent_dim": 16}
    held_out_bound = None  # a GAN's losses say nothing about its samples

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        images, labels = BUILTINS["digits"].load()
        return ImageData(images=images[:400], labels=labels[:400])
