"""DP-SGD and DP statistics, measured on real networks and real noise (no mocks).

The gradient checks compare :class:`PrivateSGD` with plain autograd: without noise and with a clip
norm no row reaches, a DP step is the batch's mean gradient rescaled to the expected batch size;
with a small clip norm it is the sum of every row's gradient clipped by hand.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from genai_pipeline.errors import ConfigError
from genai_pipeline.privacy.dp import (
    SELECTION_SHARE,
    PrivateSGD,
    StatisticsBudget,
    calibrate,
    composed_epsilon,
    dp_category_counts,
    dp_cdf,
    dp_counts,
    selection_threshold,
)


def private(**overrides: object) -> PrivateSGD:
    settings: dict[str, object] = dict(
        epsilon=None,
        delta=1e-5,
        max_grad_norm=1e6,
        noise_multiplier=0.0,
        rows=64,
        batch_size=16,
        epochs=1,
        seed=0,
    )
    settings.update(overrides)
    return PrivateSGD(**settings)  # type: ignore[arg-type]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def row_loss(net: nn.Module) -> Callable[..., torch.Tensor]:
    """The per-row loss of a network whose loss is a mean over rows: the loss of a batch of one."""

    def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, (params, buffers), (x[None],)), y[None])

    return loss


def toy_batch(rows: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(rows, 5, generator=generator), torch.randint(0, 3, (rows,), generator=generator)


def grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def row_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Every row's own gradient by plain autograd, one row at a time."""
    out = []
    for i in range(len(x)):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(grads(net).clone())
    return out


# ---- DP-SGD: gradients ----


def test_without_noise_or_clipping_a_step_is_the_mean_gradient_rescaled_to_the_expected_batch() -> None:
    net, (x, y) = mlp(), toy_batch(10)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    mean = grads(net).clone()
    sgd = private()  # expected batch 16, actual 10
    loss = sgd.step(net, row_loss(net), (x, y), torch.optim.SGD(net.parameters(), lr=0.0))
    torch.testing.assert_close(grads(net), mean * 10 / 16, rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(float(F.cross_entropy(net(x), y).detach()), rel=1e-5)


def test_every_row_is_clipped_to_the_clip_norm_before_summing() -> None:
    net, (x, y) = mlp(), toy_batch(10)
    clip = 1e-3
    expected = sum(g * min(1.0, clip / float(g.norm())) for g in row_grads(net, x, y))
    assert all(float(g.norm()) > clip for g in row_grads(net, x, y))  # every row is clipped
    sgd = private(max_grad_norm=clip)
    sgd.step(net, row_loss(net), (x, y), torch.optim.SGD(net.parameters(), lr=0.0))
    torch.testing.assert_close(grads(net) * 16, expected, rtol=1e-4, atol=1e-9)
    assert float(grads(net).norm()) * 16 <= 10 * clip * (1 + 1e-5)


def test_rows_in_chunks_give_the_same_step() -> None:
    net, (x, y) = mlp(), toy_batch(10)
    whole, chunked = private(max_grad_norm=0.05), private(max_grad_norm=0.05, chunk_rows=3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    whole.step(net, row_loss(net), (x, y), optimizer)
    once = grads(net).clone()
    chunked.step(net, row_loss(net), (x, y), optimizer)
    torch.testing.assert_close(grads(net), once, rtol=1e-5, atol=1e-8)
    assert all(getattr(p, "grad_sample", None) is None for p in net.parameters())  # freed after the step


def test_the_noise_has_std_sigma_times_clip_over_the_expected_batch() -> None:
    """An empty Poisson batch still steps, with noise alone; it counts as a step."""
    net = nn.Linear(100, 100)
    sgd = private(noise_multiplier=1.3, max_grad_norm=0.7, rows=1000, batch_size=40)
    empty = (torch.zeros(0, 100), torch.zeros(0, 100))

    def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(net, (params, buffers), (x[None],)), y[None])

    assert sgd.step(net, loss, empty, torch.optim.SGD(net.parameters(), lr=0.0)) == 0.0
    noise = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.003)
    assert float(noise.std()) == pytest.approx(1.3 * 0.7 / 40, rel=0.02)
    assert sgd.steps == 1


def test_poisson_batches_draw_each_row_with_the_sample_rate() -> None:
    sgd = private(rows=1000, batch_size=50)
    generator = torch.Generator().manual_seed(0)
    sizes = [len(sgd.batch(generator)) for _ in range(400)]
    assert sgd.sample_rate == 0.05
    assert np.mean(sizes) == pytest.approx(50, rel=0.03)
    assert np.std(sizes) == pytest.approx(math.sqrt(1000 * 0.05 * 0.95), rel=0.15)
    rows = sgd.batch(generator)
    assert len(set(rows.tolist())) == len(rows) and int(rows.max()) < 1000


def test_frozen_parameters_are_left_alone_and_the_optimiser_must_match() -> None:
    net = mlp()
    net[0].weight.requires_grad_(False)
    frozen = net[0].weight.clone()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    private(noise_multiplier=1.0).step(net, row_loss(net), toy_batch(), optimizer)
    assert torch.equal(net[0].weight, frozen) and net[0].weight.grad is None
    with pytest.raises(ValueError, match="exactly the trainable parameters"):
        private().step(net, row_loss(net), toy_batch(), torch.optim.SGD(net[2].parameters(), lr=0.1))


# ---- DP-SGD: networks beyond standard layers, losses that draw random numbers ----


class Columnwise(nn.Module):
    """Shaped like the autoregressive model's ColumnwiseNet: an embedding, per-column MLP weights
    stacked along a leading column dimension and used through ``torch.baddbmm``, a head per column
    and a cross-entropy per column. opacus's hooks cannot see the stacked weights."""

    def __init__(self, vocab: list[int], width: int = 8):
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(vocab[:-1]).tolist()]), persistent=False)
        self.embed = nn.Embedding(sum(vocab), width)
        self.weight = nn.Parameter(torch.randn(len(vocab) - 1, width, width) / width**0.5)
        self.bias = nn.Parameter(torch.zeros(len(vocab) - 1, 1, width))
        self.heads = nn.ModuleList(nn.Linear(width, size) for size in vocab[1:])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embed(tokens + self.offsets)
        context = embedded.cumsum(dim=1)[:, :-1].transpose(0, 1)  # (columns, rows, width)
        hidden = F.silu(torch.baddbmm(self.bias, context, self.weight))
        nll = torch.stack(
            [
                F.cross_entropy(head(h), tokens[:, k + 1], reduction="none")
                for k, (head, h) in enumerate(zip(self.heads, hidden))
            ],
            dim=1,
        )
        return nll.sum(dim=1).mean()


def test_a_columnwise_network_gets_exact_per_row_gradients() -> None:
    torch.manual_seed(0)
    vocab = [3, 5, 4, 6]
    net = Columnwise(vocab)
    tokens = torch.stack([torch.randint(0, v, (12,)) for v in vocab], dim=1)
    clip = 0.5
    expected = 0
    for row in tokens:
        net.zero_grad()
        net(row[None]).backward()
        g = grads(net).clone()
        expected = expected + g * min(1.0, clip / float(g.norm()))

    def loss(params: dict, buffers: dict, row: torch.Tensor) -> torch.Tensor:
        return functional_call(net, (params, buffers), (row[None],))

    private(max_grad_norm=clip, batch_size=12).step(
        net, loss, (tokens,), torch.optim.SGD(net.parameters(), lr=0.0)
    )
    torch.testing.assert_close(grads(net) * 12, expected, rtol=1e-4, atol=1e-7)


def test_a_loss_that_draws_noise_and_timesteps_trains_with_different_draws_per_row() -> None:
    """A diffusion-like denoiser: each row draws its own timestep and noise inside the loss."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 2))
    data = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + 1.0

    def loss(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, 100, (1,)).float() / 100
        noise = torch.randn_like(x)
        noisy = (1 - t).sqrt() * x + t.sqrt() * noise
        prediction = functional_call(net, (params, buffers), (torch.cat([noisy, t])[None],))
        return F.mse_loss(prediction[0], noise)

    # identical rows: per-row gradients differ only through the rows' own draws
    same = data[:1].expand(8, -1)
    grads_of_same = torch.func.vmap(torch.func.grad(loss), in_dims=(None, None, 0), randomness="different")(
        {k: p.detach() for k, p in net.named_parameters()}, {}, same
    )
    assert not torch.allclose(grads_of_same["0.weight"][0], grads_of_same["0.weight"][1])

    sgd = private(epsilon=10.0, noise_multiplier=None, max_grad_norm=1.0, rows=512, batch_size=64, epochs=20)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    while not sgd.exhausted:
        losses.append(sgd.step(net, loss, (data[sgd.batch(generator)],), optimizer))
    assert sgd.steps >= sgd.planned_steps
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])


# ---- DP-SGD: accounting ----


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 10.0])
def test_the_calibrated_noise_spends_the_budget_over_the_planned_steps(epsilon: float) -> None:
    sgd = PrivateSGD(
        epsilon=epsilon,
        delta=1e-5,
        max_grad_norm=1.0,
        noise_multiplier=None,
        rows=32561,
        batch_size=256,
        epochs=20,
        seed=0,
    )
    assert sgd.planned_steps == round(20 * 32561 / 256)
    sgd.load_state_dict({"history": [[sgd.noise_multiplier, sgd.sample_rate, sgd.planned_steps]]})
    assert 0.98 * epsilon <= sgd.epsilon_spent() <= epsilon


def test_a_given_noise_multiplier_stops_training_where_the_target_is_reached() -> None:
    net, batch = mlp(), toy_batch(4)
    sgd = private(epsilon=1.0, noise_multiplier=1.5, rows=100, batch_size=4, max_grad_norm=1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    while not sgd.exhausted:
        sgd.step(net, row_loss(net), batch, optimizer)
    spent = sgd.epsilon_spent()
    assert 0.95 < spent <= 1.0 and sgd.steps > 40
    one_more = private(noise_multiplier=1.5, rows=100, batch_size=4)
    one_more.load_state_dict({"history": [[1.5, 0.04, sgd.steps + 1]]})
    assert one_more.epsilon_spent() > 1.0
    with pytest.raises(RuntimeError, match="budget spent"):
        sgd.step(net, row_loss(net), batch, optimizer)


def test_without_a_target_epsilon_is_only_accounted() -> None:
    sgd = private(noise_multiplier=1.0, rows=100, batch_size=10)
    net = mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    spent = []
    for _ in range(3):
        sgd.step(net, row_loss(net), toy_batch(), optimizer)
        spent.append(sgd.epsilon_spent())
    assert not sgd.exhausted and spent[0] < spent[1] < spent[2]
    assert private(noise_multiplier=0.0).epsilon_spent() == 0.0
    no_noise = private(noise_multiplier=0.0)
    no_noise.step(net, row_loss(net), toy_batch(), optimizer)
    assert no_noise.epsilon_spent() == math.inf


def test_a_budget_or_noise_is_required() -> None:
    with pytest.raises(ConfigError, match="train.privacy"):
        private(noise_multiplier=None)


def test_a_resumed_training_continues_the_count_and_the_noise() -> None:
    """30 steps, a checkpoint through torch.save / torch.load(weights_only=True), 30 more: the same
    ε and the same weights as 60 steps without a stop."""
    data = toy_batch(200)

    def run(steps: int, state: dict | None = None) -> tuple[nn.Module, PrivateSGD, dict]:
        net = mlp()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        sgd = private(epsilon=None, noise_multiplier=1.1, max_grad_norm=1.0, rows=200, batch_size=20, seed=7)
        generator = torch.Generator().manual_seed(3)
        if state is not None:
            net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            sgd.load_state_dict(state["privacy"])
            generator.set_state(state["order"])
        for _ in range(steps):
            rows = sgd.batch(generator)
            sgd.step(net, row_loss(net), tuple(t[rows] for t in data), optimizer)
        checkpoint = {
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "privacy": sgd.state_dict(),
            "order": generator.get_state(),
        }
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        return net, sgd, torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)

    straight, uninterrupted, _ = run(60)
    _, first, checkpoint = run(30)
    resumed_net, resumed, _ = run(30, checkpoint)
    assert first.steps == 30 and resumed.steps == 60
    assert resumed.epsilon_spent() == pytest.approx(uninterrupted.epsilon_spent(), rel=1e-9)
    for a, b in zip(straight.parameters(), resumed_net.parameters()):
        torch.testing.assert_close(a, b)


def test_a_private_model_still_learns() -> None:
    """Two Gaussian classes, ε = 10: well above chance."""
    generator = torch.Generator().manual_seed(0)
    rows = 2000
    y = torch.randint(0, 2, (rows,), generator=generator)
    x = torch.randn(rows, 5, generator=generator) + (2 * y[:, None] - 1) * torch.tensor(
        [1.0, -1.0, 0.5, 0, 0]
    )
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))

    def loss(params: dict, buffers: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, (params, buffers), (xi[None],)), yi[None])

    sgd = PrivateSGD(
        epsilon=10.0,
        delta=1e-5,
        max_grad_norm=1.0,
        noise_multiplier=None,
        rows=rows,
        batch_size=100,
        epochs=5,
        seed=0,
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    while not sgd.exhausted:
        rows_ = sgd.batch(generator)
        sgd.step(net, loss, (x[rows_], y[rows_]), optimizer)
    accuracy = float((net(x).argmax(dim=1) == y).float().mean())
    assert sgd.epsilon_spent() <= 10.0
    assert accuracy > 0.85


# ---- DP statistics ----


def budget(
    sigma: float, histograms: int = 1, selection_delta: float = 1e-6, seed: int = 0
) -> StatisticsBudget:
    return StatisticsBudget(sigma, histograms, selection_delta, rng=np.random.default_rng(seed))


def test_noisy_counts_are_unbiased_with_gaussian_noise_of_the_budgets_sigma() -> None:
    noisy = dp_counts(np.full(20_000, 50.0), budget(4.0))
    assert noisy.mean() == pytest.approx(50.0, abs=0.1)
    assert noisy.std() == pytest.approx(4.0, rel=0.03)
    assert dp_counts(np.zeros(1000), budget(1.0)).min() == 0.0


def test_the_budget_refuses_a_histogram_more_than_it_was_calibrated_for() -> None:
    """The accountant was told how many histograms share the noise; one more would be a release it
    never counted."""
    planned = budget(1.0, histograms=3)
    dp_counts(np.zeros((2, 4)), planned, histograms=2)  # a row adds one in each of two rows
    dp_category_counts({"a": 5}, planned, threshold=0.0)
    assert planned.used == 3
    with pytest.raises(RuntimeError, match="more than the 3 histograms"):
        dp_counts(np.zeros(4), planned)


def test_category_counts_are_unbiased_and_thresholded() -> None:
    dp = budget(1.0, histograms=5000, seed=1)
    draws = [dp_category_counts({"a": 1000, "b": 3}, dp, threshold=8.0) for _ in range(5000)]
    a = np.array([d["a"] for d in draws])
    assert a.mean() == pytest.approx(1000, abs=0.05) and a.std() == pytest.approx(1.0, rel=0.05)
    assert sum("b" in d for d in draws) < 3  # P(3 + N(0, 1) >= 8) = 2.9e-7


def test_a_category_of_one_row_is_almost_never_released_at_the_recommended_threshold() -> None:
    sigma, delta = 2.0, 1e-4
    threshold = selection_threshold(sigma, delta)
    assert threshold == pytest.approx(1 + sigma * 3.719, rel=1e-3)  # Φ⁻¹(1 − 1e-4) = 3.719
    trials = 200_000
    dp = budget(sigma, histograms=trials // 1000, seed=2)
    released = sum(
        len(dp_category_counts({i: 1 for i in range(1000)}, dp, threshold=threshold))
        for _ in range(trials // 1000)
    )
    assert released <= 2 * delta * trials  # expected δ per category: 20 of 200,000


def test_a_dp_distribution_of_normal_values_is_close_within_power_of_two_bounds() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=30_000)
    released = dp_cdf(values, budget(4.0, histograms=2, seed=3))
    assert released is not None
    knots, cdf = released
    # within the outermost power-of-two bins that hold values, ending where the finer bins clear
    assert -4.0 <= knots[0] < -3.0 and 3.0 < knots[-1] <= 4.0
    assert np.all(np.diff(cdf) >= 0) and cdf[0] == 0 and cdf[-1] == pytest.approx(1)
    grid = np.quantile(values, [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
    np.testing.assert_allclose(np.interp(grid, knots, cdf), (values[:, None] < grid).mean(axis=0), atol=0.01)


def test_a_dp_distribution_ends_at_its_outermost_bins_of_real_values() -> None:
    """A value one power-of-two bin holds alone, at the edge, stays in the range: it clears the
    floor of a bin next to the range, not that of any of 161 bins, and its finer bin, the same bin,
    is not floored again (floored, 45 rows fell out in one of these ten). The range ends where the
    data does: an empty tail decoded values far past the last one."""
    rng = np.random.default_rng(5)
    levels = np.r_[np.ones(45), rng.integers(2, 17, 30_000)].astype(float)  # 1..16, level 1 thin
    for seed in range(10):
        knots, cdf = dp_cdf(levels, budget(11.0, histograms=2, seed=seed), quantum=1.0)
        assert (knots[0], knots[-1]) == (0.5, 16.5)
        assert cdf[1] == pytest.approx(45 / len(levels), abs=0.002)


def test_a_dp_distribution_needs_enough_rows_for_its_noise() -> None:
    assert dp_cdf(np.arange(5.0), budget(100.0, histograms=2, seed=4)) is None


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 10.0])
def test_the_statistics_and_dp_sgd_composed_spend_the_budget(epsilon: float) -> None:
    """Adult's shape (32,561 rows, 10 epochs of 1,024): DP-SGD's noise is what (1 − share)·ε alone
    needs, the statistics' the least that brings the composition to ε. Composed, the statistics
    cost far less than alone: their release alone would spend more than its share."""
    q, delta = 1024 / 32_561, 1 / 325_610
    steps = round(10 / q)
    share = 0.25
    noise = calibrate(epsilon=epsilon, delta=delta, sample_rate=q, steps=steps, statistics_share=share)
    assert noise.accounted_delta == pytest.approx(delta * (1 - SELECTION_SHARE))
    training = (noise.sgd_noise, q, steps)
    together = composed_epsilon([*noise.released(), training], noise.accounted_delta)
    assert 0.97 * epsilon <= together <= epsilon
    alone = composed_epsilon([training], noise.accounted_delta)
    assert alone == pytest.approx((1 - share) * epsilon, rel=0.01)
    assert composed_epsilon(noise.released(), noise.accounted_delta) > share * epsilon


def test_releases_before_training_count_in_its_epsilon_and_its_cap() -> None:
    before = [(2.0, 1.0, 1)]
    plain = private(epsilon=3.0, noise_multiplier=1.0, rows=1000, batch_size=100, max_grad_norm=1.0)
    after = private(
        epsilon=3.0, noise_multiplier=1.0, rows=1000, batch_size=100, max_grad_norm=1.0, released=before
    )
    assert (
        after.epsilon_spent() == pytest.approx(composed_epsilon(before, 1e-5)) and after.epsilon_spent() > 0
    )
    net = mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    steps = 0
    while not after.exhausted:
        after.step(net, row_loss(net), toy_batch(), optimizer)
        steps += 1
    assert 0.9 * 3.0 < after.epsilon_spent() <= 3.0
    plain.load_state_dict({"history": [[1.0, 0.1, steps]]})
    assert plain.epsilon_spent() < after.epsilon_spent()  # the same steps without the release spend less
    state = after.state_dict()
    resumed = private(epsilon=3.0, noise_multiplier=1.0, rows=1000, batch_size=100, max_grad_norm=1.0)
    resumed.load_state_dict(state)
    assert resumed.epsilon_spent() == pytest.approx(after.epsilon_spent()) and resumed.exhausted
