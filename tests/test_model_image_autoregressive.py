"""The image autoregressive model against the shared model contract, plus what is particular to it."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pydantic
import pytest
import torch
from model_contract import CPU, ImageContract

from genai_pipeline.models.image_autoregressive import (  # registers the model
    ImageAutoregressive,
    ImageAutoregressiveConfig,
    PatchTransformer,
    quantise,
)

PARAMS: dict = {"patch_size": 2, "levels": 8, "width": 16, "head_width": 8, "depth": 1, "heads": 2}


class TestImageAutoregressive(ImageContract):
    family = "autoregressive"
    params: ClassVar[dict] = PARAMS
    # a mean per sub-pixel, in nats: below a uniform guess over the levels
    held_out_bound = math.log(PARAMS["levels"])

    def test_sampling_draws_from_the_distribution_training_scores(self, fitted: ImageAutoregressive) -> None:
        """The cached, token-by-token sampler sees the same logits as the one-pass teacher-forced net."""
        network, seen = fitted.ema, []

        def draw(logits: torch.Tensor) -> torch.Tensor:
            seen.append(logits)
            return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]

        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(6) % len(fitted.labels)
        with torch.no_grad():
            patches = network.generate(labels, draw)
            scored = network(patches, labels)
        sampled = torch.stack(seen, dim=1).unflatten(1, patches.shape[1:])
        torch.testing.assert_close(sampled, scored, atol=1e-4, rtol=1e-4)

    def test_guidance_makes_samples_more_label_like(self, fitted: ImageAutoregressive) -> None:
        """At a large guidance scale each label's samples move apart from the other labels'."""

        def mean_images(scale: float) -> np.ndarray:
            model = ImageAutoregressive(ImageAutoregressiveConfig(**PARAMS, guidance_scale=scale), device=CPU)
            model.restore(fitted.fitted_state())
            model.ema.load_state_dict(fitted.ema.state_dict())
            means = []
            for label in ("0", "1"):
                (batch,) = model.sample(60, conditions={"label": label}, seed=0, batch_size=60)
                means.append(batch.images.astype(float).mean(axis=0))
            return np.abs(means[0] - means[1]).mean()

        assert mean_images(4.0) > mean_images(1.0)

    def test_large_batches_are_drawn_in_chunks(
        self, fitted: ImageAutoregressive, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(ImageAutoregressive, "cpu_chunk", 4)
        (batch,) = fitted.sample(10, conditions={"label": "3"}, seed=0, batch_size=10)
        assert batch.images.shape == (10, 8, 8, 1) and set(batch.labels) == {"3"}
        # chunks are independent draws, not copies of the first
        assert not np.array_equal(batch.images[:4], batch.images[4:8])


def test_patches_round_trip_any_size_and_colour() -> None:
    """Padding to whole patches and back is lossless up to the quantisation."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 10, 13, 3), dtype=np.uint8)
    network = PatchTransformer((10, 13, 3), 2, ImageAutoregressiveConfig(**{**PARAMS, "patch_size": 4}))
    patches = network.to_patches(quantise(images, 8))
    assert patches.shape == (4, 3 * 4, 3 * 16)  # a 3×4 grid of 4×4 patches, three channels each
    back = network.to_images(patches)
    assert back.shape == (4, 3, 10, 13)
    error = np.abs((back.permute(0, 2, 3, 1).numpy() + 1) * 127.5 - images)
    assert error.max() <= 255 / 7 / 2 + 1e-3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"width": 16, "heads": 3}, "heads must divide width"),
        ({"guidance_scale": 2.0, "label_dropout": 0.0}, "needs label_dropout > 0"),
    ],
)
def test_inconsistent_configs_are_refused(params: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ImageAutoregressiveConfig(**params)
