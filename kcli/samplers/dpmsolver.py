"""DPM-Solver++ sampling (first order, or "2M": second-order multistep), optionally on Karras sigmas.

DPM-Solver++ (Lu et al., arXiv 2211.01095) integrates the probability-flow ODE of the diffusion in the
log signal-to-noise ratio ``lambda = log(alpha / sigma)``, with the model's x0 prediction as the integrand.
For a step s -> t with ``h = lambda_t - lambda_s`` the first-order update is exactly DDIM (eta = 0):

    x_t = sigma_t / sigma_s * x_s - alpha_t * (exp(-h) - 1) * x0_s

and the multistep second-order one ("2M", Algorithm 2) adds the finite difference of the x0 predictions
of the last two steps, ``D1 = (x0_s - x0_prev) * h / (lambda_s - lambda_prev)``, weighted by one half.
Karras et al. (arXiv 2206.00364, eq. 5) space the sigmas ``sigma = sqrt((1 - abar) / abar)`` as
``(sigma_max^(1/7) + ramp * (sigma_min^(1/7) - sigma_max^(1/7)))^7``; the UNet is then called at the
training timestep that each interpolates to in log sigma, rounded.

Everything follows diffusers' ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
``solver_type="midpoint"``) as you get it from ``DPMSolverMultistepScheduler.from_config(decoder config)``,
so a seed gives the same image:

* timestep spacing: a key the checkpoint's config omits takes the *DPM scheduler's* default, so the
  Kandinsky decoders (no ``timestep_spacing`` key) are spaced ``"linspace"`` over ``n + 1`` points with
  the zero dropped (999, 959, ..., 40 for 25 steps), not like their own DDPM/DDIM (``"leading"``,
  ``steps_offset=1``). The sigma after the last step is 0 (``final_sigmas_type="zero"``): the last step
  lands on the x0 prediction;
* ``clip_sample`` of a DDPM/DDIM config does not apply (the DPM scheduler has no such option); dynamic
  thresholding does. Learned-variance channels are never used: the solver is deterministic, and draws
  no random numbers at all;
* the last step is first order: always with a zero final sigma, and with ``final_sigmas_type="sigma_min"``
  when the schedule has fewer than 15 steps (``lower_order_final``).

The denoising loop passes timesteps, not positions, so the position in the schedule is tracked: a step
continues from the previous one when it is the next in the schedule, otherwise (the first step, or a
loop that starts later in the schedule, as image-to-image does) it starts afresh at the position of
``(t, t_prev)`` with a first-order step, as diffusers does after ``set_begin_index``. ``add_noise(t)``
noises to the sigma of the next step at ``t``; where the schedule repeats ``t`` (Karras sigmas with many
steps) a loop that starts at a later repeat says so with ``set_begin_index(k)`` first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.samplers.schedule import ScheduleConfig, alphas_cumprod, dynamic_threshold

ORDERS = (1, 2)
FINAL_SIGMAS = ("zero", "sigma_min")
RHO = 7.0  # Karras et al.'s exponent

# diffusers' DPMSolverMultistepScheduler options this solver does not implement, with their only supported value
_FIXED = {"algorithm_type": "dpmsolver++", "solver_type": "midpoint", "trained_betas": None,
          "rescale_betas_zero_snr": False, "euler_at_final": False, "use_lu_lambdas": False,
          "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False,
          "use_dynamic_shifting": False}


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A noise-to-signal ratio as the (alpha, sigma) of the variance-preserving process."""
    alpha = 1 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


class DPMSolver:
    uses_variance_channels = False
    init_noise_sigma = 1.0  # the initial latents are unit noise

    def __init__(self, cfg: ScheduleConfig, *, order: int = 2, karras: bool = False,
                 final_sigmas_type: str = "zero", lower_order_final: bool = True):
        if order not in ORDERS:
            raise KandinskyError(f"unsupported DPM-Solver order {order!r} (supported: 1, 2)")
        if final_sigmas_type not in FINAL_SIGMAS:
            raise CheckpointError(f"unsupported scheduler: final_sigmas_type {final_sigmas_type!r} "
                                  f"(supported: {FINAL_SIGMAS})")
        self.cfg, self.order, self.karras = cfg, order, karras
        self.final_sigmas_type, self.lower_order_final = final_sigmas_type, lower_order_final
        ac = alphas_cumprod(cfg)
        self.alphas_cumprod = ac
        self.train_sigmas = ((1 - ac) / ac) ** 0.5  # float32, ascending in t
        self._ts: list[int] = []
        self._sigmas = torch.zeros(1)  # the schedule's sigmas, one more than timesteps (the final one)
        self._next = 0  # position of the step expected next
        self._last = None  # position of the last step taken
        self._history = None  # (lambda, x0 prediction) of the last step taken

    # -- the schedule -------------------------------------------------------------------------------

    def timesteps(self, n: int) -> list[int]:
        """``n`` descending timesteps; starts a new run (forgets the multistep history)."""
        T = self.cfg.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"steps must be between 1 and {T}, got {n}")
        if self.karras:
            ts, sigmas = self._karras(n)
        else:
            ts = spaced_timesteps(self.cfg, n)
            sigmas = self.train_sigmas[ts]
        last = self.train_sigmas[:1] if self.final_sigmas_type == "sigma_min" else torch.zeros(1)
        self._ts, self._sigmas = ts, torch.cat([sigmas.float(), last])
        self.set_begin_index(0)
        return list(ts)

    def _karras(self, n: int) -> tuple[list[int], torch.Tensor]:
        log_train = np.log(self.train_sigmas.numpy())
        lo, hi = float(self.train_sigmas[0]) ** (1 / RHO), float(self.train_sigmas[-1]) ** (1 / RHO)
        sigmas = (hi + np.linspace(0, 1, n) * (lo - hi)) ** RHO  # float64
        # the timestep of each sigma: linear interpolation in log sigma (which rises with t)
        t = np.interp(np.log(np.maximum(sigmas, 1e-10)), log_train, np.arange(len(log_train)))
        # diffusers rounds, except for the cosine schedule, whose timesteps it truncates
        t = np.floor(t) if self.cfg.beta_schedule == "squaredcos_cap_v2" else np.round(t)
        return [int(v) for v in t], torch.from_numpy(sigmas).float()

    def set_begin_index(self, k: int) -> None:
        """The next step (and ``add_noise``) is at position ``k`` of the schedule (diffusers' name).

        Only needed when a loop starts at a timestep the schedule repeats (Karras sigmas with many steps).
        """
        self._next, self._last, self._history = k, None, None

    def _position(self, t: int, t_prev: int | None = None) -> int | None:
        """The position of timestep ``t`` (followed by ``t_prev``), searched from the expected one on."""
        n = len(self._ts)
        for i in [*range(self._next, n), *range(min(self._next, n))]:
            if self._ts[i] == t and (t_prev is None or (self._ts[i + 1] if i + 1 < n else -1) == t_prev):
                return i
        return None

    # -- sampling -----------------------------------------------------------------------------------

    def _x0(self, model_output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            x0 = (x - sigma * model_output) / alpha
        elif kind == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = alpha * x - sigma * model_output
        if self.cfg.thresholding:
            x0 = dynamic_threshold(x0, self.cfg.dynamic_thresholding_ratio, self.cfg.sample_max_value)
        return x0

    def scale_input(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x  # the UNet sees the latents as they are

    def step(self, model_output: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
             generator: torch.Generator | None = None, variance: torch.Tensor | None = None) -> torch.Tensor:
        """x at timestep ``t`` -> x at the next sigma of the schedule (``t_prev`` only locates the step)."""
        if not self._ts:
            raise ValueError("call timesteps(n) before step()")
        i = self._position(t, t_prev)
        if i is None:
            i = self._position(t)
        if i is None:
            raise ValueError(f"timestep {t} is not in the schedule of {len(self._ts)} steps")
        if self._last != i - 1:  # not a continuation: a fresh start has no history
            self._history = None

        alpha_s, sigma_s = _alpha_sigma(self._sigmas[i])
        alpha_t, sigma_t = _alpha_sigma(self._sigmas[i + 1])
        x0 = self._x0(model_output.float(), x.float(), alpha_s, sigma_s)
        lambda_s = torch.log(alpha_s) - torch.log(sigma_s)

        if sigma_t == 0:  # the limit of the update below (sigma_t / sigma_s = 0, exp(-h) = 0)
            out = x0
        else:
            h = (torch.log(alpha_t) - torch.log(sigma_t)) - lambda_s
            out = (sigma_t / sigma_s) * x.float() - (alpha_t * (torch.exp(-h) - 1.0)) * x0
            last = i == len(self._ts) - 1
            first_order = self.order == 1 or self._history is None or (
                last and self.lower_order_final and len(self._ts) < 15)
            if not first_order:
                lambda_p, x0_p = self._history
                d1 = (1.0 / ((lambda_s - lambda_p) / h)) * (x0 - x0_p)
                out = out - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1

        self._history, self._last, self._next = (lambda_s, x0), i, i + 1
        return out.to(model_output.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """``x0`` noised to the level of the step at timestep ``t`` (the next step at ``t`` from the current
        position); for a timestep outside the schedule, to the training level of ``t``."""
        i = self._position(t)
        if i is None:
            a = self.alphas_cumprod[t].to(x0.dtype)
            return a**0.5 * x0 + (1 - a) ** 0.5 * noise
        alpha, sigma = _alpha_sigma(self._sigmas[i].to(x0.dtype))
        return alpha * x0 + sigma * noise


def spaced_timesteps(cfg: ScheduleConfig, n: int) -> list[int]:
    """The DPM scheduler's spacing: ``n + 1`` points with the last (zero) dropped, unlike DDPM/DDIM."""
    T = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + cfg.steps_offset
    else:  # trailing
        ts = np.arange(T, 0, -T / n).round() - 1
    return [int(t) for t in ts]


def dpm_solver(config: dict, *, karras: bool = False, order: int = 2) -> DPMSolver:
    """A DPM-Solver++ for a decoder checkpoint's ``scheduler_config.json`` (of any scheduler class).

    Keys the config omits take the DPM scheduler's defaults (``timestep_spacing="linspace"``);
    ``final_sigmas_type`` and ``lower_order_final`` are read from it when present. The solver order
    and Karras sigmas come from the arguments only.
    """
    for key, value in _FIXED.items():
        if config.get(key, value) != value:
            raise CheckpointError(f"unsupported scheduler for DPM-Solver++: {key} {config[key]!r} "
                                  f"(supported: {value!r})")
    clipped = config.get("lambda_min_clipped")
    if clipped is not None and float(clipped) != -math.inf:
        raise CheckpointError(f"unsupported scheduler for DPM-Solver++: lambda_min_clipped {clipped!r} "
                              "(supported: -inf)")
    cfg = ScheduleConfig.from_dict({**config, "timestep_spacing": config.get("timestep_spacing", "linspace")})
    return DPMSolver(cfg, order=order, karras=karras, final_sigmas_type=config.get("final_sigmas_type", "zero"),
                     lower_order_final=config.get("lower_order_final", True))
