"""The Kandinsky 2.x decoder UNet: a latent UNet conditioned on a CLIP image embedding.

One family, written out: ResNet blocks with scale-shift time conditioning; "simple cross-attention"
blocks, where the conditioning tokens are projected by their own K/V layers and *prepended* to the
spatial keys/values of a self-attention (``AttnAddedKV`` in diffusers); ResNet blocks that down- and
upsample (not strided convs). The conditioning enters twice: added to the time embedding, and as
cross-attention tokens.

- 2.2 (``addition_embed_type="image"``): image embedding -> Linear+LayerNorm added to the time embedding,
  and -> 32 tokens (Linear, reshape, LayerNorm) as context.
- 2.1 (``"text_image"``): the pooled M-CLIP text embedding and the image embedding are both added to the
  time embedding; the context is 10 image tokens followed by the 77 projected XLM-R hidden states.

The output has 8 channels: 4 of predicted noise and 4 of learned variance.

Module names equal the diffusers checkpoint keys, so loading needs no key mapping.
References: diffusers ``UNet2DConditionModel`` with the Kandinsky configs (``models/unets/unet_2d_condition.py``,
``unet_2d_blocks.py``, ``resnet.py``, ``attention_processor.py``: ``AttnAddedKVProcessor2_0``);
ai-forever/Kandinsky-2 ``kandinsky2/model/unet.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kcli.errors import CheckpointError
from kcli.loading import keys
from kcli.loading.ranges import check, count, real
from kcli.loading.weights import load_module
from kcli.models.hint import DOWNSCALE, FEATURES, HintEncoder
from kcli.models.layers import TimestepEmbedding, timestep_embedding

# addition_embed_type -> encoder_hid_dim_type; "image_hint" is the 2.2 depth ControlNet (image + hint picture)
CONDITIONING = {"image": "image_proj", "image_hint": "image_proj", "text_image": "text_image_proj"}
IMAGE_TOKENS = {"image": 32, "image_hint": 32, "text_image": 10}  # fixed in the architecture, not in config.json


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int  # 4 for text-to-image, 9 for inpainting (latents + masked image latents + mask),
                      # 8 for the depth ControlNet (latents + encoded hint)
    out_channels: int  # 8: noise and learned variance
    block_out_channels: tuple[int, ...]  # channels per level; attention on every level but the first
    layers_per_block: int
    attention_head_dim: int  # heads = channels // attention_head_dim
    cross_attention_dim: int  # width of the context tokens
    encoder_hid_dim: int  # width of the image embedding (2.2) or of the XLM-R hidden states (2.1)
    addition_embed_type: str  # "image" (2.2), "image_hint" (2.2 ControlNet) or "text_image" (2.1)
    norm_num_groups: int
    norm_eps: float

    RANGES: ClassVar[dict] = {  # sane ranges of config.json's numbers (kcli.loading.ranges)
        "in_channels": count(1, 64, required=True), "out_channels": count(1, 64, required=True),
        "block_out_channels": count(1, 8192, many=True, required=True),
        "layers_per_block": count(1, 16, required=True), "attention_head_dim": count(1, 1024),
        "cross_attention_dim": count(1, 16384, required=True), "encoder_hid_dim": count(1, 16384, required=True),
        "norm_num_groups": count(1, 1024), "norm_eps": real(1e-12, 1.0),
    }

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @property
    def image_embed_dim(self) -> int:
        """Width of the CLIP image embedding it takes (1280 for 2.2, 768 for 2.1)."""
        return self.cross_attention_dim if self.addition_embed_type == "text_image" else self.encoder_hid_dim

    @property
    def version(self) -> str:
        return "2.1" if self.addition_embed_type == "text_image" else "2.2"

    @property
    def takes_hint(self) -> bool:
        """A ControlNet UNet: a hint picture (at 8x the latent size) is encoded and joins the latents."""
        return self.addition_embed_type == "image_hint"

    @property
    def hint_scale(self) -> int:
        return DOWNSCALE

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        check(d, cls.RANGES, "UNet config")
        n = len(d.get("block_out_channels", ()))
        expected = {
            "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * (n - 1),
            "up_block_types": ["SimpleCrossAttnUpBlock2D"] * (n - 1) + ["ResnetUpsampleBlock2D"],
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "resnet_time_scale_shift": "scale_shift",
            "act_fn": "silu",
            "time_embedding_type": "positional",
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        }
        for key, value in expected.items():
            if key in d and (list(d[key]) if isinstance(value, list) else d[key]) != value:
                raise CheckpointError(f"unsupported UNet: {key} is {d[key]!r}, kandinsky supports {value!r}")
        add = d.get("addition_embed_type")
        if add not in CONDITIONING:
            raise CheckpointError(f"unsupported UNet: addition_embed_type {add!r} "
                                  f"(supported: {', '.join(CONDITIONING)})")
        if d.get("encoder_hid_dim_type") != CONDITIONING[add]:
            raise CheckpointError(f"unsupported UNet: encoder_hid_dim_type {d.get('encoder_hid_dim_type')!r} with {add!r}")
        if add == "image_hint" and d["in_channels"] <= FEATURES:
            raise CheckpointError(f"unsupported UNet: a hint UNet needs more than {FEATURES} input channels")
        head_dim = d.get("attention_head_dim", 8)
        if not isinstance(head_dim, int):
            raise CheckpointError("unsupported UNet: attention_head_dim must be one number")
        return cls(
            in_channels=d["in_channels"],
            out_channels=d["out_channels"],
            block_out_channels=tuple(d["block_out_channels"]),
            layers_per_block=d["layers_per_block"],
            attention_head_dim=head_dim,
            cross_attention_dim=d["cross_attention_dim"],
            encoder_hid_dim=d["encoder_hid_dim"],
            addition_embed_type=add,
            norm_num_groups=d.get("norm_num_groups", 32),
            norm_eps=d.get("norm_eps", 1e-5),
        )


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding as scale and shift after the second norm.

    ``resample`` "down" (2x2 average pool) or "up" (2x nearest) applies to both paths after the first norm.
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, eps: float, resample: str | None = None):
        super().__init__()
        self.resample = resample
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AddedKVAttention(nn.Module):
    """Self-attention over the feature map whose keys/values are prefixed by projected context tokens."""

    def __init__(self, channels: int, context_dim: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(context_dim, channels)
        self.add_v_proj = nn.Linear(context_dim, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self._split(self.to_q(s))
        k = self._split(torch.cat([self.add_k_proj(context), self.to_k(s)], dim=1))  # (B, heads, T+HW, d)
        v = self._split(torch.cat([self.add_v_proj(context), self.to_v(s)], dim=1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class Level(nn.Module):
    """One resolution level of the UNet: resnets, optional attentions, an optional resampling resnet."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[AddedKVAttention], resampler: ResnetBlock | None,
                 sampler_name: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        if resampler is not None:
            setattr(self, sampler_name, nn.ModuleList([resampler]))
        self._resampler = sampler_name if resampler is not None else None

    @property
    def resampler(self) -> ResnetBlock | None:
        return getattr(self, self._resampler)[0] if self._resampler else None

    def layers(self):
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        return zip(self.resnets, attentions)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, temb = cfg.block_out_channels, cfg.time_embed_dim
        groups, eps, head, ctx = cfg.norm_num_groups, cfg.norm_eps, cfg.attention_head_dim, cfg.cross_attention_dim

        def resnet(c_in, c_out, resample=None):
            return ResnetBlock(c_in, c_out, temb, groups, eps, resample)

        def attention(c):
            return AddedKVAttention(c, ctx, head, groups)

        # conditioning
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.add_embedding = AddEmbedding(cfg)
        self.encoder_hid_proj = ContextProjection(cfg)

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        # down: level 0 has no attention; every level but the last ends in a downsampling resnet
        self.down_blocks = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            n = cfg.layers_per_block
            last = i == len(ch) - 1
            self.down_blocks.append(Level(
                [resnet(c_prev if j == 0 else c, c) for j in range(n)],
                [attention(c) for _ in range(n)] if i > 0 else [],
                None if last else resnet(c, c, "down"),
                "downsamplers",
            ))
            c_prev = c

        self.mid_block = Level([resnet(ch[-1], ch[-1]) for _ in range(2)], [attention(ch[-1])], None, "")

        # up: mirror image, one resnet more per level to consume the skip of the downsampler
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        c_prev = rev[0]
        for i, c in enumerate(rev):
            n = cfg.layers_per_block + 1
            c_skip_last = rev[min(i + 1, len(rev) - 1)]
            last = i == len(rev) - 1
            resnets = [
                resnet((c_prev if j == 0 else c) + (c_skip_last if j == n - 1 else c), c) for j in range(n)
            ]
            self.up_blocks.append(Level(
                resnets,
                [attention(c) for _ in range(n)] if not last else [],
                None if last else resnet(c, c, "up"),
                "upsamplers",
            ))
            c_prev = c

        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, image_embeds: torch.Tensor,
                text_embeds: torch.Tensor | None = None, text_hidden: torch.Tensor | None = None,
                hint: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in, h, w) latents; t () or (B,) timesteps; image_embeds (B, D).

        2.1 also takes text_embeds (B, D) pooled M-CLIP and text_hidden (B, 77, encoder_hid_dim).
        The ControlNet takes hint (B, 3, 8h, 8w) in [0, 1]; x then has in_channels - 4 channels.
        Returns (B, out, h, w): predicted noise and learned variance.
        """
        if self.config.takes_hint:
            if hint is None:
                raise ValueError("this UNet is a ControlNet: it needs a hint")
            x = torch.cat([x, self.add_embedding.input_hint_block(hint.to(x.dtype))], dim=1)
        elif hint is not None:
            raise ValueError("this UNet takes no hint")
        # 1. time and conditioning embedding
        t = t.reshape(-1).expand(x.shape[0]).to(x.device)
        emb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(x.dtype))
        emb = emb + self.add_embedding(image_embeds, text_embeds)
        context = self.encoder_hid_proj(image_embeds, text_hidden)  # (B, T, cross_attention_dim)

        # 2. down
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for resnet, attn in level.layers():
                h = resnet(h, emb)
                if attn is not None:
                    h = attn(h, context)
                skips.append(h)
            if level.resampler is not None:
                h = level.resampler(h, emb)
                skips.append(h)

        # 3. middle
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.resnets[1](self.mid_block.attentions[0](h, context), emb)

        # 4. up
        for level in self.up_blocks:
            for resnet, attn in level.layers():
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if attn is not None:
                    h = attn(h, context)
            if level.resampler is not None:
                h = level.resampler(h, emb)

        # 5. out
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AddEmbedding(nn.Module):
    """The conditioning added to the time embedding (``add_embedding.*``)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        temb = cfg.time_embed_dim
        if cfg.addition_embed_type in ("image", "image_hint"):  # 2.2
            self.image_proj = nn.Linear(cfg.encoder_hid_dim, temb)
            self.image_norm = nn.LayerNorm(temb)
            if cfg.takes_hint:  # the ControlNet's hint encoder lives here in the checkpoint
                self.input_hint_block = HintEncoder()
        else:  # 2.1: pooled text and image embeddings, both of width cross_attention_dim
            self.text_proj = nn.Linear(cfg.cross_attention_dim, temb)
            self.text_norm = nn.LayerNorm(temb)
            self.image_proj = nn.Linear(cfg.cross_attention_dim, temb)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor | None) -> torch.Tensor:
        if hasattr(self, "image_norm"):
            return self.image_norm(self.image_proj(image_embeds))
        return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))


class ContextProjection(nn.Module):
    """The cross-attention tokens (``encoder_hid_proj.*``): image tokens, then (2.1) text tokens."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.tokens = IMAGE_TOKENS[cfg.addition_embed_type]
        ctx = cfg.cross_attention_dim
        if cfg.addition_embed_type in ("image", "image_hint"):  # 2.2
            self.image_embeds = nn.Linear(cfg.encoder_hid_dim, self.tokens * ctx)
            self.norm = nn.LayerNorm(ctx)
        else:  # 2.1
            self.image_embeds = nn.Linear(ctx, self.tokens * ctx)
            self.text_proj = nn.Linear(cfg.encoder_hid_dim, ctx)

    def forward(self, image_embeds: torch.Tensor, text_hidden: torch.Tensor | None) -> torch.Tensor:
        img = self.image_embeds(image_embeds).unflatten(-1, (self.tokens, -1))  # (B, tokens, ctx)
        if hasattr(self, "norm"):
            return self.norm(img)
        return torch.cat([img, self.text_proj(text_hidden)], dim=1)  # (B, tokens + 77, ctx)


def load_unet(folder, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
              channels_last: bool = False) -> UNet:
    return load_module(folder, lambda d: UNet(UNetConfig.from_dict(d)), dtype=dtype, device=device, rules=keys.UNET,
                       channels_last=channels_last)
