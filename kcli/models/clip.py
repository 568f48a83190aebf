"""CLIP text and image towers of the prior, as thin wrappers over ``transformers``.

They tokenize and preprocess inside, and return plain tensors. The prior folder holds them in the
transformers layout (``text_encoder/``, ``tokenizer/``, ``image_encoder/``, ``image_processor/``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kcli.loading.errors import CheckpointError
from kcli.loading.ranges import check, count, real
from kcli.loading.weights import load_module
from kcli.models.vision import hide_broken_torchvision

MAX_TOKENS = 77
# sane ranges of the towers' config.json numbers (kcli.loading.ranges); the 2.1 image tower is the largest
TRANSFORMER_RANGES = {"hidden_size": count(1, 16384), "intermediate_size": count(1, 65536),
                      "num_hidden_layers": count(1, 256), "num_attention_heads": count(1, 256),
                      "projection_dim": count(1, 16384), "layer_norm_eps": real(1e-12, 1.0)}
TEXT_RANGES = {**TRANSFORMER_RANGES, "vocab_size": count(1, 1_000_000), "max_position_embeddings": count(1, 4096)}
VISION_RANGES = {**TRANSFORMER_RANGES, "image_size": count(1, 4096), "patch_size": count(1, 1024),
                 "num_channels": count(1, 16)}


def _quiet_transformers() -> None:
    """transformers draws its own progress bars and warnings; the CLI draws ours. (First, a torchvision that
    cannot be imported is hidden from it: ``kcli.models.vision``.)"""
    hide_broken_torchvision()
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _load(what: str, folder: Path, loader):
    _quiet_transformers()
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is missing ({what})")
    try:
        return loader(str(folder))
    except CheckpointError:
        raise
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors ... for a bad folder
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise CheckpointError(f"cannot load {what} from {folder}: {msg}") from None


def text_model(config: dict):
    """``CLIPTextModelWithProjection`` built from a ``text_encoder/config.json`` dict, on the current device
    (the caller builds on ``meta`` and assigns the weights)."""
    check(config, TEXT_RANGES, "CLIP text config")
    hide_broken_torchvision()
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig.from_dict(_plain(config))
    cfg._attn_implementation = "sdpa"
    return CLIPTextModelWithProjection(cfg)


def vision_model(config: dict):
    """``CLIPVisionModelWithProjection`` built from an ``image_encoder/config.json`` dict (see text_model)."""
    check(config, VISION_RANGES, "CLIP vision config")
    hide_broken_torchvision()
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig.from_dict(_plain(config))
    cfg._attn_implementation = "sdpa"
    return CLIPVisionModelWithProjection(cfg)


def _tower(folder: Path, build, dtype, device):
    """One CLIP tower: built on meta from ``folder/config.json`` and filled strictly from its weights, in
    ``dtype`` (None keeps the stored one: the 2.2 image encoder is stored in fp16, its text encoder in fp32)."""
    _quiet_transformers()
    return load_module(folder, build, dtype=dtype, device=device)


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}


class CLIPText(nn.Module):
    """Prompt -> (pooled and projected embedding (B, D), last hidden state (B, 77, D), token mask (B, 77))."""

    def __init__(self, tokenizer, model, device: torch.device | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        self.exec_device = device  # where it runs; its weights may live elsewhere (offload)

    @classmethod
    def load(cls, prior_dir: Path, *, dtype=None, device="cpu") -> CLIPText:
        from transformers import CLIPTokenizer

        tok = _load("CLIP tokenizer", Path(prior_dir) / "tokenizer", CLIPTokenizer.from_pretrained)
        return cls(tok, _tower(Path(prior_dir) / "text_encoder", text_model, dtype, device))

    @property
    def device(self) -> torch.device:
        return self.exec_device or self.model.device

    def forward(self, prompts: list[str]):
        tokens = self.tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                return_tensors="pt")
        ids = tokens.input_ids.to(self.device)
        out = self.model(input_ids=ids)  # like the reference, no attention mask: padding is attended
        return out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool().to(self.device)


class CLIPImage(nn.Module):
    """Pictures (or raw pixel tensors) -> projected CLIP image embeddings (B, D)."""

    def __init__(self, processor, model, device: torch.device | None = None):
        super().__init__()
        self.processor = processor
        self.model = model
        self.exec_device = device

    @classmethod
    def load(cls, prior_dir: Path, *, dtype=None, device="cpu") -> CLIPImage:
        try:  # PIL-backed on purpose: the torchvision-backed one resizes slightly differently
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor

        model = _tower(Path(prior_dir) / "image_encoder", vision_model, dtype, device)
        processor = None
        if (Path(prior_dir) / "image_processor").is_dir():
            processor = _load("CLIP image processor", Path(prior_dir) / "image_processor",
                              CLIPImageProcessor.from_pretrained)
        return cls(processor, model)

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.model.parameters().__next__()
        return self.model(pixel_values=pixel_values.to(self.exec_device or p.device, p.dtype)).image_embeds

    def zero_embed(self) -> torch.Tensor:
        """The embedding of an all-zero *normalised* input (the mean colour), the reference's 'no image' (1, D)."""
        s = self.image_size
        return self(torch.zeros(1, 3, s, s))
