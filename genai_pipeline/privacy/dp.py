"""Differential privacy for training (``train.privacy``): DP-SGD for any network, and DP statistics
for the table encoder.

**DP-SGD** (Abadi et al., 2016). :class:`PrivateSGD` samples each batch by Poisson sampling (every
row independently with probability ``q = batch_size / rows``), computes each row's own gradient,
clips it to ``max_grad_norm``, sums, adds Gaussian noise of standard deviation
``noise_multiplier · max_grad_norm`` and divides by the *expected* batch size ``q · rows``. The
accountant then bounds the (ε, δ) spent by the steps taken. Neighbouring tables differ by one row
added or removed, the relation Poisson-sampled accounting assumes.

Per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over the rows of a batch), not
from opacus's ``GradSampleModule``: its backward hooks know standard layers only, and
:class:`~genai_pipeline.models.tabular_autoregressive.ColumnwiseNet` multiplies stacked parameter
tensors through ``torch.baddbmm``. ``torch.func`` differentiates any function of the parameters,
and ``randomness="different"`` gives every row its own draws of the noise, timesteps and masks a
loss samples. Clipping, noise and scaling are opacus's own :class:`~opacus.optimizers.DPOptimizer`
wrapped around the model's optimiser, fed ``p.grad_sample`` by hand; accounting is opacus's.

Only the networks whose loss reads real rows need DP-SGD: a GAN's generator trained against a DP
critic, a frozen moving average of DP weights, and anything sampled from them are DP by
post-processing. Privacy covers the weights; the mean loss :meth:`PrivateSGD.step` returns for the
progress log is computed on real rows without noise.

Measured on this checkout's 2-core CPU (torch 2.13, shared with other work, so ±20 %), one Adam
step at batch 256, median of 15–30 interleaved steps:

- an MLP of 230k parameters (64 → 4 × 256 → 64): plain 4 ms, DP 105–115 ms (about 25×), in
  chunks of 32 rows 75–90 ms;
- ``ColumnwiseNet`` as for Adult (15 columns, embeddings 64, hidden 64; 122k parameters): plain
  9 ms, DP 135–155 ms (about 16×), in chunks of 64 rows 115–125 ms.

The cost is memory traffic, not arithmetic: the MLP's per-sample gradients are 236 MB a step,
written by ``vmap`` (74 ms, about what filling that much fresh memory takes here) and read twice
by the clipping (22 ms). An epoch of Adult (127 steps) takes about 15 s instead of 1 s.

**Accounting** uses the PRV accountant (Gopi et al., 2021): it composes the privacy loss
distributions numerically and returns an upper bound within 0.01 of the true ε, where RDP's bound
is looser by design. For q = 256/32,561 and 20 epochs at δ = 1e-5 it needs a noise multiplier of
1.68 / 0.875 / 0.578 for ε = 1 / 3 / 10, RDP 1.80 / 0.919 / 0.602: 4–7 % less noise for the same
guarantee. The price is time: calibration takes 2–16 s, finding the step at which the budget runs out
(once) about as long, and one ε 0.1–1.2 s, for 2,500–100,000 steps (RDP: a tenth of that), so ε is
computed when asked for, never per step.

**DP statistics.** When training is DP, the table encoder's fitted state (categories, quantile
knots, label frequencies) must be DP too, or the model file leaks what the weights do not.
:func:`dp_category_counts`, :func:`dp_cdf` and :func:`dp_counts` release them as histograms with
Gaussian noise (:class:`StatisticsBudget`): together one Gaussian mechanism, which the accountant
composes with DP-SGD's steps (:func:`calibrate`). Composed so, rather than added up as Laplace
releases under basic composition, the statistics get 4–9 times less noise for the same (ε, δ).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

if TYPE_CHECKING:  # opacus is imported where it is used: a job without privacy never loads it (1.4 s)
    from opacus.optimizers import DPOptimizer

from genai_pipeline.errors import ConfigError


@contextlib.contextmanager
def _quiet_accounting() -> Iterator[None]:
    """Silence what opacus's accounting says on most calls but that does not change its ε: the PRV
    accountant bounds its domain with RDP, which advises widening its orders, and a sample rate of 1
    takes ``log(0)`` on the way to the right answer."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


# per_sample_loss(params, buffers, *one row of each batch tensor) -> scalar loss of that row
PerSampleLoss = Callable[..., torch.Tensor]


class PrivateSGD:
    """Poisson sampling, per-sample clipping, Gaussian noise and accounting for one network.

    ``noise_multiplier`` is used as given, or calibrated so that ``epochs`` of Poisson-sampled
    steps (``epochs / q`` steps) spend exactly ``(epsilon, delta)``. With a target ``epsilon``,
    :attr:`exhausted` turns true when one more step would exceed it, and training must stop there
    (:meth:`step` refuses to go on). With only a ``noise_multiplier``, ε is accounted but not capped.

    ``chunk_rows`` bounds memory: per-sample gradients take ``rows × parameters`` floats (200 MB
    for 200k parameters at 256 rows), so they are computed, clipped and summed this many rows at a
    time. (``vmap``'s own ``chunk_size`` would not help: it still returns every row's gradient.)

    ``released``: accountant entries ``(noise_multiplier, sample_rate, steps)`` spent on the same
    rows before training (the encoder's Gaussian statistics, :func:`calibrate`): ε is always that
    of everything composed, and the target caps the whole.

    The accountant's history is the state to checkpoint: a resumed training continues its count.
    """

    def __init__(
        self,
        *,
        epsilon: float | None,
        delta: float,
        max_grad_norm: float,
        noise_multiplier: float | None,
        rows: int,
        batch_size: int,
        epochs: int,
        accountant: str = "prv",
        seed: int,
        chunk_rows: int | None = None,
        released: Sequence[tuple[float, float, int]] = (),
    ):
        if epsilon is None and noise_multiplier is None:
            raise ConfigError("train.privacy: give epsilon, noise_multiplier or both")
        if rows < 1 or batch_size < 1 or epochs < 1:
            raise ValueError("rows, batch_size and epochs must be positive")
        self.target_epsilon = epsilon
        self.delta = delta
        self.max_grad_norm = max_grad_norm
        self.sample_rate = min(batch_size / rows, 1.0)
        self.rows = rows
        self.planned_steps = max(1, round(epochs / self.sample_rate))
        self.chunk_rows = chunk_rows
        self.seed = seed
        self.released = [(float(s), float(q), int(n)) for s, q, n in released]
        # the noise has a generator of its own, seeded and checkpointed here, so it neither depends
        # on nor disturbs the random draws of the losses and the batch order; made on the first
        # step's device, until then a loaded state waits in _noise_state
        self._noise: torch.Generator | None = None
        self._noise_state: torch.Tensor | None = None
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        self.accountant = create_accountant(mechanism=accountant)
        if noise_multiplier is None:
            assert epsilon is not None
            if self.released:
                raise ValueError("with releases before training, calibrate the noise with calibrate()")
            try:
                with _quiet_accounting():
                    noise_multiplier = get_noise_multiplier(
                        target_epsilon=epsilon,
                        target_delta=delta,
                        sample_rate=self.sample_rate,
                        steps=self.planned_steps,
                        accountant=accountant,
                        epsilon_tolerance=0.005 * epsilon,
                    )
            except ValueError:
                raise ConfigError(
                    f"train.privacy.epsilon: {epsilon} cannot be met in {epochs} epochs of "
                    f"{self.planned_steps} steps: raise epsilon or lower epochs"
                ) from None
        self.noise_multiplier = float(noise_multiplier)
        self._limit: int | None = None
        self._dp: tuple[torch.optim.Optimizer, DPOptimizer] | None = None

    @property
    def steps(self) -> int:
        """Steps accounted so far, including those before a resume."""
        return sum(int(count) for _, _, count in self.accountant.history)

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        """The row indices of one Poisson-sampled batch: each row with probability ``q``, so its size
        varies and it may be empty. Fixed-size shuffled batches would void the accounting."""
        return torch.nonzero(torch.rand(self.rows, generator=generator) < self.sample_rate)[:, 0]

    def epsilon_spent(self, delta: float | None = None) -> float:
        """The ε spent so far at ``delta`` (the configured δ by default)."""
        return self._epsilon(
            [*self.released, *self.accountant.history], self.delta if delta is None else delta
        )

    @property
    def exhausted(self) -> bool:
        """Whether the next step would exceed the target ε (never, without a target)."""
        if self.target_epsilon is None:
            return False
        if self._limit is None:
            self._limit = self._step_limit(self.target_epsilon)
        return self.steps >= self._limit

    def step(
        self,
        params: nn.Module | Mapping[str, nn.Parameter],
        per_sample_loss: PerSampleLoss,
        batch: tuple[torch.Tensor, ...],
        optimizer: torch.optim.Optimizer,
    ) -> float:
        """One DP-SGD step of ``optimizer`` on a Poisson batch; returns the batch's mean loss (0 for
        an empty batch, which still takes its noise-only step: the analysis counts every step).

        ``params`` is the network (its trainable parameters and buffers are passed to the loss) or a
        name → parameter mapping (the loss then gets no buffers). ``optimizer`` is the network's own
        optimiser and must hold exactly those trainable parameters; it is wrapped once in a
        ``DPOptimizer``, and its state (and checkpoint) stay the optimiser's own.
        ``per_sample_loss(params, buffers, *row)`` is the loss of one row, ``row`` holding one entry
        of each batch tensor without the batch dimension.
        """
        if self.exhausted:
            raise RuntimeError(
                f"privacy budget spent: step {self.steps + 1} would exceed epsilon {self.target_epsilon}"
            )
        if isinstance(params, nn.Module):
            trainable = {name: p for name, p in params.named_parameters() if p.requires_grad}
            buffers = dict(params.named_buffers())
        else:
            trainable, buffers = dict(params), {}
        dp = self._dp_optimizer(optimizer, trainable)
        dp.zero_grad(set_to_none=True)
        detached = {name: p.detach() for name, p in trainable.items()}
        per_row = torch.func.vmap(
            torch.func.grad_and_value(per_sample_loss),
            in_dims=(None, None, *(0,) * len(batch)),
            randomness="different",
        )
        size = len(batch[0])
        chunk = self.chunk_rows or max(size, 1)
        starts = list(range(0, size, chunk)) or [0]
        total = 0.0
        for start in starts:
            rows = tuple(tensor[start : start + chunk] for tensor in batch)
            if size:
                grads, losses = per_row(detached, buffers, *rows)
                total += float(losses.detach().sum())
            else:
                grads = {name: p.new_zeros((0, *p.shape)) for name, p in trainable.items()}
            for name, p in trainable.items():
                # the gradient of each row's own loss: what GradSampleModule stores for
                # loss_reduction="mean" (it multiplies the mean's gradients back by the batch size)
                p.grad_sample = grads[name]
            if start != starts[-1]:
                dp.signal_skip_step(True)  # clip and accumulate only, as opacus's BatchMemoryManager
            dp.step()
        for p in trainable.values():
            p.grad_sample = None  # free the last chunk's per-sample gradients now
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return total / size if size else 0.0

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history as ``[noise_multiplier, sample_rate, steps]`` lists and the noise
        generator's state: plain numbers and a tensor, loadable with ``weights_only=True``."""
        state: dict[str, Any] = {
            "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history],
            "released": [[s, q, n] for s, q, n in self.released],
        }
        noise = self._noise.get_state() if self._noise is not None else self._noise_state
        if noise is not None:
            state["noise_rng"] = noise
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: the steps before it stay spent, and the noise goes on where
        it stopped."""
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.released = [(float(s), float(q), int(n)) for s, q, n in state.get("released", self.released)]
        noise = state.get("noise_rng")
        if noise is not None and self._noise is not None:
            self._noise.set_state(noise)
        elif noise is not None:
            self._noise_state = noise
        self._limit = None

    def _dp_optimizer(
        self, optimizer: torch.optim.Optimizer, trainable: Mapping[str, nn.Parameter]
    ) -> DPOptimizer:
        if self._dp is None or self._dp[0] is not optimizer:
            held = {id(p) for group in optimizer.param_groups for p in group["params"] if p.requires_grad}
            if not held or held != {id(p) for p in trainable.values()}:
                raise ValueError("the optimiser must hold exactly the trainable parameters given to step")
            if self._noise is None:
                self._noise = torch.Generator(next(iter(trainable.values())).device).manual_seed(self.seed)
                if self._noise_state is not None:
                    self._noise.set_state(self._noise_state)
            from opacus.optimizers import DPOptimizer

            wrapped = DPOptimizer(
                optimizer,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                expected_batch_size=self.sample_rate * self.rows,
                loss_reduction="mean",
                generator=self._noise,
            )
            self._dp = (optimizer, wrapped)
        return self._dp[1]

    def _epsilon(self, history: list[tuple[float, float, int]], delta: float) -> float:
        return composed_epsilon(history, delta, self.accountant.mechanism())

    def _step_limit(self, target: float) -> int:
        """The most steps in all whose ε stays within ``target``: a galloping search from the
        planned steps, then bisection (ε grows with every step, so the search is exact)."""
        done = [*self.released, *self.accountant.history]
        entry = (self.noise_multiplier, self.sample_rate)

        def fits(more: int) -> bool:
            return self._epsilon([*done, (*entry, more)], self.delta) <= target

        low, high = 0, max(self.planned_steps - self.steps, 1)
        if fits(high):
            low, gap = high, max(1, high // 64)
            while fits(low + gap):
                low, gap = low + gap, gap * 2
            high = low + gap
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return self.steps + low


def composed_epsilon(
    history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "prv"
) -> float:
    """The ε at ``delta`` of Gaussian mechanisms composed: ``(noise_multiplier, sample_rate, steps)``
    entries, a release of the whole table being one step at sample rate 1."""
    history = [entry for entry in history if entry[2] > 0]
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    from opacus.accountants import create_accountant

    counter = create_accountant(mechanism=accountant)
    counter.history = list(history)
    with _quiet_accounting():
        return float(counter.get_epsilon(delta=delta))


#: the share of δ that covers the chance that a category one row holds is shown (thresholding,
#: :func:`selection_threshold`); the accountant's Gaussian mechanisms get the rest
SELECTION_SHARE = 0.1


class Calibration(NamedTuple):
    """The noise of a model's two Gaussian mechanisms on the same rows, which together spend its
    (ε, δ): the encoder's statistics (one release of the whole table) and DP-SGD."""

    statistics_noise: float  # noise multiplier of the statistics: σ / √histograms
    sgd_noise: float  # DP-SGD's noise multiplier
    accounted_delta: float  # δ of the composed Gaussian mechanisms (the rest covers selection)

    def released(self) -> list[tuple[float, float, int]]:
        """The statistics as an accountant entry: one step at sample rate 1."""
        return [(self.statistics_noise, 1.0, 1)]


def calibrate(
    *,
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    statistics_share: float,
    accountant: str = "prv",
) -> Calibration:
    """DP-SGD's noise as if it had ``(1 − statistics_share)·ε`` alone, and the statistics' the least
    whose composition with it spends ``ε`` at ``steps``.

    Both are Gaussian mechanisms, composed by the accountant (PRV or RDP) rather than added up
    (basic composition): a Gaussian release next to hundreds of subsampled Gaussian steps costs a
    fraction of what it costs alone. On Adult at ε = 3 (10 epochs of batches of 1,024) the
    statistics' noise is σ ≈ 11 counts where basic composition of Laplace releases gave them
    ε = 0.75 split over 16 releases: a Laplace scale of 43 (std 61) on the distributions' counts.
    The selection of categories (thresholding) is not a Gaussian mechanism: it takes
    :data:`SELECTION_SHARE` of δ outside the accountant.
    """
    if not 0 < statistics_share < 1:
        raise ValueError("statistics_share must be between 0 and 1")
    from opacus.accountants.utils import get_noise_multiplier

    accounted = delta * (1 - SELECTION_SHARE)
    try:
        with _quiet_accounting():
            sgd = float(
                get_noise_multiplier(
                    target_epsilon=epsilon * (1 - statistics_share),
                    target_delta=accounted,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=0.005 * epsilon,
                )
            )
    except ValueError:
        raise ConfigError(
            f"train.privacy.epsilon: {epsilon} cannot be met in {steps} steps: raise epsilon or lower epochs"
        ) from None
    training = (sgd, sample_rate, steps)

    def fits(noise: float) -> bool:
        return composed_epsilon([(noise, 1.0, 1), training], accounted, accountant) <= epsilon

    low, high = 0.01, 1.0  # ε falls as the noise grows: bracket, then bisect in log scale to 1%
    while not fits(high):
        low, high = high, high * 4
    while high / low > 1.01:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return Calibration(high, sgd, accounted)


def selection_threshold(sigma: float, delta: float) -> float:
    """The least threshold at which :func:`dp_category_counts` shows a category one row holds with
    probability at most ``delta``: ``1 + σ·Φ⁻¹(1 − δ)`` for Gaussian noise of std ``σ``."""
    return 1 + sigma * float(norm.isf(delta))


@dataclass
class StatisticsBudget:
    """The encoder's statistics as one Gaussian mechanism: every count of every histogram they
    release (a column's categories or distribution, the label's frequencies and co-occurrences)
    gets noise of std ``sigma``. A row adds one to one count of each histogram, so releasing
    ``histograms`` of them is one Gaussian mechanism of L2 sensitivity √histograms and noise
    multiplier ``sigma / √histograms`` (:class:`Calibration`), whatever the order or adaptivity of
    the releases. A histogram that needs less precision may take ``scale`` times the noise and
    counts ``1 / scale²`` of one (Gaussian mechanisms compose by the sum of their squared
    sensitivity-to-noise ratios). :meth:`noise` counts them and refuses more than was planned,
    since the accountant was told how many there are. ``selection_delta``: each category set's δ.

    The noise comes from the operating system's randomness, never from the job's seed: the seed is
    in the job spec, and noise an attacker can replay is noise an attacker can subtract."""

    sigma: float
    histograms: float
    selection_delta: float
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(128)))
    used: float = 0.0

    @classmethod
    def of(
        cls, calibration: Calibration, *, histograms: float, delta: float, selections: int
    ) -> StatisticsBudget:
        """The budget ``calibration`` gives ``histograms`` histograms, of which at most
        ``selections`` category sets share :data:`SELECTION_SHARE` of ``delta``."""
        sigma = calibration.statistics_noise * math.sqrt(max(histograms, 1))
        return cls(sigma, histograms, delta * SELECTION_SHARE / max(selections, 1))

    def noise(self, shape: int | tuple[int, ...], histograms: int = 1, scale: float = 1.0) -> np.ndarray:
        """Gaussian noise of std ``scale · sigma`` for counts to which a row adds one in each of
        ``histograms`` places (one histogram; several side by side in one array)."""
        self.used += histograms / scale**2
        if self.used > self.histograms * (1 + 1e-9):
            raise RuntimeError(
                f"more than the {self.histograms:g} histograms the privacy budget was planned for"
            )
        return self.rng.normal(0.0, self.sigma * scale, shape)


def dp_category_counts(
    counts: Mapping[Any, int], dp: StatisticsBudget, *, threshold: float
) -> dict[Any, float]:
    """Noisy counts of the categories whose noisy count reaches ``threshold``.

    One row adds 1 to one category's count: the counts are one histogram of the Gaussian
    mechanism. The set of categories is not covered by it: a category present only because of one
    row would reveal that row. Thresholding bounds that to probability ``dp.selection_delta`` when
    ``threshold`` is at least :func:`selection_threshold` ``(dp.sigma, dp.selection_delta)``.
    """
    keys = list(counts)
    noisy = np.asarray([counts[key] for key in keys], dtype=np.float64) + dp.noise(len(keys))
    return {key: float(value) for key, value in zip(keys, noisy) if value >= threshold}


def dp_counts(
    counts: np.ndarray, dp: StatisticsBudget, histograms: int = 1, scale: float = 1.0
) -> np.ndarray:
    """Counts with the budget's Gaussian noise (``scale`` times it), clipped at 0 (post-processing):
    one histogram, or ``histograms`` in one array (a row adds one to that many of its counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.maximum(counts + dp.noise(counts.shape, histograms, scale), 0.0)


# Histogram bins for the bounds: |v| in [2^(k-1), 2^k) for k = MIN_EXP + 1 .. MAX_EXP on either side,
# and one bin for |v| < 2^MIN_EXP around zero.
MIN_EXP, MAX_EXP = -16, 64


def _power_histogram(values: np.ndarray, dp: StatisticsBudget) -> tuple[np.ndarray, np.ndarray] | None:
    """``(edges, noisy counts)`` of the power-of-two bins from the lowest to the highest that clears
    the noise, or None when none does: DP bounds in the manner of OpenDP SmartNoise's
    ``approx_bounds``, and the mass between them. Bins grow as powers of two either side of zero (so
    no prior range is needed); Gaussian noise goes on their counts (one row is in one bin: one
    histogram); a bin clears when its noisy count exceeds what noise alone reaches with small
    probability in any of them: a tenth of :data:`SPURIOUS`, relaxed to it when no bin clears that
    (OpenDP starts at 1e-9, which cut Adult's ages at 64 and its capital gains at 1). The range then
    grows outwards bin by bin while the next bin clears what noise reaches in one of two bins:
    a bin of real values cut off costs the tail, and the column's range (a pair-trend metric bins
    each table's own range: Adult's education level 1, 51 rows, moved every bin edge of
    education_num), while an empty bin next to the range costs little, since the finer histogram's
    floor takes its bins as empty. Both are post-processing of one noisy histogram."""
    side = MAX_EXP - MIN_EXP
    magnitude = np.floor(np.log2(np.maximum(np.abs(values), 2.0**MIN_EXP))).astype(np.int64)
    offset = np.clip(magnitude - MIN_EXP + 1, 0, side)
    offset[np.abs(values) < 2.0**MIN_EXP] = 0
    index = side + np.sign(values).astype(np.int64) * offset
    bins = 2 * side + 1
    noisy = np.bincount(index, minlength=bins) + dp.noise(bins)
    failure = SPURIOUS / 10
    while not (above := np.flatnonzero(noisy > noise_floor(bins, dp.sigma, failure))).size:
        if failure >= SPURIOUS:
            return None
        failure *= 10
    low, high = _grown(noisy, above[0], above[-1], dp.sigma)
    edges = [_bin_edges(i - side)[0] for i in range(low, high + 1)] + [_bin_edges(high - side)[1]]
    return np.asarray(edges), np.maximum(noisy[low : high + 1], 0.0)


def _grown(noisy: np.ndarray, low: int, high: int, sigma: float) -> tuple[int, int]:
    """``low`` and ``high`` (the outermost bins that clear the floor of all the bins) moved outwards
    while the next bin clears the floor of one of two: a bin next to the range is one of two
    candidates, not one of all the bins. Post-processing of the noisy counts."""
    neighbour = noise_floor(2, sigma)
    while low > 0 and noisy[low - 1] > neighbour:
        low -= 1
    while high < len(noisy) - 1 and noisy[high + 1] > neighbour:
        high += 1
    return low, high


def _bin_edges(signed: int) -> tuple[float, float]:
    """The edges of the bin ``signed`` steps from the zero bin (negative below zero)."""
    if signed == 0:
        return -(2.0**MIN_EXP), 2.0**MIN_EXP
    low, high = 2.0 ** (MIN_EXP + abs(signed) - 1), 2.0 ** (MIN_EXP + abs(signed))
    return (low, high) if signed > 0 else (-high, -low)


def default_delta(rows: int) -> float:
    """δ well below ``1 / rows`` (δ bounds the chance that the guarantee fails outright, so it must be
    far smaller than one row's share): 1e-5, or ``1 / (10 · rows)`` for tables over 10,000 rows."""
    return min(1e-5, 1 / (10 * rows))


#: at most this many bins in the noisy histogram a DP distribution is read from …
CDF_BINS = 256
#: … and about one for every so many times the noise's std of rows: a bin stands out from the
#: noise, and a sparse tail gets bins of its own instead of one wide bin that decodes far past its
#: last value (Adult's ages, 64 to 90 in one bin of [64, 128), came out up to 106)
ROWS_PER_BIN = 4.0
#: a power-of-two bin of at most this many whole numbers gets a bin for each of them
EXACT_NUMBERS = 16


#: the chance that noise alone lets a value the data does not have into a DP distribution (a bin)
SPURIOUS = 0.05


def noise_floor(bins: int, sigma: float, failure: float = SPURIOUS) -> float:
    """The count that Gaussian noise of std ``sigma`` alone exceeds in any of ``bins`` empty bins
    with probability ``failure``: ``σ·Φ⁻¹(1 − failure / bins)``. A noisy count below it is taken
    as empty (post-processing), so noise does not invent values."""
    return sigma * float(norm.isf(failure / bins))


#: histograms :func:`dp_cdf` releases of a column
CDF_HISTOGRAMS = 2


def dp_cdf(
    values: np.ndarray, dp: StatisticsBudget, *, quantum: float = 0.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(knots, cumulative shares)``: a DP distribution of finite ``values``, or None when no
    bounds stand out from the noise.

    Two histograms (:data:`CDF_HISTOGRAMS`). The power-of-two histogram gives the bounds
    (:func:`_power_histogram`); its noisy counts then place finer bins where the mass is
    (post-processing: free), equal in width inside each power-of-two bin, at least one in each and
    one per :data:`ROWS_PER_BIN` noise stds of rows, up to :data:`CDF_BINS`. One noisy histogram
    over those gives every quantile at once. A column of whole numbers (``quantum``) has its edges
    half-way between them, so dense stretches, and power-of-two bins of at most
    :data:`EXACT_NUMBERS` values, get a bin per value and a value's mass decodes (rounded) to itself
    (an hours-per-week column's spike at 40 stays at 40; Adult's 413 doctorates, education 16 of
    16, stay 16 rather than spread over [16, 32)). Counts that noise alone would reach in any empty
    bin with probability :data:`SPURIOUS` are taken as empty, so the range beyond the data does not
    fill up with noise, and the range ends where the outermost bins that clear it end (a tail of
    empty bins, however little mass it held, decoded a value of four million hours a week). An end
    bin that is a whole power-of-two bin is not floored again: the bounds found it (Adult's
    education level 1, 51 rows, alone in [1, 2), fell under the floor of its 31 bins in 4 fits of
    100 at ε = 3).
    """
    coarse = _power_histogram(values, dp)
    if coarse is None:
        return None
    bounds, mass = coarse
    shares = np.floor(mass / (ROWS_PER_BIN * dp.sigma))
    shares = np.maximum(1, np.floor(shares * min(1.0, CDF_BINS / max(shares.sum(), 1.0)))).astype(int)
    if quantum > 0:  # a power-of-two bin of a few whole numbers gets a bin each (a 16 in [16, 32) stays 16)
        exact = np.round(np.diff(bounds) / quantum).astype(int)
        shares = np.where(exact <= EXACT_NUMBERS, np.maximum(shares, exact), shares)
    edges = np.unique(
        np.concatenate(
            [np.linspace(low, high, count + 1) for low, high, count in zip(bounds[:-1], bounds[1:], shares)]
        )
    )
    if quantum > 0:
        edges = np.unique(np.round(edges / quantum) * quantum) - quantum / 2
        edges = np.r_[edges, edges[-1] + quantum] if len(edges) < 2 else edges
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    noisy = counts + dp.noise(len(counts))
    # an end bin that is a whole power-of-two bin of the bounds was found by them: not floored again
    vouched = np.zeros(len(noisy), dtype=bool)
    vouched[[0, -1]] = shares[[0, -1]] == 1
    noisy = np.where((noisy < noise_floor(len(counts), dp.sigma)) & ~vouched, 0.0, np.maximum(noisy, 0.0))
    filled = np.flatnonzero(noisy)
    if filled.size:  # the range ends with the outermost bins that clear the floor: no empty tail
        noisy, edges = noisy[filled[0] : filled[-1] + 1], edges[filled[0] : filled[-1] + 2]
    noisy = noisy + 1e-9
    cdf = np.concatenate([[0.0], np.cumsum(noisy)]) / noisy.sum()
    return edges, cdf
