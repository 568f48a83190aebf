"""Samplers: schedules, DDPM, DDIM, DPM-Solver++, Euler (ancestral), the prior's UnCLIP sampler, and the denoising loop."""

from __future__ import annotations

from kcli.errors import CheckpointError, KandinskyError
from kcli.samplers.ddim import DDIM
from kcli.samplers.ddpm import DDPM
from kcli.samplers.dpmsolver import DPMSolver, dpm_solver
from kcli.samplers.euler import Euler, euler
from kcli.samplers.schedule import ScheduleConfig

DECODER_SAMPLERS = {"DDPMScheduler": DDPM, "DDIMScheduler": DDIM}
# user-facing names -> a sampler built from the checkpoint's schedule (betas, prediction type, spacing ...)
NAMED = {
    "ddpm": lambda config: DDPM(ScheduleConfig.from_dict(config)),
    "ddim": lambda config: DDIM(ScheduleConfig.from_dict(config)),
    "dpm++2m": lambda config: dpm_solver(config),
    "dpm++2m-karras": lambda config: dpm_solver(config, karras=True),
    "euler": lambda config: euler(config),
    "euler_a": lambda config: euler(config, ancestral=True),
}
SAMPLER_NAMES = ("default", *NAMED)


def decoder_sampler(config: dict, name: str | None = None) -> DDPM | DDIM | DPMSolver | Euler:
    """The sampler a decoder checkpoint's ``scheduler_config.json`` asks for, or the one named, configured by it."""
    if name not in (None, "default"):
        if name not in NAMED:
            raise KandinskyError(f"unknown sampler {name!r}: use {', '.join(SAMPLER_NAMES)}")
        return NAMED[name](config)
    cfg = ScheduleConfig.from_dict(config)
    if cfg.kind not in DECODER_SAMPLERS:
        raise CheckpointError(f"unsupported decoder scheduler {cfg.kind!r} (supported: {', '.join(DECODER_SAMPLERS)})")
    return DECODER_SAMPLERS[cfg.kind](cfg)
