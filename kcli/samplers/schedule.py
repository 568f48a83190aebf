"""The discrete diffusion schedule shared by the samplers, read from a checkpoint's ``scheduler_config.json``.

Everything a sampler needs is here: the betas and cumulative alphas, the spacing of the inference
timesteps over the training ones, and the x0 prediction with its clipping or dynamic thresholding.
Values are computed in float32 like diffusers' schedulers, so a seed gives the same image.
References: diffusers ``schedulers/scheduling_ddpm.py`` and ``scheduling_ddim.py`` (set_timesteps, step),
DDPM (arXiv 2006.11239), DDIM (2010.02502), "Common Diffusion Noise Schedules..." (2305.08891, spacing),
Imagen (2205.11487, dynamic thresholding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.ranges import check, count, real

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str  # the checkpoint's _class_name, e.g. "DDPMScheduler"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    RANGES: ClassVar[dict] = {  # sane ranges of scheduler_config.json's numbers (kcli.loading.ranges)
        "num_train_timesteps": count(2, 100_000), "beta_start": real(1e-12, 0.999), "beta_end": real(1e-12, 0.999),
        "clip_sample_range": real(1e-6, 1e6), "dynamic_thresholding_ratio": real(0.0, 1.0),
        "sample_max_value": real(1e-6, 1e6), "steps_offset": count(0, 100),
    }

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleConfig:
        """Translate a scheduler_config.json; keys it omits take diffusers' defaults for that class."""
        check(d, cls.RANGES, "scheduler config")
        for name in ("_class_name", "beta_schedule", "prediction_type", "variance_type", "timestep_spacing"):
            if name in d and not isinstance(d[name], str):
                raise CheckpointError(f"scheduler config: {name} must be text, got {d[name]!r}")
        for name in ("clip_sample", "thresholding", "set_alpha_to_one"):
            if name in d and not isinstance(d[name], bool):
                raise CheckpointError(f"scheduler config: {name} must be true or false, got {d[name]!r}")
        fields = {f for f in cls.__dataclass_fields__ if f != "kind"}
        cfg = cls(kind=d.get("_class_name", "DDPMScheduler"), **{k: v for k, v in d.items() if k in fields})
        for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("timestep_spacing", SPACINGS),
                              ("prediction_type", PREDICTIONS)):
            if getattr(cfg, name) not in allowed:
                raise CheckpointError(f"unsupported scheduler: {name} {getattr(cfg, name)!r} (supported: {allowed})")
        return cfg


def betas(cfg: ScheduleConfig) -> torch.Tensor:
    T = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float32) ** 2
    return cosine_betas(T)


def cosine_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2``, the cosine schedule of improved DDPM (arXiv 2102.09672): float64 math, float32 out."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)],
                        dtype=torch.float32)


def alphas_cumprod(cfg: ScheduleConfig) -> torch.Tensor:
    return torch.cumprod(1.0 - betas(cfg), dim=0)


def spaced_timesteps(cfg: ScheduleConfig, n: int) -> list[int]:
    """``n`` inference timesteps, descending, spaced over the training timesteps as the config says."""
    T = cfg.num_train_timesteps
    ts = _spaced(cfg, n) if 1 <= n <= T else [T]
    if ts[0] >= T:  # "leading" with steps_offset=1 reaches T itself at n = T: the schedule ends one short
        most = next(m for m in range(min(n, T), 0, -1) if _spaced(cfg, m)[0] < T)
        raise KandinskyError(f"steps must be between 1 and {most} for this checkpoint's schedule, got {n}")
    return ts


def _spaced(cfg: ScheduleConfig, n: int) -> list[int]:
    T = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1]
    elif cfg.timestep_spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1] + cfg.steps_offset
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    return [int(t) for t in ts]


def predict_x0(cfg: ScheduleConfig, model_output: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The model's estimate of the clean sample at cumulative alpha ``a_t``, clipped as configured."""
    if cfg.prediction_type == "epsilon":
        x0 = (x - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
    elif cfg.prediction_type == "sample":
        x0 = model_output
    else:  # v_prediction
        x0 = a_t**0.5 * x - (1 - a_t) ** 0.5 * model_output
    if cfg.thresholding:
        return dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    if cfg.clip_sample:
        return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return x0


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding: clamp each sample to its ``ratio`` quantile of |x0| (at least 1), rescale."""
    flat = x0.float().flatten(1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (flat.clamp(-s, s) / s).reshape(x0.shape).to(x0.dtype)


def predict_eps(cfg: ScheduleConfig, model_output: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The noise implied by the (unclipped) model output: what DDIM moves along."""
    if cfg.prediction_type == "epsilon":
        return model_output
    if cfg.prediction_type == "sample":
        return (x - a_t**0.5 * model_output) / (1 - a_t) ** 0.5
    return a_t**0.5 * model_output + (1 - a_t) ** 0.5 * x  # v_prediction


def legacy_img2img_noise(x0: torch.Tensor, noise: torch.Tensor, strength: float, T: int = 1000) -> torch.Tensor:
    """How the Kandinsky 2.1 image-to-image reference noises its start: at timestep ``int(T * strength) - 2``
    of the *default DDPM* schedule (betas 0.0001..0.02), whatever the checkpoint's schedule. Reproduced for
    equality; unlike the reference, the timestep never goes below 0 (there it wrapped to full noise)."""
    a = torch.cumprod(1.0 - torch.linspace(0.0001, 0.02, T, dtype=torch.float32), dim=0)
    a = a[max(int(T * strength) - 2, 0)].to(x0.dtype)
    return a**0.5 * x0 + (1 - a) ** 0.5 * noise
