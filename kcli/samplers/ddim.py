"""Deterministic DDIM sampling (eta = 0; arXiv 2010.02502), the Kandinsky 2.1 decoder's own sampler.

No noise is drawn after the initial latents. As in diffusers' ``DDIMScheduler`` the previous
timestep is ``t - T // n`` whatever the spacing, and below zero the final cumulative alpha is 1 or
``alphas_cumprod[0]`` (``set_alpha_to_one``).
"""

from __future__ import annotations

import torch

from kcli.samplers.schedule import ScheduleConfig, alphas_cumprod, predict_eps, predict_x0, spaced_timesteps


class DDIM:
    uses_variance_channels = False
    init_noise_sigma = 1.0  # the initial latents are unit noise

    def __init__(self, cfg: ScheduleConfig):
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod(cfg)
        self.final = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self._n = None

    def timesteps(self, n: int) -> list[int]:
        self._n = n
        return spaced_timesteps(self.cfg, n)

    def scale_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x  # the UNet sees the latents as they are

    def step(self, model_output: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
             generator: torch.Generator | None = None, variance: torch.Tensor | None = None) -> torch.Tensor:
        # diffusers steps back by T // n, not to the next listed timestep; the two agree for "leading"
        t_prev = t - self.cfg.num_train_timesteps // self._n
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final
        x0 = predict_x0(self.cfg, model_output, x, a_t)
        eps = predict_eps(self.cfg, model_output, x, a_t)
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alphas_cumprod[t].to(x0.dtype)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise
