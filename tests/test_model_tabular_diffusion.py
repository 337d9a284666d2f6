"""The tabular diffusion model against the shared model contract, and its parts: the layout, the
masking of categories, the dequantised point masses and the ODE step."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
import torch
from model_contract import CPU, TableContract, mixed_table
from pydantic import ValidationError

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.models.noise_schedule import MaskSchedule, NoiseSchedule
from genai_pipeline.models.tabular_diffusion import (
    Dequantiser,
    SpanLayout,
    TabularDiffusion,
    TabularDiffusionConfig,
)

TINY: dict = {"width": 16, "depth": 1, "sampling_steps": 4}


class TestTabularDiffusion(TableContract):
    family = "diffusion"
    params: ClassVar[dict] = TINY


def test_layout_splits_and_joins_the_encoded_matrix() -> None:
    table = mixed_table()
    encoder = TableEncoder.fit(table, condition="kind")
    x, _ = encoder.encode(table)
    layout = SpanLayout(encoder.spans)
    numeric, tokens = layout.split(x)
    assert numeric.shape[1] == sum(span.kind == "continuous" for span in encoder.spans)
    assert tokens.shape[1] == len(layout.sizes) and (tokens < np.array(layout.sizes)).all()
    assert np.array_equal(layout.join(torch.from_numpy(numeric), torch.from_numpy(tokens)).numpy(), x)


def test_masking_follows_the_gaussian_schedule() -> None:
    schedule = NoiseSchedule(100)
    masks = MaskSchedule(schedule, [3, 5])
    tokens = torch.zeros((20_000, 2), dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    for t in (10, 50, 90):
        noisy = masks.add_noise(tokens, torch.full((len(tokens),), t), generator)
        assert set(noisy[:, 0].tolist()) <= {0, 3} and set(noisy[:, 1].tolist()) <= {0, 5}
        share = masks.is_masked(noisy).float().mean()
        assert abs(share - (1 - schedule.alphas_cumprod[t])) < 0.01
    assert torch.equal(masks.add_noise(tokens, torch.full((len(tokens),), -1)), tokens)


def test_unmasking_keeps_drawn_tokens_and_ends_with_none_masked() -> None:
    schedule = NoiseSchedule(100)
    masks = MaskSchedule(schedule, [3, 5])
    generator = torch.Generator().manual_seed(0)
    # the network is sure of categories 2 and 4; a token already drawn (1) must stay
    logits = [torch.tensor([[-9.0, -9.0, 9.0]]), torch.tensor([[-9.0] * 4 + [9.0]])]
    logits = [span.expand(1000, -1) for span in logits]
    tokens = masks.masks.expand(1000, -1).clone()
    tokens[:10, 0] = 1
    levels = masks.levels(1000, generator, CPU)
    halfway = masks.step(logits, 49, tokens, levels, generator)
    assert torch.equal(halfway[:10, 0], torch.ones(10, dtype=torch.long))
    revealed = ~masks.is_masked(halfway)
    assert torch.equal(revealed[10:], levels[10:] <= schedule.alphas_cumprod[49])
    assert set(halfway[10:, 0][revealed[10:, 0]].tolist()) == {2}
    done = masks.step(logits, -1, halfway, levels, generator)
    assert not masks.is_masked(done).any() and set(done[10:, 1].tolist()) == {4}


def test_levels_are_uniform_and_a_rows_columns_take_different_slices() -> None:
    masks = MaskSchedule(NoiseSchedule(100), [2, 2, 2, 2])
    levels = masks.levels(20_000, torch.Generator().manual_seed(0), CPU)
    assert torch.equal((levels * 4).floor().sort(dim=1).values, torch.arange(4.0).expand(20_000, -1))
    counts = torch.histc(levels[:, 0], bins=10, min=0, max=1)
    assert (abs(counts / 20_000 - 0.1) < 0.01).all()


def test_point_masses_are_spread_over_their_share_and_decode_to_their_value() -> None:
    """A value held by 60 % of the rows covers the first 60 % of the CDF: training sees its z spread
    uniformly over that interval, and the encoder decodes every such z back to the value. Other
    values stay as they are; a null's placeholder is spread over the whole range."""
    rng = np.random.default_rng(0)
    values = np.where(rng.random(2000) < 0.6, 0.0, rng.uniform(1, 100, 2000))
    table = pa.table({"gain": pa.array(values, mask=np.arange(2000) < 100)})
    encoder = TableEncoder.fit(table)
    x, _ = encoder.encode(table)
    layout = SpanLayout(encoder.spans)
    numeric, _ = layout.split(x)
    missing = layout.missing(x)
    dequantiser = Dequantiser(encoder, CPU)
    entries = dequantiser.entries(numeric, missing)
    generator = torch.Generator().manual_seed(0)
    spread = dequantiser.spread(torch.from_numpy(numeric), torch.from_numpy(entries), generator)[:, 0]
    null, entries = missing[:, 0], entries[:, 0]
    zero, other = ~null & (values == 0), ~null & (values != 0)
    assert (entries[null] == 0).all() and (entries[zero] == 1).all() and (entries[other] == -1).all()
    (_, low, high), *_ = encoder.codecs[0].spikes
    probs = torch.special.ndtr(spread[zero]).double()
    assert low <= probs.min() < low + 0.01 and high - 0.01 < probs.max() <= high
    assert torch.equal(spread[other], torch.from_numpy(numeric[other, 0]))
    assert abs(float(torch.special.ndtr(spread[null]).mean()) - 0.5) < 0.1
    x[:, 0] = spread.numpy()
    decoded = encoder.decode(x, None, seed=0).column("gain").to_numpy(zero_copy_only=False)
    assert np.isnan(decoded[null]).all() and (decoded[zero] == 0).all()


def test_the_ode_step_keeps_an_independent_standard_normal_column_standard_normal() -> None:
    """For standard normal data the best estimate of v is 0 at every step: the sampler must then
    leave the noise as it is, where DDIM would shrink it."""
    for prediction in ("v", "epsilon"):
        schedule = NoiseSchedule(1000, prediction=prediction)
        x = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0))
        start = x
        timesteps = schedule.timesteps(5).tolist()
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1]):
            # the exact estimates for N(0, 1) data: ε = sqrt(1 - alpha_bar_t) x, v = 0
            output = (1 - schedule.alphas_cumprod[t]).sqrt() * x if prediction == "epsilon" else 0 * x
            x = schedule.angular_step(output, t, t_prev, x)
        assert torch.allclose(x, start, atol=1e-4)


def test_categories_start_from_their_marginals() -> None:
    rng = np.random.default_rng(0)
    table = pa.table({"c": rng.choice(["a", "b"], size=400, p=[0.9, 0.1]), "x": rng.normal(size=400)})
    model = TabularDiffusion(TabularDiffusionConfig.model_validate(TINY), device=CPU)
    model.fit(TabularData(table), TrainSpec(epochs=1, batch_size=400, device="cpu"), None)
    logits = model.ema.out[-1].bias[1:]
    assert torch.allclose(torch.softmax(logits, 0), torch.tensor([0.9, 0.1]), atol=0.05)


@pytest.mark.parametrize(
    "columns",
    [
        {"x": np.linspace(0, 1, 200), "y": np.random.default_rng(0).exponential(size=200)},
        {"c": ["a", "b", "c", "d"] * 50, "flag": [True, False] * 100},
    ],
    ids=["numbers only", "categories only"],
)
def test_tables_without_label_numbers_or_categories(columns: dict) -> None:
    table = pa.table(columns)
    model = TabularDiffusion(TabularDiffusionConfig.model_validate(TINY), device=CPU)
    model.fit(TabularData(table), TrainSpec(epochs=1, batch_size=50, device="cpu"), None)
    (batch,) = model.sample(10, conditions=None, seed=0, batch_size=10)
    assert batch.schema.equals(table.schema) and batch.num_rows == 10


def test_config_has_bounds() -> None:
    with pytest.raises(ValidationError, match="sampling_steps cannot exceed train_timesteps"):
        TabularDiffusionConfig(train_timesteps=10, sampling_steps=20)
    with pytest.raises(ValidationError):
        TabularDiffusionConfig(width=0)
    with pytest.raises(ValidationError):
        TabularDiffusionConfig(nope=1)
