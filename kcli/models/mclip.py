"""The Kandinsky 2.1 text encoder: M-CLIP, an XLM-RoBERTa-large whose mean-pooled output is projected into
CLIP's text space (768), so prompts in any XLM-R language steer the decoder.

Returns the projected pooled embedding (B, 768) and the token states (B, 77, 1024); the decoder's UNet
takes both. The transformer is ``transformers``' XLMRobertaModel, built on the meta device and filled
from the checkpoint's ``text_encoder/`` (keys ``transformer.*`` and ``LinearTransformation.*``).
References: FreddeFrallan/Multilingual-CLIP; diffusers ``pipelines/kandinsky/text_encoder.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kcli.loading.errors import CheckpointError
from kcli.loading.ranges import buildable, check, count, in_file, real
from kcli.loading.weights import assign_weights, find_weights, read_config, read_tensors
from kcli.models.clip import MAX_TOKENS, _load
from kcli.models.vision import hide_broken_torchvision


class MCLIP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hide_broken_torchvision()
        from transformers import XLMRobertaModel

        self.transformer = XLMRobertaModel(config)
        self.LinearTransformation = nn.Linear(config.transformerDimensions, config.numDims)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, 1024)
        pooled = (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1)[:, None]  # mean over real tokens
        return self.LinearTransformation(pooled), hidden


# sane ranges of text_encoder/config.json's numbers (kcli.loading.ranges): XLM-R large is 24 x 1024
RANGES = {"numDims": count(1, 16384), "transformerDimensions": count(1, 16384), "hidden_size": count(1, 16384),
          "intermediate_size": count(1, 65536), "num_hidden_layers": count(1, 256),
          "num_attention_heads": count(1, 256), "vocab_size": count(1, 1_000_000),
          "max_position_embeddings": count(1, 8192), "type_vocab_size": count(1, 16),
          "layer_norm_eps": real(1e-12, 1.0)}


def _config(d: dict):
    check(d, RANGES, "M-CLIP config")
    hide_broken_torchvision()
    from transformers import XLMRobertaConfig

    missing = [k for k in ("numDims", "transformerDimensions", "hidden_size") if k not in d]
    if missing:
        raise CheckpointError(f"text encoder config lacks {', '.join(missing)}: not an M-CLIP checkpoint")
    keep = {k: v for k, v in d.items() if not k.startswith("_") and k not in ("architectures", "model_type")}
    config = XLMRobertaConfig(**keep)
    config._attn_implementation = "sdpa"
    return config


class MCLIPText(nn.Module):
    """Prompts -> (pooled embedding (B, D), token states (B, 77, H)), tokenizing inside."""

    def __init__(self, tokenizer, model: MCLIP, device: torch.device | None = None):
        super().__init__()
        self.tokenizer, self.model = tokenizer, model
        self.exec_device = device  # where it runs; its weights may live elsewhere (offload)

    @classmethod
    def load(cls, decoder_dir: Path, *, dtype=None, device="cpu") -> MCLIPText:
        hide_broken_torchvision()
        from transformers import XLMRobertaTokenizerFast

        folder = Path(decoder_dir) / "text_encoder"
        tokenizer = _load("XLM-R tokenizer", Path(decoder_dir) / "tokenizer", XLMRobertaTokenizerFast.from_pretrained)
        with in_file(folder / "config.json"), buildable():
            config = _config(read_config(folder))
            with torch.device("meta"):
                model = MCLIP(config)
        weights = find_weights(folder)
        return cls(tokenizer, assign_weights(model, read_tensors(weights, dtype, device), source=weights))

    @property
    def device(self) -> torch.device:
        return self.exec_device or self.model.LinearTransformation.weight.device

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        return self.model(tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device))
