"""MoVQ, the image autoencoder of Kandinsky 2.2: pixels <-> 4-channel latents at 1/8 resolution.

A VQGAN whose decoder normalizes with *spatial norms*: every GroupNorm of the decoder is followed by a
per-pixel scale and shift predicted (1x1 convs) from the latent itself, resized to the feature map.

References:
  * MoVQ: Zheng et al., "MoVQ: Modulating Quantized Vectors for High-Fidelity Image Generation",
    https://arxiv.org/abs/2209.09002 (the spatial norm, eq. 3).
  * diffusers 0.42.1 ``VQModel(norm_type="spatial")`` (``models/autoencoders/vq_model.py``, ``vae.py``,
    ``unets/unet_2d_blocks.py``, ``resnet.py``, ``attention_processor.py``): the checkpoint layout, which
    our module names follow key for key, so loading a checkpoint is the identity.
  * black-forest-labs/flux ``src/flux/modules/autoencoder.py``: the style (small modules, short forwards).

Kandinsky 2.2 never quantizes: the UNet predicts continuous latents and the pipeline decodes them with
``force_not_quantize=True``. So ``encode`` stops after ``quant_conv`` and ``decode`` starts at
``post_quant_conv``; the codebook is kept only because the checkpoint holds it. The spatial norms are
conditioned on the latents as given to ``decode`` (before ``post_quant_conv``), as in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kcli.errors import CheckpointError
from kcli.loading import keys
from kcli.loading.ranges import check, count
from kcli.loading.weights import load_module

EPS = 1e-6
SPATIAL_NORM_GROUPS = 32  # diffusers' SpatialNorm hard-codes 32 groups, whatever norm_num_groups says
DOWN_TYPES = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}  # block type -> has attention
UP_TYPES = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


@dataclass(frozen=True)
class MoVQConfig:
    """The structure of a MoVQ; the defaults are the Kandinsky 2.2 MoVQ (tests/data/configs/movq.json)."""

    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    down_attn: tuple[bool, ...] = (False, False, False, True)  # per encoder level, fine to coarse
    up_attn: tuple[bool, ...] = (True, False, False, False)  # per decoder level, coarse to fine
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    layers_per_block: int = 2
    norm_num_groups: int = 32
    num_vq_embeddings: int = 16384
    mid_block_add_attention: bool = True

    RANGES: ClassVar[dict] = {  # sane ranges of config.json's numbers (kcli.loading.ranges)
        "block_out_channels": count(1, 8192, many=True), "in_channels": count(1, 16), "out_channels": count(1, 16),
        "latent_channels": count(1, 64), "vq_embed_dim": count(1, 64), "layers_per_block": count(1, 16),
        "norm_num_groups": count(1, 1024), "num_vq_embeddings": count(1, 1_000_000),
    }

    @classmethod
    def from_dict(cls, d: dict) -> MoVQConfig:
        """Translate a diffusers ``VQModel`` config.json; missing keys take diffusers' defaults."""
        check(d, cls.RANGES, "MoVQ config")

        def get(key, default, kind=int):
            value = d.get(key, default)
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
                raise CheckpointError(f"movq config: {key}={value!r} has the wrong type or is not positive")
            return value

        def block_types(key, default, known):
            types = get(key, default, (list, tuple))
            for t in types:
                if not isinstance(t, str) or t not in known:
                    raise CheckpointError(f"movq config: {key} holds {t!r}; supported: {', '.join(known)}")
            return tuple(known[t] for t in types)

        if get("norm_type", "group", str) != "spatial":
            norm = d.get("norm_type", "group")
            raise CheckpointError(f"movq config: norm_type={norm!r}, only 'spatial' (MoVQ) is supported")
        if get("act_fn", "silu", str) not in ("silu", "swish"):
            raise CheckpointError(f"movq config: act_fn={d['act_fn']!r}, only 'silu' is supported")
        if get("lookup_from_codebook", False, bool):
            raise CheckpointError("movq config: lookup_from_codebook=true is not supported")
        channels = tuple(get("block_out_channels", (64,), (list, tuple)))
        latent = get("latent_channels", 3)
        vq_dim = d.get("vq_embed_dim")
        if vq_dim is not None and vq_dim != latent:  # the spatial norms read the latent with latent_channels
            raise CheckpointError(f"movq config: vq_embed_dim={vq_dim!r} must equal latent_channels={latent}")
        cfg = cls(
            block_out_channels=channels,
            down_attn=block_types("down_block_types", ("DownEncoderBlock2D",), DOWN_TYPES),
            up_attn=block_types("up_block_types", ("UpDecoderBlock2D",), UP_TYPES),
            in_channels=get("in_channels", 3),
            out_channels=get("out_channels", 3),
            latent_channels=latent,
            layers_per_block=get("layers_per_block", 1),
            norm_num_groups=get("norm_num_groups", 32),
            num_vq_embeddings=get("num_vq_embeddings", 256),
            mid_block_add_attention=get("mid_block_add_attention", True, bool),
        )
        for key, types in (("down_block_types", cfg.down_attn), ("up_block_types", cfg.up_attn)):
            if not channels or len(types) != len(channels):
                n, m = len(types), len(channels)
                raise CheckpointError(f"movq config: {key} has {n} entries, block_out_channels {m}")
        for c in channels:  # GroupNorms use norm_num_groups, the spatial norms always 32 groups
            if type(c) is not int or c % cfg.norm_num_groups or c % SPATIAL_NORM_GROUPS:
                raise CheckpointError(
                    f"movq config: block_out_channels entry {c!r} is not a multiple of "
                    f"norm_num_groups={cfg.norm_num_groups} and of {SPATIAL_NORM_GROUPS}"
                )
        return cfg


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that takes (and ignores) the latent, so encoder and decoder share their blocks."""

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        return super().forward(x)


class SpatialNorm(nn.Module):
    """GroupNorm, then a per-pixel scale and shift predicted from the latent zq (MoVQ eq. 3)."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(SPATIAL_NORM_GROUPS, channels, eps=EPS)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x: Tensor, zq: Tensor) -> Tensor:
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")  # (B, zc, h, w) -> (B, zc, H, W)
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


def make_norm(channels: int, groups: int, zq_channels: int | None) -> nn.Module:
    """A spatial norm in the decoder (zq_channels given), a plain GroupNorm in the encoder."""
    return SpatialNorm(channels, zq_channels) if zq_channels else GroupNorm(groups, channels, eps=EPS)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int, zq_channels: int | None):
        super().__init__()
        self.norm1 = make_norm(in_ch, groups, zq_channels)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(out_ch, groups, zq_channels)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, zq: Tensor | None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self.conv2(F.silu(self.norm2(h, zq)))
        return h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (head dim = channels), with a residual connection."""

    def __init__(self, channels: int, groups: int, zq_channels: int | None):
        super().__init__()
        self.norm_name = "spatial_norm" if zq_channels else "group_norm"  # the checkpoint's name for it
        self.add_module(self.norm_name, make_norm(channels, groups, zq_channels))
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor, zq: Tensor | None) -> Tensor:
        b, c, height, width = x.shape
        h = getattr(self, self.norm_name)(x, zq).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        h = self.to_out[0](h).transpose(1, 2).reshape(b, c, height, width)
        return h + x  # h first keeps h's strides as diffusers does, so the next CPU GroupNorm agrees


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, H/2, W/2), asymmetric pad


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class Level(nn.Module):
    """One resolution: resnets, each followed by attention if the level has it, then a resampler."""

    def __init__(self, in_ch, out_ch, layers, attn, groups, zq_channels=None, resample=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups, zq_channels) for i in range(layers)
        )
        self.attentions = (
            nn.ModuleList(AttnBlock(out_ch, groups, zq_channels) for _ in range(layers)) if attn else None
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if resample == "down" else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if resample == "up" else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, zq)
            if self.attentions is not None:
                x = self.attentions[i](x, zq)
        for resample in self.downsamplers or self.upsamplers or ():
            x = resample(x)
        return x


class MidBlock(nn.Module):
    """resnet, attention, resnet at the coarsest resolution."""

    def __init__(self, channels: int, groups: int, attn: bool, zq_channels: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, groups, zq_channels) for _ in range(2))
        self.attentions = nn.ModuleList([AttnBlock(channels, groups, zq_channels)]) if attn else None

    def forward(self, x: Tensor, zq: Tensor | None = None) -> Tensor:
        x = self.resnets[0](x, zq)
        if self.attentions is not None:
            x = self.attentions[0](x, zq)
        return self.resnets[1](x, zq)


class Encoder(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        ch, groups, layers = cfg.block_out_channels, cfg.norm_num_groups, cfg.layers_per_block
        last = len(ch) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], layers, attn, groups, None, "down" if i < last else None)
            for i, attn in enumerate(cfg.down_attn)
        )
        self.mid_block = MidBlock(ch[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch[0], H, W)
        for block in self.down_blocks:
            h = block(h)  # -> (B, ch[-1], H/sf, W/sf)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, latent, H/sf, W/sf)


class Decoder(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        ch, groups, zc = cfg.block_out_channels[::-1], cfg.norm_num_groups, cfg.latent_channels
        last, layers = len(ch) - 1, cfg.layers_per_block + 1
        self.conv_in = nn.Conv2d(zc, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], groups, cfg.mid_block_add_attention, zc)
        self.up_blocks = nn.ModuleList(
            Level(ch[max(i - 1, 0)], ch[i], layers, attn, groups, zc, "up" if i < last else None)
            for i, attn in enumerate(cfg.up_attn)
        )
        self.conv_norm_out = SpatialNorm(ch[-1], zc)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    @property
    def coarse_levels(self) -> int:
        """Up levels up to the last one with attention: the part that must see the whole picture."""
        return 1 + max((i for i, b in enumerate(self.up_blocks) if b.attentions is not None), default=-1)

    def coarse(self, h: Tensor, zq: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(h), zq)  # (B, ch[-1], h, w)
        for block in self.up_blocks[:self.coarse_levels]:
            h = block(h, zq)
        return h

    def fine(self, h: Tensor, zq: Tensor) -> Tensor:
        """The attention-free rest: convolutions, norms and upsampling, so it can run tile by tile."""
        for block in self.up_blocks[self.coarse_levels:]:
            h = block(h, zq)  # -> (B, ch[0], h*sf, w*sf)
        return self.conv_out(F.silu(self.conv_norm_out(h, zq)))  # (B, out, H, W)

    def forward(self, h: Tensor, zq: Tensor) -> Tensor:
        return self.fine(self.coarse(h, zq), zq)


class Codebook(nn.Module):
    """The VQ codebook: in the checkpoint, unused by Kandinsky, which decodes latents unquantized."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class MoVQ(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        self.config = cfg
        zc = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(zc, zc, 1)
        self.quantize = Codebook(cfg.num_vq_embeddings, zc)
        self.post_quant_conv = nn.Conv2d(zc, zc, 1)
        self.decoder = Decoder(cfg)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: Tensor) -> Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> latents (B, 4, H/sf, W/sf), not quantized."""
        return self.quant_conv(self.encoder(x.to(self.dtype)))

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> image (B, 3, h*sf, w*sf), roughly in [-1, 1]."""
        z = z.to(self.dtype)
        return self.decoder(self.post_quant_conv(z), zq=z)  # the spatial norms see z, not post_quant_conv(z)

    def decode_coarse(self, z: Tensor) -> Tensor:
        """The first part of ``decode`` (through the last attention level), on the whole picture."""
        z = z.to(self.dtype)
        return self.decoder.coarse(self.post_quant_conv(z), z)

    def decode_fine(self, h: Tensor, z: Tensor) -> Tensor:
        """The rest of ``decode`` for ``h`` from ``decode_coarse`` (or a tile of it, with the matching
        tile of the latents ``z``)."""
        return self.decoder.fine(h, z.to(self.dtype))


def load_movq(
    folder: Path | str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> MoVQ:
    """Load a diffusers-layout ``movq/`` folder (config.json + weights)."""
    return load_module(
        Path(folder), lambda cfg: MoVQ(MoVQConfig.from_dict(cfg)), dtype=dtype, device=device, rules=keys.MOVQ,
        channels_last=channels_last,
    )
