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
from typing import Literal

import torch

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
        alpha_bar = self.alphas_cumprod.to(like.device)[t.clamp(min=0)]
        alpha_bar = torch.where(t < 0, torch.ones_like(alpha_bar), alpha_bar)
        alpha_bar = alpha_bar.view(-1, *([1] * (like.ndim - 1)))
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

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
