"""Samplers: schedules, DDPM, DDIM, the prior's UnCLIP sampler, and the denoising loop."""

from __future__ import annotations

from kcli.loading.errors import CheckpointError
from kcli.samplers.ddim import DDIM
from kcli.samplers.ddpm import DDPM
from kcli.samplers.schedule import ScheduleConfig

DECODER_SAMPLERS = {"DDPMScheduler": DDPM, "DDIMScheduler": DDIM}


def decoder_sampler(config: dict) -> DDPM | DDIM:
    """The sampler a decoder checkpoint's ``scheduler_config.json`` asks for, configured by it."""
    cfg = ScheduleConfig.from_dict(config)
    if cfg.kind not in DECODER_SAMPLERS:
        raise CheckpointError(f"unsupported decoder scheduler {cfg.kind!r} (supported: {', '.join(DECODER_SAMPLERS)})")
    return DECODER_SAMPLERS[cfg.kind](cfg)
