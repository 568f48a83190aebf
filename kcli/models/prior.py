"""The Kandinsky prior: a causal transformer that denoises a CLIP image embedding given the encoded text.

One sequence per sample, L = num_embeddings + 4 = 81 tokens of width C = heads * head_dim (2048):

    [77 projected CLIP text hidden states | projected text embedding | time | projected x_t | prd] + positions

Attention is causal (-10000 above the diagonal) plus -10000 on the text's padding keys; the last token
(``prd``) is read out and projected back to the CLIP space as the predicted clean embedding x0.

References:
* Ramesh et al., "Hierarchical Text-Conditional Image Generation with CLIP Latents" (unCLIP,
  arXiv 2204.06125), section 2.1.
* diffusers ``models/transformers/prior_transformer.py`` (PriorTransformer) and ``models/attention.py``
  (BasicTransformerBlock with a GELU feed-forward): module names follow them, so checkpoints load unchanged.
* Style after black-forest-labs/flux ``layers.py`` and nanoGPT ``model.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kcli.errors import CheckpointError
from kcli.loading import keys
from kcli.loading.ranges import check, count
from kcli.loading.weights import load_module
from kcli.models.layers import TimestepEmbedding, timestep_embedding

# Options diffusers' PriorTransformer has that every Kandinsky prior leaves at these values (its defaults).
FIXED = {
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
    "additional_embeddings": 4,  # text embedding, time, x_t, prd
}


@dataclass(frozen=True)
class PriorConfig:
    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768  # D: CLIP embedding width (768 for 2.1, 1280 for 2.2)
    num_embeddings: int = 77  # text tokens
    time_embed_dim: int = 2048
    embedding_proj_dim: int = 768
    clip_embed_dim: int = 768

    RANGES: ClassVar[dict] = {  # sane ranges of config.json's numbers (kcli.loading.ranges)
        "num_attention_heads": count(1, 256), "attention_head_dim": count(1, 1024), "num_layers": count(1, 256),
        "embedding_dim": count(1, 16384), "num_embeddings": count(1, 4096), "time_embed_dim": count(1, 65536),
        "embedding_proj_dim": count(1, 16384), "clip_embed_dim": count(1, 16384),
    }

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def seq_len(self) -> int:
        return self.num_embeddings + FIXED["additional_embeddings"]

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        """Translate a prior/config.json; omitted keys take diffusers' PriorTransformer defaults."""
        check(d, cls.RANGES, "prior config")
        for key, want in FIXED.items():
            if d.get(key, want) != want:
                raise CheckpointError(f"prior config: {key}={d[key]!r} is not supported (needs {want!r})")

        def size(key: str, default: int | None) -> int | None:
            v = d.get(key, default)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise CheckpointError(f"prior config: {key}={v!r} is not a positive integer")
            return v

        heads, head_dim = size("num_attention_heads", 32), size("attention_head_dim", 64)
        emb = size("embedding_dim", 768)
        return cls(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            num_layers=size("num_layers", 20),
            embedding_dim=emb,
            num_embeddings=size("num_embeddings", 77),
            time_embed_dim=size("time_embed_dim", None) or heads * head_dim,
            embedding_proj_dim=size("embedding_proj_dim", None) or emb,
            clip_embed_dim=size("clip_embed_dim", None) or emb,
        )


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * head_dim)
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = nn.Linear(dim, heads * head_dim)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = (p(x).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, d)
        return self.to_out[0](y.transpose(1, 2).reshape(B, L, -1))


class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 is diffusers' (inference-time no-op) dropout
        self.net = nn.Sequential(GELUProj(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm self-attention + GELU MLP: diffusers' BasicTransformerBlock with no cross-attention."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        return x + self.ff(self.norm3(x))


def attention_bias(mask: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) bool text mask -> (B, 1, L, L) additive bias: -10000 on padded text keys and above the diagonal.

    Built in ``dtype`` like diffusers (whose causal buffer follows the model's dtype); not a buffer, so the
    module can be built on the meta device and filled from the checkpoint.
    """
    text = (1 - mask.to(dtype)) * -10000.0  # (B, T)
    text = F.pad(text, (0, seq_len - text.shape[1]))  # (B, L): the 4 extra tokens are never masked
    causal = torch.full((seq_len, seq_len), -10000.0, dtype=dtype, device=mask.device).triu_(1)
    return (text[:, None, :] + causal)[:, None]  # (B, 1, L, L), broadcast over heads


class PriorTransformer(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.config = cfg
        C, D = cfg.inner_dim, cfg.embedding_dim
        self.time_embedding = TimestepEmbedding(C, cfg.time_embed_dim, C)
        self.proj_in = nn.Linear(D, C)
        self.embedding_proj = nn.Linear(cfg.embedding_proj_dim, C)
        self.encoder_hidden_states_proj = nn.Linear(D, C)
        self.positional_embedding = nn.Parameter(torch.zeros(1, cfg.seq_len, C))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, C))
        self.transformer_blocks = nn.ModuleList(
            Block(C, cfg.num_attention_heads, cfg.attention_head_dim) for _ in range(cfg.num_layers)
        )
        self.norm_out = nn.LayerNorm(C)
        self.proj_to_clip_embeddings = nn.Linear(C, cfg.clip_embed_dim)
        self.clip_mean = nn.Parameter(torch.zeros(1, cfg.clip_embed_dim))  # CLIP image embedding statistics
        self.clip_std = nn.Parameter(torch.zeros(1, cfg.clip_embed_dim))

    def forward(
        self,
        x_t: torch.Tensor,  # (B, D) noisy image embedding
        timestep: torch.Tensor | int,  # (B,) or a scalar
        proj_embedding: torch.Tensor,  # (B, D) CLIP text embedding
        encoder_hidden_states: torch.Tensor,  # (B, T, D) CLIP text hidden states
        attention_mask: torch.Tensor | None = None,  # (B, T) bool; None: no bias, not even causal (diffusers)
    ) -> torch.Tensor:  # (B, clip_embed_dim) predicted x0
        B, dtype = x_t.shape[0], self.proj_in.weight.dtype
        t = torch.as_tensor(timestep, device=x_t.device).reshape(-1).expand(B)
        time = self.time_embedding(timestep_embedding(t, self.config.inner_dim).to(dtype))  # (B, C)
        h = torch.cat(
            [
                self.encoder_hidden_states_proj(encoder_hidden_states),  # (B, T, C)
                self.embedding_proj(proj_embedding)[:, None],  # (B, 1, C)
                time[:, None],
                self.proj_in(x_t)[:, None],
                self.prd_embedding.to(dtype).expand(B, -1, -1),
            ],
            dim=1,
        ) + self.positional_embedding.to(dtype)  # (B, L, C)
        bias = None
        if attention_mask is not None:
            bias = attention_bias(attention_mask.to(h.device), h.shape[1], dtype)  # (B, 1, L, L)
        for block in self.transformer_blocks:
            h = block(h, bias)
        return self.proj_to_clip_embeddings(self.norm_out(h[:, -1]))  # the prd token

    def post_process(self, latents: torch.Tensor) -> torch.Tensor:
        """From the prior's normalized space to CLIP image embeddings."""
        return latents * self.clip_std.to(latents.device) + self.clip_mean.to(latents.device)


def load_prior(folder: Path | str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """The PriorTransformer of a checkpoint's ``prior/`` folder (config.json + weights)."""
    folder = Path(folder)

    def build(d: dict) -> PriorTransformer:
        try:
            return PriorTransformer(PriorConfig.from_dict(d))
        except CheckpointError as e:
            raise CheckpointError(f"{folder / 'config.json'}: {e}") from None

    return load_module(folder, build, dtype=dtype, device=device, rules=keys.PRIOR)
