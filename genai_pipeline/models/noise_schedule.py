"""The Gaussian noise schedule of a diffusion model, kept apart from any network.

It holds only numbers derived from its settings (no weights), so a saved model rebuilds it from its
config. Everything works on plain tensors of any shape, batch first: image diffusion noises NCHW
images with it and a tabular diffusion model can noise its numeric columns with the same code.

Training draws timesteps, noises clean data with :meth:`NoiseSchedule.add_noise` and regresses the
network's output on :meth:`NoiseSchedule.target`. Sampling walks :meth:`NoiseSchedule.timesteps` (a
few of the training steps) with the deterministic DDIM update of :meth:`NoiseSchedule.step`,
which is what makes 10-25 network calls enough to sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from genai_pipeline.models.spans import draw_categorical

BetaSchedule = Literal["cosine", "linear"]
Prediction = Literal["epsilon", "v"]


class NoiseSchedule:
    """Cumulative signal levels ``alpha_bar_t`` for ``t = 0 … num_steps - 1`` and the maths on them.

    ``cosine`` (Nichol & Dhariwal, 2021) destroys information evenly over the steps and suits
    small images; ``linear`` is the original DDPM schedule (Ho et al., 2020), rescaled so that any
    number of steps ends at the same noise level. ``v`` prediction (Salimans & Ho, 2022) stays well
    conditioned at the noisiest steps, where an ``epsilon`` network's estimate of the clean data
    is divided by a signal level close to zero; few-step samplers start exactly there.
    """

    def __init__(
        self, num_steps: int = 1000, *, beta_schedule: BetaSchedule = "cosine", prediction: Prediction = "v"
    ):
        if num_steps < 2:
            raise ValueError("a noise schedule needs at least 2 steps")
        if prediction not in ("epsilon", "v"):
            raise ValueError(f"unknown prediction {prediction!r}")
        self.num_steps = num_steps
        self.prediction = prediction
        if beta_schedule == "cosine":
            steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        elif beta_schedule == "linear":
            scale = 1000 / num_steps
            betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta schedule {beta_schedule!r}")
        # a step that destroys all signal would make the clean-data estimate divide by zero
        self.alphas_cumprod = torch.cumprod(1 - betas.clamp(max=0.999), dim=0).float()

    def _levels(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(alpha_bar_t)`` and ``sqrt(1 - alpha_bar_t)`` shaped to broadcast against ``like``.

        ``t = -1`` means "no noise at all" (``alpha_bar = 1``): the step after the last one.
        """
        alpha_bar = self.alpha_bar(t.to(like.device)).view(-1, *([1] * (like.ndim - 1)))
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t`` of each step; 1 for ``t = -1`` (no noise at all)."""
        levels = self.alphas_cumprod.to(t.device)[t.clamp(min=0)]
        return torch.where(t < 0, torch.ones_like(levels), levels)

    def sample_timesteps(
        self, n: int, *, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps, one per row."""
        return torch.randint(0, self.num_steps, (n,), device=device, generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`` (the forward process)."""
        signal, sigma = self._levels(t, x0)
        return signal * x0 + sigma * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: the noise, or ``v = signal * noise - sigma * x_0``."""
        if self.prediction == "epsilon":
            return noise
        signal, sigma = self._levels(t, x0)
        return signal * noise - sigma * x0

    def split(
        self, xt: torch.Tensor, output: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's estimates of the clean data and of the noise in ``x_t``."""
        signal, sigma = self._levels(t, xt)
        if self.prediction == "epsilon":
            return (xt - sigma * output) / signal, output
        return signal * xt - sigma * output, sigma * xt + signal * output

    def timesteps(self, num_inference_steps: int, *, device: torch.device | None = None) -> torch.Tensor:
        """A descending subset of the training steps for few-step sampling.

        "Trailing" spacing (Lin et al., 2024) starts at the last, pure-noise step, so sampling
        starts from the noise level that the network was trained on and that ``randn`` gives.
        """
        if not 1 <= num_inference_steps <= self.num_steps:
            raise ValueError(f"num_inference_steps must be between 1 and {self.num_steps}")
        fractions = torch.arange(num_inference_steps, 0, -1, dtype=torch.float64) / num_inference_steps
        return ((fractions * self.num_steps).round().long() - 1).to(device)

    def step(
        self,
        output: torch.Tensor,
        t: int,
        t_prev: int,
        xt: torch.Tensor,
        *,
        clip: float | None = None,
    ) -> torch.Tensor:
        """One deterministic DDIM update (Song et al., 2021, eta = 0) from step ``t`` to ``t_prev``.

        The clean-data estimate can be clipped to ``[-clip, clip]`` (the pixel range for images);
        ``t_prev = -1`` returns the clean-data estimate itself.
        """
        now = torch.full((len(xt),), t, device=xt.device)
        x0, noise = self.split(xt, output, now)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            # the noise estimate must agree with the clipped clean data, or the step overshoots
            signal, sigma = self._levels(now, xt)
            noise = (xt - signal * x0) / sigma
        return self.add_noise(x0, noise, torch.full_like(now, t_prev))

    def angular_step(self, output: torch.Tensor, t: int, t_prev: int, xt: torch.Tensor) -> torch.Tensor:
        """One Euler step of the probability-flow ODE in the angle ``φ_t = arccos √alpha_bar_t``.

        With ``x_t = cos φ x_0 + sin φ ε`` the ODE is ``dx/dφ = v̂``, the network's estimate of
        ``v = cos φ ε - sin φ x_0``. An Euler step in φ is exact when v̂ stays constant, which it does
        (at 0) for a column independent of the others, whose quantile-normal values are standard
        normal; DDIM is exact for a single data point instead and shrinks such a column by
        ``cos Δφ`` per step (to a standard deviation of 0.79 after 5 steps). Measured on Adult with
        the same network: column shapes 0.977 with 5 DDIM steps, 0.992 with 5 of these.
        """
        now = torch.full((len(xt),), t, device=xt.device)
        x0, noise = self.split(xt, output, now)
        angle, angle_prev = torch.arccos(self.alpha_bar(torch.tensor([t, t_prev])).sqrt()).tolist()
        return xt + (angle_prev - angle) * (math.cos(angle) * noise - math.sin(angle) * x0)


class MaskSchedule:
    """Absorbing-state diffusion of categorical tokens, driven by a Gaussian schedule's levels.

    At step ``t`` a token is kept with probability ``alpha_bar_t`` and otherwise replaced by its
    span's mask token (index ``size``): numbers and categories lose their information together, so
    one timestep describes how noisy a whole row is. Sampling reverses it: each token has a level
    in (0, 1) and is drawn from the network's distribution of its clean value at the first step
    whose ``alpha_bar`` reaches that level, so it is masked at step ``t`` with probability
    ``1 - alpha_bar_t``, as in training.
    """

    def __init__(self, schedule: NoiseSchedule, sizes: Sequence[int]):
        self.schedule = schedule
        self.masks = torch.tensor(list(sizes), dtype=torch.long)

    def add_noise(
        self, tokens: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Each token masked with probability ``1 - alpha_bar_t``."""
        draws = torch.rand(tokens.shape, generator=generator, device=tokens.device)
        keep = self.schedule.alpha_bar(t)[:, None]
        return torch.where(draws < keep, tokens, self.masks.to(tokens.device))

    def is_masked(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens == self.masks.to(tokens.device)

    def levels(self, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Each token's level: uniform, but stratified over a row's columns.

        Tokens unmasked at the same step are drawn independently of each other, which breaks
        dependent pairs (Adult's education and education_num). A random permutation gives each of
        a row's ``k`` columns its own ``1/k`` slice of (0, 1), so its columns are unmasked at
        different steps as far as the steps allow, while each level stays uniform. On Adult with 5
        steps: pair trends 0.976 → 0.979, education/education_num 0.83 → 0.89.
        """
        count = len(self.masks)
        slices = torch.rand((size, count), generator=generator, device=device).argsort(dim=1)
        return (slices + torch.rand((size, count), generator=generator, device=device)) / count

    def step(
        self,
        logits: Sequence[torch.Tensor],
        t_prev: int,
        tokens: torch.Tensor,
        levels: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Unmask the tokens whose level ``alpha_bar_{t_prev}`` reaches; ``t_prev = -1`` unmasks all."""
        reached = float(self.schedule.alpha_bar(torch.tensor([t_prev]))[0])
        chosen = self.is_masked(tokens) & (levels <= reached)
        tokens = tokens.clone()
        for k, span in enumerate(logits):
            # only the tokens being unmasked are drawn: with few steps, most rows keep their mask
            rows = chosen[:, k].nonzero()[:, 0]
            tokens[rows, k] = draw_categorical(span[rows], generator)
        return tokens


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the timestep (Vaswani et al., 2017), as in DDPM."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t[:, None].float() * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=1)
