"""Peak device memory of one image at a memory level, measured without a GPU or any weights.

The real stages and the real ``Kandinsky`` run one text-to-image call, with full-size models built on the
``meta`` device from the checkpoints' configs, under ``memtrack.DeviceMemory``. So the schedule measured is the
pipeline's own: which models are resident in which stage, the classifier-free-guidance batch of 2, the cold
zero embedding (the image encoder loaded and run inside the prior stage, with the rest of ``high``'s models
resident), the decode and its tiling. Steps do not change the peak, so one of each is run.

What is simulated rather than run, all in this file:
- loading: the stages are built from meta modules (``PriorStage.load`` and ``DecoderStage.load`` read files);
  the dtypes are the loaders' (MoVQ in fp32 under fp16: ``decoder.movq_dtype``);
- ``SimPlacement`` stands in for ``offload.Placement`` (its interface: mode, device, weights_device, adopt, on),
  because meta weights cannot move between a host and a device. It tells the tracker what is resident:
  offload ``none`` holds every model from its load until it is freed; ``model`` holds a stage's models inside
  ``on``; ``sequential`` runs the real ``Streamer``, whose per-block copies are the device allocations, and
  holds each root's own small tensors, which the streamer keeps on the device;
- the zero-embedding cache: a cold run computes it (``PriorStage.compute_zero_embed``), a warm one reads it;
- tokenizers (a stub: token ids take no device memory worth counting) and the last conversion to uint8
  pixels (it copies the image to the host; the picture itself is counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from kcli.models.clip import MAX_TOKENS, CLIPImage, CLIPText, text_model, vision_model
from kcli.models.movq import MoVQ, MoVQConfig
from kcli.models.prior import PriorConfig, PriorTransformer
from kcli.models.unet import UNet, UNetConfig
from kcli.pipelines.decoder import DecoderStage, movq_dtype
from kcli.pipelines.kandinsky import Kandinsky, Settings
from kcli.pipelines.memtrack import DeviceMemory
from kcli.pipelines.offload import Streamer, _tensors
from kcli.pipelines.prior import PriorStage
from kcli.samplers.unclip import UnCLIPSampler

META = torch.device("meta")
LEVELS = {  # memory level -> (offload, MoVQ tiling); pipelines/memory.py is the source
    "high": ("none", None), "balanced": ("model", None), "low": ("sequential", None), "min": ("sequential", True),
}


@dataclass(frozen=True)
class Configs:
    """The config.json dicts of one Kandinsky version's prior and decoder checkpoints."""

    prior: dict
    text_encoder: dict
    image_encoder: dict
    prior_scheduler: dict
    unet: dict
    movq: dict
    decoder_scheduler: dict
    mclip: dict | None = None  # 2.1's decoder text encoder

    @classmethod
    def from_checkpoints(cls, prior: Path, decoder: Path) -> Configs:
        """From checkpoint folders (diffusers layout); only the configs are read."""
        p, d = Path(prior), Path(decoder)
        mclip = d / "text_encoder" / "config.json"
        return cls(_json(p / "prior/config.json"), _json(p / "text_encoder/config.json"),
                   _json(p / "image_encoder/config.json"), _json(p / "scheduler/scheduler_config.json"),
                   _json(d / "unet/config.json"), _json(d / "movq/config.json"),
                   _json(d / "scheduler/scheduler_config.json"), _json(mclip) if mclip.exists() else None)

    @classmethod
    def from_folder(cls, folder: Path, version: str = "2.2") -> Configs:
        """From a flat folder of configs named like tests/data/configs (kandinsky-2-2-prior.prior.json, ...)."""
        f, v = Path(folder), version.replace(".", "-")
        decoder = "kandinsky-2-2-decoder" if version == "2.2" else "kandinsky-2-1"
        scheduler = "kandinsky-2-2-decoder-inpaint" if version == "2.2" else "kandinsky-2-1"  # the same DDPM
        return cls(_json(f / f"kandinsky-{v}-prior.prior.json"), _json(f / f"kandinsky-{v}-prior.text_encoder.json"),
                   _json(f / f"kandinsky-{v}-prior.image_encoder.json"), _json(f / "prior.scheduler.json"),
                   _json(f / f"{decoder}.unet.json"), _json(f / "movq.json"), _json(f / f"{scheduler}.scheduler.json"),
                   _json(f / "kandinsky-2-1.text_encoder.json") if version == "2.1" else None)


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _meta(mem: DeviceMemory, build, dtype: torch.dtype, channels_last: bool = False) -> nn.Module:
    """A module built on the meta device as its loader builds it; weights made here are host weights."""
    with mem.host(), torch.device("meta"):
        module = build().to(dtype).eval().requires_grad_(False)
        return module.to(memory_format=torch.channels_last) if channels_last else module


class _Tokens:
    """Stands in for a tokenizer: ids of the right shape (their values do not change memory)."""

    def __call__(self, prompts, **_):
        n = len(prompts)
        return SimpleNamespace(input_ids=torch.zeros(n, MAX_TOKENS, dtype=torch.long),
                               attention_mask=torch.ones(n, MAX_TOKENS, dtype=torch.long))


class SimPlacement:
    """``offload.Placement`` for meta weights, telling ``mem`` what is resident (see the module docstring)."""

    def __init__(self, mode: str, mem: DeviceMemory):
        self.mode, self.mem, self.device = mode, mem, META
        self.streamers: list[Streamer] = []

    @property
    def weights_device(self) -> torch.device:
        return META

    def adopt(self, module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        if self.mode == "none":
            self.mem.hold(module)  # loaded onto the device, there until freed
        elif self.mode == "sequential":
            self.streamers.append(Streamer(module, META, pin=False))
            self.mem.hold(*(t for _, t in _tensors(module) if t is not None))
        return module

    def on(self, *modules: nn.Module | None):
        return _Resident(self.mem, modules) if self.mode == "model" else _Resident(self.mem, ())

    def close(self) -> None:
        for s in self.streamers:
            s.remove()


class _Resident:
    def __init__(self, mem: DeviceMemory, modules):
        self.mem, self.modules = mem, [m for m in modules if m is not None]

    def __enter__(self):
        self.mem.hold(*self.modules)

    def __exit__(self, *exc):
        self.mem.drop(*self.modules)


class SimPrior(PriorStage):
    def __init__(self, configs: Configs, dtype: torch.dtype, placement: SimPlacement, cold: bool):
        text = CLIPText(_Tokens(), _meta(placement.mem, lambda: text_model(configs.text_encoder), dtype), META)
        prior = _meta(placement.mem, lambda: PriorTransformer(PriorConfig.from_dict(configs.prior)), dtype)
        placement.adopt(prior)  # in PriorStage.load's order
        placement.adopt(text.model)
        super().__init__(Path("."), text, prior, UnCLIPSampler.from_dict(configs.prior_scheduler), dtype, placement)
        self.configs, self.cold = configs, cold
        self.cached: torch.Tensor | None = None  # a zero embedding made earlier in this run

    def embed(self, *args, **kwargs):
        self.placement.mem.label = "prior"
        return super().embed(*args, **kwargs)

    def compute_zero_embed(self) -> torch.Tensor:
        self.placement.mem.label = "zero embed"
        return super().compute_zero_embed()

    def _load_image_encoder(self) -> CLIPImage:
        return CLIPImage(None, _meta(self.placement.mem, lambda: vision_model(self.configs.image_encoder), self.dtype))

    def zero_embed(self) -> torch.Tensor:
        if self.cached is None:
            self.cached = self.compute_zero_embed() if self.cold else torch.zeros(1, self.prior.config.embedding_dim)
        return self.cached.to(self.device, self.dtype)


class SimDecoder(DecoderStage):
    def __init__(self, configs: Configs, dtype: torch.dtype, placement: SimPlacement):
        unet = _meta(placement.mem, lambda: UNet(UNetConfig.from_dict(configs.unet)), dtype, channels_last=True)
        movq = _meta(placement.mem, lambda: MoVQ(MoVQConfig.from_dict(configs.movq)), movq_dtype(dtype), channels_last=True)
        text = None
        if configs.mclip is not None:
            from kcli.models.mclip import MCLIP, MCLIPText, _config

            text = MCLIPText(_Tokens(), _meta(placement.mem, lambda: MCLIP(_config(configs.mclip)), dtype), META)
        for model in (unet, movq, text.model if text else None):
            placement.adopt(model)
        super().__init__(unet, movq, configs.decoder_scheduler, text, placement)

    def sample(self, *args, **kwargs):
        self.placement.mem.label = "decoder"
        return super().sample(*args, **kwargs)

    def decode(self, latents: torch.Tensor, tile: bool | None = None) -> np.ndarray:
        self.placement.mem.label = "decode"
        pixels = self.decode_tensor(latents, tile)
        return np.zeros((pixels.shape[0], pixels.shape[2], pixels.shape[3], 3), np.uint8)


class _MetaTruth(TorchFunctionMode):
    """``bool(meta tensor)`` is True: transformers' XLM-R asks ``mask.all()`` to skip an all-ones padding mask,
    which the tokenizer stub's mask is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__bool__ and args[0].is_meta:
            return True
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Peak:
    bytes: int
    stage: str  # where it was reached: load, prior, zero embed, decoder, decode
    stages: dict[str, int]  # the peak of each of them


def measure(configs: Configs, level: str, *, size: int = 512, dtype: torch.dtype = torch.float16,
            cold: bool = True, tile: bool | None = None, zero_embed_first: bool = False) -> Peak:
    """Peak device bytes of one ``size``x``size`` text-to-image call at ``level`` (``tile`` overrides the level's).

    ``zero_embed_first`` measures a schedule the pipeline does not have yet: a cold zero embedding made
    right after the prior loads, before the decoder does.
    """
    from kcli.pipelines.kandinsky import Kandinsky, Settings

    offload, level_tile = LEVELS[level]
    mem = DeviceMemory(META)
    placement = SimPlacement(offload, mem)
    with mem, _MetaTruth():
        mem.label = "load"
        prior = SimPrior(configs, dtype, placement, cold)
        if zero_embed_first:
            prior.zero_embed()
        k = Kandinsky(prior, SimDecoder(configs, dtype, placement), META, dtype)
        settings = Settings("", width=size, height=size, steps=1, prior_steps=1,
                            tile=tile if tile is not None else level_tile)
        for _ in k.generate(settings):
            pass
        placement.close()
    return Peak(mem.peak, mem.peak_label, dict(mem.peaks))
