"""The tabular autoregressive model against the shared contract, plus what its tokens promise:
numerics inside the real range, real values of spiky columns, null rates."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from model_contract import CPU, TableContract
from scipy.special import ndtr, ndtri

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import TabularData
from genai_pipeline.models import Synthesizer
from genai_pipeline.models.tabular_autoregressive import (
    ColumnwiseNet,
    TabularAutoregressive,
    fit_bins,
    released_bins,
)
from genai_pipeline.privacy import dp

SMALL = {"embedding_dim": 8, "hidden": [16], "max_bins": 16}


class TestTabularAutoregressive(TableContract):
    family = "autoregressive"
    params: ClassVar[dict] = SMALL

    def test_numerics_stay_inside_the_real_range(self, fitted: Synthesizer, data: TabularData) -> None:
        synthetic = pa.concat_tables(self._collect(fitted, 500, seed=3))
        for name in ("bill_length_mm", "flipper_length_mm", "body_mass_g"):
            low, high = pc.min_max(data.table.column(name)).values()
            values = synthetic.column(name).drop_null()
            assert pc.min(values).as_py() >= low.as_py() and pc.max(values).as_py() <= high.as_py()


def test_fit_bins_keep_few_values_and_spikes_exact() -> None:
    lo, hi = fit_bins(np.array([3.0, 1.0, 2.0, 1.0], dtype=np.float32), max_bins=4)
    assert lo.tolist() == hi.tolist() == [1.0, 2.0, 3.0]
    z = np.r_[np.zeros(500), np.linspace(0.1, 1.0, 500)].astype(np.float32)
    lo, hi = fit_bins(z, max_bins=10)
    assert lo[0] == hi[0] == 0.0 and hi[-1] == 1.0
    assert len(lo) <= 12 and np.all(lo[1:] > hi[:-1]) and np.all(hi >= lo)


def test_null_rates_and_spikes_are_reproduced_without_a_label() -> None:
    rng = np.random.default_rng(0)
    n = 600
    table = pa.table(
        {
            "amount": pa.array(rng.lognormal(size=n) * (rng.random(n) < 0.5), mask=rng.random(n) < 0.3),
            "city": pa.array(rng.choice(["a", "b", "c"], n), mask=rng.random(n) < 0.2),
        }
    )
    model = TabularAutoregressive(TabularAutoregressive.Config(**SMALL), device=CPU)
    model.fit(TabularData(table), TrainSpec(epochs=15, batch_size=100, device="cpu", seed=0), None)
    (synthetic,) = model.sample(3000, conditions=None, seed=0, batch_size=3000)
    assert synthetic.schema.equals(table.schema)
    for name in table.column_names:
        real_rate = table.column(name).null_count / n
        assert abs(synthetic.column(name).null_count / 3000 - real_rate) < 0.05
    amount = synthetic.column("amount").drop_null().to_numpy()
    # the spike at zero is a bin of its own (the encoder's float32 round trip leaves ~1e-9)
    assert abs(np.mean(np.abs(amount) < 1e-6) - 0.5) < 0.06


def test_private_bins_follow_the_released_steps() -> None:
    # the released CDF of whole numbers 1..16 (knots half-way between them): uneven steps
    rng = np.random.default_rng(0)
    probs = np.r_[0.0, np.cumsum(rng.dirichlet(np.ones(16)))]
    lo, hi = released_bins(probs, max_bins=128)
    assert len(lo) == 16
    # each value's code (the middle of its step) falls in a bin of its own
    middles = ndtri((probs[:-1] + probs[1:]) / 2)
    assert np.searchsorted(hi, middles).tolist() == list(range(16))
    assert np.all(lo <= middles) and np.all(middles <= hi)
    # more steps than bins: grouped by mass, a heavy step alone, the whole range covered in order
    probs = np.r_[0.0, np.cumsum(np.r_[np.full(200, 0.5 / 200), 0.5])]
    lo, hi = released_bins(probs, max_bins=16)
    assert len(lo) <= 17 and np.all(lo[1:] > hi[:-1]) and np.all(hi > lo)
    assert ndtr(lo[-1]) == pytest.approx(0.5, abs=1e-9)


def test_matching_marginals_brings_back_tokens_the_heads_had_starved() -> None:
    """DP-SGD clips a rare value's rows hardest and its head drifts from the released frequency;
    the biases are shifted until the sampled shares match the released ones (a target of 0, such
    as null's, keeps its sampled share)."""
    config = TabularAutoregressive.Config(**SMALL)
    net = ColumnwiseNet([2, 4, 3], 1, config)
    targets = [torch.tensor([50.0, 300.0, 450.0, 200.0]), torch.tensor([600.0, 400.0, 0.0])]
    with torch.no_grad():
        net.heads[0].bias.copy_(torch.tensor([-9.0, 0.0, 0.0, 0.0]))  # token 0 drawn once in 8,000
        net.heads[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0]))  # null (token 2) a third
    net.match_marginals(targets, [0.5, 0.5], seed=0)
    label = torch.multinomial(torch.tensor([0.5, 0.5]), 40_000, replacement=True)
    drawn = net.sample(label, None, 40_000, torch.Generator().manual_seed(1))
    first = torch.bincount(drawn[0], minlength=4) / 40_000
    np.testing.assert_allclose(first.numpy(), [0.05, 0.3, 0.45, 0.2], atol=0.02)
    second = torch.bincount(drawn[1], minlength=3) / 40_000
    assert second[2] == pytest.approx(1 / 3, abs=0.03)  # null kept its share
    assert second[0] / second[1] == pytest.approx(1.5, rel=0.1)


def test_a_private_model_keeps_whole_numbers_one_token_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # bins of equal probability would straddle levels: a token would stand for two of them, and a
    # column determined by the level (education → education_num) could not be learned exactly.
    # The statistics' noise is pinned: in 4% of draws it lets an empty bin past the top level in, as
    # dp.SPURIOUS allows, and the top token then also stands for values the data does not have
    monkeypatch.setattr(dp, "secrets", SimpleNamespace(randbits=lambda bits: 20261206))
    rng = np.random.default_rng(1)
    level = rng.choice(np.arange(1, 9), size=4000, p=[0.02, 0.08, 0.3, 0.1, 0.25, 0.05, 0.15, 0.05])
    table = pa.table({"level": level.astype(np.int64), "grade": [f"L{v}" for v in level]})
    model = TabularAutoregressive(TabularAutoregressive.Config(**SMALL), device=CPU)
    train = TrainSpec(epochs=1, batch_size=500, device="cpu", seed=0, privacy={"epsilon": 50.0})
    model.fit(TabularData(table), train, None)
    column = next(column for column in model.columns if column.codec.name == "level")
    knots, probs = np.asarray(column.codec.knots), np.asarray(column.codec.knot_probs)
    codes = ndtri(np.interp(np.arange(1, 9), knots, probs)).astype(np.float32)
    assert len(column.lo) == 8 and np.searchsorted(column.hi, codes).tolist() == list(range(8))
    generator = torch.Generator().manual_seed(0)
    for token in range(8):
        z = column.render(torch.full((200,), token), generator).numpy()[:, 0]
        assert set(np.rint(np.interp(ndtr(z), probs, knots)).tolist()) == {token + 1}
