"""Euler and Euler-ancestral sampling in sigma space (Karras et al., arXiv 2206.00364, Algorithm 1 and its
ancestral variant from k-diffusion), the AUTOMATIC1111 web UI's "Euler" and default "Euler a".

The variance-preserving latents ``x_vp = alpha (x0 + sigma eps)`` of the DDPM schedule are carried as
``x = x0 + sigma eps`` with ``sigma = sqrt((1 - abar) / abar)``. So:

* the initial noise is scaled by ``init_noise_sigma`` (the largest sigma; ``sqrt(sigma^2 + 1)`` with
  "leading" spacing, as diffusers has it), and ``add_noise`` is ``x0 + sigma * noise``;
* the UNet, trained on ``x_vp``, sees ``scale_input(x, t) = x / sqrt(sigma^2 + 1)``;
* a step moves along ``d = (x - x0) / sigma`` from ``sigma`` to the next sigma (Euler), or to
  ``sigma_down`` and then adds fresh noise of scale ``sigma_up`` (ancestral), where
  ``sigma_up = sqrt(sigma_to^2 (sigma^2 - sigma_to^2) / sigma^2)`` and
  ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``.

Everything follows diffusers' ``EulerDiscreteScheduler`` / ``EulerAncestralDiscreteScheduler`` as you get
them from ``from_config(decoder config)``, so a seed gives the same image:

* a key the checkpoint's config omits takes the Euler scheduler's default: the Kandinsky decoders (no
  ``timestep_spacing`` key) are spaced ``"linspace"``, so the timesteps are fractional
  (999, 946.44..., ...) and the sigmas are interpolated linearly between the training ones; the sigma
  after the last step is 0;
* ``clip_sample`` and ``thresholding`` do not apply (those schedulers have no such options);
* the ancestral sampler draws one noise tensor at every step, the last included (where its scale is 0),
  in the model output's dtype, after the deterministic part; plain Euler draws nothing.

Where we differ from diffusers' Kandinsky pipelines with these schedulers, on purpose:

* they never call ``scale_model_input`` (their StableDiffusion pipelines do, as the algorithm requires); we
  scale, and the test oracle wraps the reference UNet to do the same;
* their 2.2 inpainting re-noises the known region with the initial latents *after* the ``init_noise_sigma``
  scaling, so by ``init_noise_sigma * sigma``; we use unit noise (``x0 + sigma * noise``);
* their 2.1 image-to-image scales the encoded picture by ``init_noise_sigma`` and noises it the DDPM way; we
  noise it with ``add_noise`` in sigma space, at the first kept step, as 2.2 does.
"""

from __future__ import annotations

import numpy as np
import torch

from kcli.errors import CheckpointError
from kcli.samplers.noise import randn
from kcli.samplers.schedule import ScheduleConfig, alphas_cumprod

# diffusers' Euler scheduler options not implemented here, with their only supported value
_FIXED = {"trained_betas": None, "rescale_betas_zero_snr": False, "interpolation_type": "linear",
          "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
          "timestep_type": "discrete", "final_sigmas_type": "zero", "sigma_min": None, "sigma_max": None}


class Euler:
    uses_variance_channels = False

    def __init__(self, cfg: ScheduleConfig, *, ancestral: bool = False):
        self.cfg, self.ancestral = cfg, ancestral
        self.alphas_cumprod = alphas_cumprod(cfg)
        # float32, ascending in t
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self._ts: list[float] = []
        self._sigmas: torch.Tensor | None = None  # one more than timesteps: the final 0

    def timesteps(self, n: int) -> list[float]:
        """``n`` descending (possibly fractional) timesteps."""
        T = self.cfg.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {n}")
        if self.cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
        elif self.cfg.timestep_spacing == "leading":
            ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.float32) + self.cfg.steps_offset
        else:  # trailing
            ts = np.arange(T, 0, -T / n).round().astype(np.float32) - 1
        sigmas = np.interp(ts, np.arange(T), self.train_sigmas.numpy())  # float64, cast down like diffusers
        self._sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self._ts = [float(t) for t in ts.astype(np.float32)]
        return list(self._ts)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The scale of the initial noise; depends on the schedule, so ask after ``timesteps(n)``."""
        if self._sigmas is None:
            raise ValueError("call timesteps(n) before init_noise_sigma")
        top = self._sigmas.max()
        return top if self.cfg.timestep_spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def _sigma(self, t: float) -> tuple[int, torch.Tensor]:
        if t not in self._ts:
            raise ValueError(f"timestep {t} is not in the schedule of {len(self._ts)} steps")
        i = self._ts.index(t)
        return i, self._sigmas[i]

    def scale_input(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """What the UNet sees at timestep ``t``: the variance-preserving latents."""
        return x / (self._sigma(t)[1] ** 2 + 1) ** 0.5

    def _x0(self, model_output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return x - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        return model_output  # sample

    def step(self, model_output: torch.Tensor, t: float, t_prev: float, x: torch.Tensor,
             generator: torch.Generator | None = None, variance: torch.Tensor | None = None) -> torch.Tensor:
        """x at timestep ``t`` -> x at the next sigma of the schedule (``t_prev`` is not needed)."""
        i, sigma = self._sigma(t)
        sigma_to = self._sigmas[i + 1]
        sample = x.float()
        d = (sample - self._x0(model_output, sample, sigma)) / sigma
        if not self.ancestral:
            return (sample + d * (sigma_to - sigma)).to(model_output.dtype)
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        out = sample + d * (sigma_down - sigma)
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        return (out + noise * sigma_up).to(model_output.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        """``x0`` noised to the sigma of the step at timestep ``t``."""
        return x0 + noise * self._sigma(t)[1].to(x0.dtype)


def euler(config: dict, *, ancestral: bool = False) -> Euler:
    """An Euler (or Euler-ancestral) sampler for a decoder checkpoint's ``scheduler_config.json``; keys it
    omits take the Euler scheduler's defaults (``timestep_spacing="linspace"``)."""
    for key, value in _FIXED.items():
        if config.get(key, value) != value:
            raise CheckpointError(f"unsupported scheduler for Euler: {key} {config[key]!r} "
                                  f"(supported: {value!r})")
    cfg = ScheduleConfig.from_dict({**config, "timestep_spacing": config.get("timestep_spacing", "linspace")})
    if ancestral and cfg.prediction_type == "sample":
        raise CheckpointError("unsupported scheduler for Euler-ancestral: prediction_type 'sample'")
    return Euler(cfg, ancestral=ancestral)
