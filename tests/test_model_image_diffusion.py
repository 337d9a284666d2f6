"""The image diffusion model against the shared model contract, and its noise schedule."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from model_contract import CPU, ImageContract
from pydantic import ValidationError

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import ImageData
from genai_pipeline.models.image_diffusion import ImageDiffusion, ImageDiffusionConfig  # registers it
from genai_pipeline.models.noise_schedule import NoiseSchedule

TINY = {"channels": 8, "sampling_steps": 3}


class TestImageDiffusion(ImageContract):
    family = "diffusion"
    params: ClassVar[dict] = TINY


def make_model(**params: object) -> ImageDiffusion:
    return ImageDiffusion(ImageDiffusionConfig.model_validate({**TINY, **params}), device=CPU)


@pytest.mark.parametrize("params", [{}, {"guidance_scale": 1.0, "patch_size": 1, "prediction": "epsilon"}])
def test_any_image_size_is_padded_and_cropped(params: dict) -> None:
    rng = np.random.default_rng(0)
    data = ImageData(images=rng.integers(0, 256, (40, 7, 5, 3), dtype=np.uint8), labels=["a", "b"] * 20)
    model = make_model(**params)
    model.fit(data, TrainSpec(epochs=1, batch_size=20, device="cpu"), None)
    (batch,) = model.sample(6, conditions={"label": "b"}, seed=0, batch_size=6)
    assert batch.images.shape == (6, 7, 5, 3) and batch.images.dtype == np.uint8
    assert batch.labels.tolist() == ["b"] * 6


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sampling_steps": 50, "train_timesteps": 20}, "sampling_steps cannot exceed train_timesteps"),
        ({"guidance_scale": 3.0, "label_dropout": 0.0}, "needs label_dropout > 0"),
        ({"channels": 12}, "multiple of 8"),
    ],
)
def test_config_rejects_inconsistent_settings(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ImageDiffusionConfig.model_validate(params)


SCHEDULES = [
    pytest.param(NoiseSchedule(1000, beta_schedule=kind, prediction=prediction), id=f"{kind}-{prediction}")
    for kind in ("cosine", "linear")
    for prediction in ("epsilon", "v")
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_runs_from_clean_data_to_pure_noise(schedule: NoiseSchedule) -> None:
    alpha_bar = schedule.alphas_cumprod
    assert alpha_bar[0] > 0.999 and alpha_bar[-1] < 1e-3 and bool((alpha_bar.diff() < 0).all())
    x0 = torch.randn(8, 3, 4, 4)
    t = torch.zeros(8, dtype=torch.long)
    assert torch.allclose(schedule.add_noise(x0, torch.randn_like(x0), t), x0, atol=0.05)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(16, 5), (16, 1, 6, 6)], ids=["tabular", "image"])
def test_true_prediction_recovers_the_clean_data(schedule: NoiseSchedule, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    t = schedule.sample_timesteps(len(x0), device=CPU, generator=generator)
    xt = schedule.add_noise(x0, noise, t)
    estimate, noise_estimate = schedule.split(xt, schedule.target(x0, noise, t), t)
    assert torch.allclose(estimate, x0, atol=1e-3) and torch.allclose(noise_estimate, noise, atol=1e-3)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddim_step_with_the_true_noise_lands_on_the_forward_process(schedule: NoiseSchedule) -> None:
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(10, 4, generator=generator), torch.randn(10, 4, generator=generator)
    at = torch.full((10,), 600)
    xt = schedule.add_noise(x0, noise, at)
    output = schedule.target(x0, noise, at)
    assert torch.allclose(
        schedule.step(output, 600, 200, xt), schedule.add_noise(x0, noise, at - 400), atol=1e-4
    )
    assert torch.allclose(schedule.step(output, 600, -1, xt), x0, atol=1e-3)


def test_clipped_step_keeps_the_clean_estimate_in_range() -> None:
    schedule = NoiseSchedule(100)
    xt = torch.full((4, 3), 5.0)
    assert schedule.step(torch.zeros(4, 3), 50, -1, xt, clip=1.0).abs().max() <= 1.0 + 1e-6


def test_ddim_timesteps_start_at_pure_noise_and_descend() -> None:
    schedule = NoiseSchedule(1000)
    steps = schedule.timesteps(10)
    assert steps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert schedule.timesteps(1000).tolist() == list(range(999, -1, -1))
    for n in (3, 7):
        uneven = schedule.timesteps(n)
        assert len(uneven.unique()) == n and uneven[0] == 999 and bool((uneven.diff() < 0).all())
    with pytest.raises(ValueError, match="between 1 and 1000"):
        schedule.timesteps(1001)
