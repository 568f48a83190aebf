"""Ancestral DDPM sampling, the Kandinsky 2.2 decoder's own sampler (arXiv 2006.11239, eq. 6-7).

Every step with t > 0 draws fresh noise, so the number and order of draws match diffusers'
``DDPMScheduler``: with the checkpoints' ``steps_offset=1`` the last timestep is 1 and noise (of
vanishing scale) is drawn at every step.
"""

from __future__ import annotations

import torch

from kcli.errors import CheckpointError
from kcli.samplers.noise import randn
from kcli.samplers.schedule import ScheduleConfig, alphas_cumprod, predict_x0, spaced_timesteps

VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "learned_range")


class DDPM:
    uses_variance_channels = False
    init_noise_sigma = 1.0  # the initial latents are unit noise

    def __init__(self, cfg: ScheduleConfig):
        if cfg.variance_type not in VARIANCES:
            raise CheckpointError(f"unsupported DDPM variance_type {cfg.variance_type!r} (supported: {VARIANCES})")
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod(cfg)
        self.uses_variance_channels = cfg.variance_type == "learned_range"

    def timesteps(self, n: int) -> list[int]:
        return spaced_timesteps(self.cfg, n)

    def _a(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def scale_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x  # the UNet sees the latents as they are

    def step(self, model_output: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, generator: torch.Generator,
             variance: torch.Tensor | None = None) -> torch.Tensor:
        """x_t -> x_{t_prev}; ``t_prev`` is -1 after the last step. ``variance`` is the model's learned one."""
        a_t, a_prev = self._a(t), self._a(t_prev)
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev  # of this (possibly skipped-over) step
        x0 = predict_x0(self.cfg, model_output, x, a_t)
        mean = (a_prev**0.5 * beta) / (1 - a_t) * x0 + alpha**0.5 * (1 - a_prev) / (1 - a_t) * x
        if t <= 0:
            return mean
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        return mean + self._sigma(beta, a_t, a_prev, variance) * noise

    def _sigma(self, beta, a_t, a_prev, variance):
        posterior = torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)  # beta tilde
        kind = self.cfg.variance_type
        if kind == "fixed_small":
            return posterior**0.5
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior))
        if kind == "fixed_large":
            return beta**0.5
        # learned_range: the model interpolates the log variance between beta tilde and beta
        frac = (variance + 1) / 2
        return torch.exp(0.5 * (frac * torch.log(beta) + (1 - frac) * torch.log(posterior)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alphas_cumprod[t].to(x0.dtype)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise
