"""The decoder stage: CLIP image embedding -> latents (UNet + sampler) -> pixels (MoVQ).

Three ways in, one loop: from noise (text-to-image), from a partly noised picture (image-to-image),
and from noise with a known region re-imposed after every step (inpainting, 9-channel UNet).
A depth ControlNet decoder (8-channel UNet) also takes a hint picture in the first two.
The version is the checkpoint's: 2.1 decoders also read the prompt (M-CLIP, ``text_encoder/``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.ranges import in_file
from kcli.loading.weights import read_json
from kcli.models.hint import DOWNSCALE
from kcli.models.mclip import MCLIPText
from kcli.models.movq import MoVQ, load_movq
from kcli.models.unet import UNet, load_unet
from kcli.pipelines import tiling
from kcli.pipelines.masks import keep_latent_mask
from kcli.pipelines.pixels import to_uint8
from kcli.pipelines.placement import Placement
from kcli.samplers import Euler, decoder_sampler
from kcli.samplers.denoise import denoise
from kcli.samplers.noise import randn
from kcli.samplers.schedule import legacy_img2img_noise


class NotFinite(KandinskyError):
    """A decoded picture with NaN or inf in it."""


def grid_step(movq_levels: int, unet_levels: int) -> int:
    """Output sizes are multiples of this (64 px for the real models).

    The reference rounds latents to a multiple of the MoVQ factor (sf * sf pixels); the UNet also needs
    latents divisible by its total downsampling. Both hold with this step.
    """
    sf = 2 ** (movq_levels - 1)
    return sf * max(sf, 2 ** (unet_levels - 1))


def decoder_grid_step(folder: Path) -> int:
    """The grid of a decoder checkpoint, from its configs alone (no weights are read)."""
    movq = read_json(Path(folder) / "movq" / "config.json")
    unet = read_json(Path(folder) / "unet" / "config.json")
    return grid_step(len(movq.get("block_out_channels", [0])), len(unet.get("block_out_channels", [0])))


def movq_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16's range is too small for the MoVQ decoder's activations: it runs in fp32 then (67M weights)."""
    return torch.float32 if dtype == torch.float16 else dtype


def decoder_takes_hint(folder: Path) -> bool:
    """Whether a decoder checkpoint is a depth ControlNet, from its UNet config alone (no weights are read)."""
    return read_json(Path(folder) / "unet" / "config.json").get("addition_embed_type") == "image_hint"


def check_decoder_hint(folder: Path, hinted: bool) -> None:
    """Before loading: a hint needs a ControlNet decoder, and a ControlNet decoder needs a hint."""
    check_hint_fits(decoder_takes_hint(folder), hinted)


def check_hint_fits(takes: bool, hinted: bool) -> None:
    if takes and not hinted:
        raise KandinskyError("this decoder is a depth ControlNet: it needs a hint picture (--hint DEPTH.png or "
                             "--depth-from PHOTO)")
    if hinted and not takes:
        raise KandinskyError("a hint needs a depth ControlNet decoder (model 2.2-depth); this decoder takes none")


class DecoderStage:
    def __init__(self, unet: UNet, movq: MoVQ, scheduler_config: dict, text: MCLIPText | None = None,
                 placement: Placement | None = None):
        self.unet, self.movq, self.text = unet, movq, text
        self.placement = placement or Placement("none", unet.conv_in.weight.device)
        self.scheduler_config = scheduler_config
        self.folder: Path | None = None  # set by load
        self.sampler = decoder_sampler(scheduler_config)  # the checkpoint's own; checks the config at load
        if (unet.config.version == "2.1") != (text is not None):
            raise CheckpointError("a Kandinsky 2.1 decoder needs its text encoder, and only it")
        if unet.config.takes_hint and movq.scale_factor != DOWNSCALE:
            raise CheckpointError(f"a ControlNet decoder needs a MoVQ that scales by {DOWNSCALE} (its hint encoder "
                                  f"does), this one scales by {movq.scale_factor}")

    @classmethod
    def load(cls, folder: Path, *, dtype: torch.dtype, placement: Placement) -> DecoderStage:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"decoder {folder} is not a folder")
        config = folder / "scheduler" / "scheduler_config.json"
        scheduler = read_json(config)
        with in_file(config):
            decoder_sampler(scheduler)  # checked before the models load
        where = placement.weights_device
        # convolutions run fastest channels-last on CPU (bf16: 2x) and on tensor cores: laid out so as they load
        unet = load_unet(folder / "unet", dtype=dtype, device=where, channels_last=True)
        movq = load_movq(folder / "movq", dtype=movq_dtype(dtype), device=where, channels_last=True)
        text = None
        if unet.config.version == "2.1":
            text = placement.attach_encoder(MCLIPText.load(folder, dtype=dtype, device=where))
        for model in (unet, movq):
            placement.attach(model)
        stage = cls(unet, movq, scheduler, text, placement)
        stage.folder = folder
        return stage

    def _models(self, *extra) -> tuple:
        return (self.unet, self.text.model if self.text else None, *extra)

    @property
    def version(self) -> str:
        return self.unet.config.version

    @property
    def pixel_step(self) -> int:
        return grid_step(len(self.movq.config.block_out_channels), len(self.unet.config.block_out_channels))

    @property
    def embed_dim(self) -> int:
        return self.unet.config.image_embed_dim

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 2 * self.movq.config.latent_channels + 1

    @property
    def takes_hint(self) -> bool:
        """A depth ControlNet decoder: every picture it makes needs a hint."""
        return self.unet.config.takes_hint

    @property
    def device(self) -> torch.device:
        return self.placement.device

    def check_hint(self, given: bool) -> None:
        """A hint goes with a ControlNet decoder, and a ControlNet decoder with a hint."""
        check_hint_fits(self.takes_hint, given)

    def _hint(self, hint: torch.Tensor | None, rows: int, guidance: float, width: int, height: int) -> dict:
        """The hint as the UNet takes it: (1, 3, H, W) in [0, 1] -> one row per UNet row, [uncond; cond]."""
        self.check_hint(hint is not None)
        if hint is None:
            return {}
        if tuple(hint.shape[-2:]) != (height, width) or hint.shape[-3] != 3:
            raise KandinskyError(f"the hint is {tuple(hint.shape[-3:])}, the decoder needs (3, {height}, {width})")
        hint = hint.expand(rows, -1, -1, -1)
        if guidance > 1.0:
            hint = torch.cat([hint, hint])
        return {"hint": hint.to(device=self.device, dtype=self.unet.dtype)}

    def _cond(self, image_embeds, negative_embeds, prompt: str | list[str], guidance: float) -> dict:
        """The UNet's conditioning, rows [unconditional; conditional] under guidance; ``prompt`` one for all
        rows, or a list of one per row (a batch of images of different prompts).

        2.1 also reads the prompt; like the reference's combined pipelines, its unconditional text is empty
        (a negative prompt acts through the prior's negative image embedding).
        """
        cfg = guidance > 1.0
        rows = image_embeds.shape[0]
        cond = {"image_embeds": torch.cat([negative_embeds, image_embeds]) if cfg else image_embeds}
        if self.text is not None:
            prompts = [prompt] * rows if isinstance(prompt, str) else list(prompt)  # one per row of a batch
            texts = [""] * rows + prompts if cfg else prompts
            cond["text_embeds"], cond["text_hidden"] = self.text(texts)
        return {k: v.to(device=self.device, dtype=self.unet.dtype) for k, v in cond.items()}

    def _require(self, inpainting: bool) -> None:
        if inpainting != self.is_inpainting:
            need = "an inpainting decoder (9 input channels)" if inpainting else "a text-to-image decoder"
            raise KandinskyError(f"this needs {need}, but the decoder has {self.unet.config.in_channels} input channels")

    def sample(self, image_embeds: torch.Tensor, negative_embeds: torch.Tensor, prompt: str | list[str] = "", *,
               width: int, height: int, steps: int, guidance: float, generator: torch.Generator,
               sampler: str | None = None, on_step=None, hint: torch.Tensor | None = None) -> torch.Tensor:
        """Text-to-image: (B, D) embeddings -> (B, 4, h, w) latents. ``width``/``height`` are on the grid.
        Row i draws from ``generator`` i of a ``PerImage`` (see ``kcli.samplers.noise``).

        ``hint`` (1, 3, height, width) in [0, 1], for a ControlNet decoder only: the same for every row."""
        self._require(False)
        solver = decoder_sampler(self.scheduler_config, sampler)
        extra = self._hint(hint, image_embeds.shape[0], guidance, width, height)
        with self.placement.on(*self._models()):
            cond, sf = self._cond(image_embeds, negative_embeds, prompt, guidance), self.movq.scale_factor
            cond.update(extra)
            shape = (image_embeds.shape[0], self.movq.config.latent_channels, height // sf, width // sf)
            timesteps = solver.timesteps(steps)  # first: the initial noise's scale depends on the schedule
            latents = randn(shape, generator, self.device, self.unet.dtype) * solver.init_noise_sigma
            return denoise(lambda x, t: self.unet(x, t, **cond), solver, latents, timesteps,
                           guidance=guidance, generator=generator, on_step=on_step)

    def refine(self, init: torch.Tensor, image_embeds: torch.Tensor, negative_embeds: torch.Tensor,
               prompt: str = "", *, strength: float, steps: int, guidance: float, generator: torch.Generator,
               sampler: str | None = None, on_step=None, hint: torch.Tensor | None = None) -> torch.Tensor:
        """Image-to-image: re-noise the encoded picture (B, 3, H, W in [-1, 1]), then run the last
        ``strength`` share of the schedule (at least one step).

        2.2 noises to the level of the first kept step; 2.1 as its reference does (legacy_img2img_noise).
        ``hint`` as in ``sample``, at the picture's size.
        """
        self._require(False)
        solver = decoder_sampler(self.scheduler_config, sampler)
        extra = self._hint(hint, image_embeds.shape[0], guidance, init.shape[-1], init.shape[-2])
        with self.placement.on(*self._models(self.movq)):
            cond = self._cond(image_embeds, negative_embeds, prompt, guidance)
            cond.update(extra)
            x0 = self.encode(init).to(self.unet.dtype)
            x0 = x0.expand(image_embeds.shape[0], -1, -1, -1)  # one picture for every image of a batch
            timesteps = solver.timesteps(steps)
            start = steps - max(1, min(int(steps * strength), steps))
            if hasattr(solver, "set_begin_index"):
                solver.set_begin_index(start)
            noise = randn(x0.shape, generator, self.device, self.unet.dtype)
            if self.version == "2.1" and not isinstance(solver, Euler):  # Euler noises in its own (sigma) space
                latents = legacy_img2img_noise(x0, noise, strength, self.sampler.cfg.num_train_timesteps)
            else:
                latents = solver.add_noise(x0, noise, timesteps[start])
            return denoise(lambda x, t: self.unet(x, t, **cond), solver, latents, timesteps[start:],
                           guidance=guidance, generator=generator, on_step=on_step)

    def inpaint(self, image: torch.Tensor, repaint: np.ndarray, image_embeds: torch.Tensor,
                negative_embeds: torch.Tensor, prompt: str = "", *, steps: int, guidance: float,
                generator: torch.Generator, sampler: str | None = None, on_step=None) -> torch.Tensor:
        """Repaint where ``repaint`` (H, W bool) is set in ``image`` (1, 3, H, W in [-1, 1]).

        The UNet sees [latents, known latents, keep mask]. 2.2 also puts the known region back after every
        step, noised to the next step's level with the initial noise (no new draws), and finally without
        noise; the 2.1 reference does neither, and neither do we for 2.1.
        """
        self._require(True)
        with self.placement.on(*self._models(self.movq)):
            return self._inpaint(image, repaint, image_embeds, negative_embeds, prompt, steps, guidance,
                                 generator, decoder_sampler(self.scheduler_config, sampler), on_step)

    def _inpaint(self, image, repaint, image_embeds, negative_embeds, prompt, steps, guidance, generator, solver,
                 on_step) -> torch.Tensor:
        dtype, cfg = self.unet.dtype, guidance > 1.0
        cond = self._cond(image_embeds, negative_embeds, prompt, guidance)
        known = self.encode(image).to(dtype)  # (1, 4, h, w)
        keep = keep_latent_mask(repaint, tuple(known.shape[-2:])).to(self.device, dtype)
        extra = torch.cat([known * keep, keep], dim=1)  # (1, 5, h, w)
        extra = extra.repeat(2 * image_embeds.shape[0] if cfg else image_embeds.shape[0], 1, 1, 1)

        timesteps = solver.timesteps(steps)
        noise = randn((image_embeds.shape[0], *known.shape[1:]), generator, self.device, dtype)
        latents = noise * solver.init_noise_sigma

        def put_back(i: int, x: torch.Tensor) -> torch.Tensor:
            ref = known
            if i + 1 < len(timesteps):
                ref = solver.add_noise(known, noise, timesteps[i + 1])
            return keep * ref + (1 - keep) * x

        blend = self.version == "2.2"
        latents = denoise(lambda x, t: self.unet(torch.cat([x, extra], dim=1), t, **cond), solver, latents,
                          timesteps, guidance=guidance, generator=generator, on_step=on_step,
                          after_step=put_back if blend else None)
        return keep * known + (1 - keep) * latents if blend else latents

    tile: bool | None = None  # the MoVQ encode in tiles (None: from the size ``decode`` tiles at); set by the run

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents on the device; in tiles when ``self.tile``, or (None) from the
        size ``decode`` tiles at (the whole fp32 encode of a 1024 px picture takes 2.5 GiB, in tiles 0.2)."""
        x = pixels.to(self.device)
        tile = self.tile if self.tile is not None else max(x.shape[-2:]) // self.movq.scale_factor >= \
            tiling.AUTO_TILE_LATENT
        if tile:
            return tiling.encode(self.movq, x)
        return self.movq.encode(x)

    def decode(self, latents: torch.Tensor, tile: bool | None = None) -> np.ndarray:
        """(B, 4, h, w) latents -> (B, H, W, 3) uint8 pixels; in tiles when ``tile``, or (None) when large.
        A picture that is not finite (NaN or inf: damaged weights, as a file changed in place) is an error, never
        a black image."""
        pixels = self.decode_tensor(latents, tile)
        if not bool(pixels.isfinite().all()):
            raise NotFinite("the decoded image holds NaN or infinite values: a weight file is probably damaged")
        return to_uint8(pixels)

    def decode_tensor(self, latents: torch.Tensor, tile: bool | None = None) -> torch.Tensor:
        """``decode`` before the conversion to pixels: (B, 3, H, W) in about [-1, 1], on the device."""
        if tile is None:
            tile = max(latents.shape[-2:]) >= tiling.AUTO_TILE_LATENT
        with self.placement.on(self.movq):
            z = latents.to(self.device, self.movq.dtype)
            return tiling.decode(self.movq, z) if tile else self.movq.decode(z)
