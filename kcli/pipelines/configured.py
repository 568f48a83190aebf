"""Pipeline stages built from checkpoint configs, without checkpoint files: for measuring and checking.

``ConfiguredPrior`` and ``ConfiguredDecoder`` are the real ``PriorStage`` and ``DecoderStage``, with models built
by a ``make(build, dtype, channels_last)`` factory (on the meta device for ``memsim``, with random weights on a
GPU for benchmarks/gpu_check.py) and adopted by the placement in the loaders' order. What they replace:
- the tokenizers, by a stub (token ids of the right shape: with random or no weights their values do not matter);
- the zero-embedding cache: ``cold`` computes the embedding once (``PriorStage.compute_zero_embed``), otherwise it
  is zeros, as if read from the cache;
- on the meta device, the uint8 pixels at the end of ``decode`` (nothing to copy to the host; the decoded
  picture itself is made). On a real device ``decode`` also notes whether every picture was finite.
``on_stage(name)`` hears each stage begin: prior, zero embed, decoder, decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from kcli.loading.weights import read_json
from kcli.models.clip import MAX_TOKENS, CLIPImage, CLIPText, text_model, vision_model
from kcli.models.movq import MoVQ, MoVQConfig
from kcli.models.prior import PriorConfig, PriorTransformer
from kcli.models.unet import UNet, UNetConfig
from kcli.pipelines.decoder import DecoderStage, movq_dtype
from kcli.pipelines.pixels import to_uint8
from kcli.pipelines.prior import PriorStage
from kcli.samplers.unclip import UnCLIPSampler

Make = Callable[..., nn.Module]  # make(build: () -> Module, dtype, channels_last=False) -> Module on the weights' device


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
    """A config file, or one line naming it (missing, not UTF-8, not a JSON object)."""
    return read_json(Path(path))


class _Tokens:
    """Stands in for a tokenizer: ids of the right shape (their values do not change memory)."""

    def __call__(self, prompts, **_):
        n = len(prompts)
        return SimpleNamespace(input_ids=torch.zeros(n, MAX_TOKENS, dtype=torch.long),
                               attention_mask=torch.ones(n, MAX_TOKENS, dtype=torch.long))


class ConfiguredPrior(PriorStage):
    def __init__(self, configs: Configs, dtype: torch.dtype, placement, make: Make, cold: bool = True,
                 on_stage: Callable[[str], None] = lambda name: None):
        text = CLIPText(_Tokens(), make(lambda: text_model(configs.text_encoder), dtype))
        prior = make(lambda: PriorTransformer(PriorConfig.from_dict(configs.prior)), dtype)
        placement.attach(prior)  # in PriorStage.load's order
        placement.attach_encoder(text)
        super().__init__(Path("."), text, prior, UnCLIPSampler.from_dict(configs.prior_scheduler), dtype, placement)
        self.configs, self.make, self.cold, self.on_stage = configs, make, cold, on_stage
        self.cached: torch.Tensor | None = None  # the zero embedding, once made

    def embed(self, *args, **kwargs):
        self.on_stage("prior")
        return super().embed(*args, **kwargs)

    def compute_zero_embed(self) -> torch.Tensor:
        self.on_stage("zero embed")
        return super().compute_zero_embed()

    def _load_image_encoder(self) -> CLIPImage:
        return CLIPImage(None, self.make(lambda: vision_model(self.configs.image_encoder), self.dtype))

    def zero_embed(self) -> torch.Tensor:
        if self.cached is None:
            self.cached = self.compute_zero_embed() if self.cold else torch.zeros(1, self.prior.config.embedding_dim)
        return self.cached.to(self.device, self.dtype)


class ConfiguredDecoder(DecoderStage):
    def __init__(self, configs: Configs, dtype: torch.dtype, placement, make: Make,
                 on_stage: Callable[[str], None] = lambda name: None):
        unet = make(lambda: UNet(UNetConfig.from_dict(configs.unet)), dtype, channels_last=True)
        movq = make(lambda: MoVQ(MoVQConfig.from_dict(configs.movq)), movq_dtype(dtype), channels_last=True)
        text = None
        if configs.mclip is not None:
            from kcli.models.mclip import MCLIP, MCLIPText, _config

            text = placement.attach_encoder(MCLIPText(_Tokens(), make(lambda: MCLIP(_config(configs.mclip)), dtype)))
        for model in (unet, movq):
            placement.attach(model)
        super().__init__(unet, movq, configs.decoder_scheduler, text, placement)
        self.on_stage = on_stage
        self.finite = True  # every picture decoded so far was finite (checked on real devices)

    def sample(self, *args, **kwargs):
        self.on_stage("decoder")
        return super().sample(*args, **kwargs)

    def decode(self, latents: torch.Tensor, tile: bool | None = None) -> np.ndarray:
        self.on_stage("decode")
        pixels = self.decode_tensor(latents, tile)
        if self.device.type != "meta":
            self.finite = self.finite and bool(pixels.isfinite().all())
            return to_uint8(pixels)
        return np.zeros((pixels.shape[0], pixels.shape[2], pixels.shape[3], 3), np.uint8)
