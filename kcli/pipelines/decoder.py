"""The decoder stage: CLIP image embedding -> latents (UNet + sampler) -> pixels (MoVQ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kcli.loading.errors import CheckpointError
from kcli.loading.weights import read_json
from kcli.models.movq import MoVQ, load_movq
from kcli.models.unet import UNet, load_unet
from kcli.pipelines.images import to_uint8
from kcli.samplers import decoder_sampler
from kcli.samplers.denoise import denoise
from kcli.samplers.noise import randn


class DecoderStage:
    def __init__(self, unet: UNet, movq: MoVQ, scheduler_config: dict):
        self.unet, self.movq = unet, movq
        self.scheduler_config = scheduler_config
        self.sampler = decoder_sampler(scheduler_config)

    @classmethod
    def load(cls, folder: Path, *, dtype: torch.dtype, device: torch.device) -> DecoderStage:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"decoder {folder} is not a folder")
        scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
        return cls(load_unet(folder / "unet", dtype=dtype, device=device),
                   load_movq(folder / "movq", dtype=dtype, device=device), scheduler)

    @property
    def pixel_step(self) -> int:
        """Output sizes are multiples of this (64 px for the real models).

        The reference rounds latents to a multiple of the MoVQ factor (sf * sf pixels); the UNet also needs
        latents divisible by its total downsampling. Both hold with this step.
        """
        sf = self.movq.scale_factor
        return sf * max(sf, 2 ** (len(self.unet.cfg.block_out_channels) - 1))

    @property
    def embed_dim(self) -> int:
        return self.unet.cfg.encoder_hid_dim

    def sample(self, image_embeds: torch.Tensor, negative_embeds: torch.Tensor, *, width: int, height: int,
               steps: int, guidance: float, generator: torch.Generator, on_step=None) -> torch.Tensor:
        """(B, D) embeddings -> (B, 4, h, w) latents. ``width``/``height`` must be on the grid."""
        unet, dtype, device = self.unet, self.unet.dtype, self.unet.conv_in.weight.device
        cond = image_embeds
        if guidance > 1.0:
            cond = torch.cat([negative_embeds, image_embeds])
        cond = cond.to(device=device, dtype=dtype)

        sf = self.movq.scale_factor
        shape = (image_embeds.shape[0], self.unet.cfg.in_channels, height // sf, width // sf)
        latents = randn(shape, generator, device, dtype)
        timesteps = self.sampler.timesteps(steps)
        return denoise(lambda x, t: unet(x, t, cond), self.sampler, latents, timesteps,
                       guidance=guidance, generator=generator, on_step=on_step)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(B, 4, h, w) latents -> (B, H, W, 3) uint8 pixels."""
        return to_uint8(self.movq.decode(latents.to(self.movq.dtype)))
