"""The benchmark's checkpoints: the real Kandinsky 2.2 configs with random weights, in the diffusers layout."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from common import BUILD_VERSION, CONFIGS, ROOT


@dataclass(frozen=True)
class Component:
    checkpoint: str  # prior | decoder
    folder: str
    config: str  # file in tests/data/configs
    library: str  # diffusers | transformers
    cls: str
    weights: str
    dtype: str  # as stored on the hub


FULL_22 = (  # the components of the hub's kandinsky-2-2-prior and kandinsky-2-2-decoder
    Component("prior", "prior", "kandinsky-2-2-prior.prior.json", "diffusers", "PriorTransformer",
              "diffusion_pytorch_model.safetensors", "float32"),
    Component("prior", "text_encoder", "kandinsky-2-2-prior.text_encoder.json", "transformers",
              "CLIPTextModelWithProjection", "model.safetensors", "float32"),
    Component("prior", "image_encoder", "kandinsky-2-2-prior.image_encoder.json", "transformers",
              "CLIPVisionModelWithProjection", "model.safetensors", "float16"),
    Component("decoder", "unet", "kandinsky-2-2-decoder.unet.json", "diffusers", "UNet2DConditionModel",
              "diffusion_pytorch_model.safetensors", "float32"),
    Component("decoder", "movq", "movq.json", "diffusers", "VQModel", "diffusion_pytorch_model.safetensors",
              "float32"),
)


def checkpoint_dirs(root: Path) -> tuple[Path, Path]:
    return root / "kandinsky-2-2-prior", root / "kandinsky-2-2-decoder"


def _tiny_module():
    """tests/tiny.py, loaded by path (a top-level ``tests`` package elsewhere on sys.path cannot shadow it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kbench_tiny", ROOT / "tests" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_checkpoints(root: Path, tiny: bool) -> None:
    """Write the prior and decoder folders under ``root`` unless a finished build of this recipe is there.

    Full size: component by component, tensor by tensor (see ``write_random_weights``), so memory stays at
    one tensor whatever the model size; an interrupted build resumes at the first unfinished component.
    """
    stamp = root / "BUILD"
    recipe = f"{BUILD_VERSION} {'tiny' if tiny else 'full'}"
    if stamp.is_file() and stamp.read_text() == recipe:
        return
    if stamp.is_file():  # an older recipe: start over
        shutil.rmtree(root)
    prior, decoder = checkpoint_dirs(root)
    tiny_ckpt = _tiny_module()
    if tiny:
        for folder in (prior, decoder):
            shutil.rmtree(folder, ignore_errors=True)
        tiny_ckpt.make_prior_22(prior)
        tiny_ckpt.make_decoder_22(decoder)
    else:
        for c in FULL_22:
            folder = (prior if c.checkpoint == "prior" else decoder) / c.folder
            if (folder / c.weights).is_file() and (folder / "config.json").is_file():
                continue
            print(f"  building {c.checkpoint}/{c.folder} ...", file=sys.stderr, flush=True)
            write_random_component(c, folder)
        write_small_parts(prior, decoder, tiny_ckpt)
    stamp.write_text(recipe)


def write_small_parts(prior: Path, decoder: Path, tiny_ckpt) -> None:
    """Tokenizer, image processor, schedulers and model_index.json of the full-size checkpoints.

    The tokenizer is the tiny byte-level CLIP one of tests/tiny.py: its ids (< 514) fit the real vocabulary
    of 49408, and a prompt's token count, not its ids, is what costs time.
    """
    tiny_ckpt.write_clip_tokenizer(prior / "tokenizer")
    (prior / "image_processor").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / "image_processor.json", prior / "image_processor" / "preprocessor_config.json")
    (prior / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / "prior.scheduler.json", prior / "scheduler" / "scheduler_config.json")
    (decoder / "scheduler").mkdir(parents=True, exist_ok=True)
    (decoder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(tiny_ckpt.ddpm_scheduler_config(clip_sample=True), indent=2))
    tiny_ckpt._model_index(prior, "KandinskyV22PriorPipeline", tiny_ckpt.PRIOR_PARTS)
    tiny_ckpt._model_index(decoder, "KandinskyV22Pipeline", tiny_ckpt.DECODER_22_PARTS)


def write_random_component(c: Component, folder: Path) -> None:
    """Build ``c`` on the meta device from its real config; write its config and random weights."""
    import diffusers
    import torch
    import transformers

    config = json.loads((CONFIGS / c.config).read_text())
    with torch.device("meta"):
        if c.library == "diffusers":
            model = getattr(diffusers, c.cls).from_config(config)
        else:
            cls = getattr(transformers, c.cls)
            model = cls(cls.config_class.from_dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    write_random_weights(model, folder / c.weights, getattr(torch, c.dtype))
    if c.library == "diffusers":
        model.save_config(folder)
    else:
        model.config.save_pretrained(folder)


def random_tensor(module, name: str, shape: tuple, generator):
    """A value for parameter ``name`` of ``module`` that keeps activations of order 1 through the network:
    norms are the identity, biases zero, linear/conv weights N(0, 1/fan_in) (variance-preserving), the
    prior's CLIP statistics the identity (std 1, mean 0), embeddings N(0, 0.02^2) as in CLIP's own init."""
    import torch
    from torch import nn

    leaf = name.rsplit(".", 1)[-1]
    norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm))
    if leaf == "bias" or leaf == "clip_mean":
        return torch.zeros(shape)
    if leaf == "clip_std" or (norm and leaf == "weight") or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    x = torch.randn(shape, generator=generator)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and leaf == "weight":
        return x.mul_(math.prod(shape[1:]) ** -0.5)  # fan_in = in_channels/groups * kernel area
    return x.mul_(0.02)


ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_random_weights(model, path: Path, dtype) -> None:
    """Stream a safetensors file of ``model``'s state dict (meta tensors: names and shapes only), making
    each tensor just before it is written, so memory holds one tensor at a time."""
    import torch

    state = model.state_dict()
    persistent_buffers = {n for n, _ in model.named_buffers()} & set(state)
    if persistent_buffers:  # buffers need real values (e.g. position ids), which this recipe does not know
        raise RuntimeError(f"{path.parent.name}: persistent buffers {sorted(persistent_buffers)[:3]}")
    header, offset = {}, 0
    for name, t in state.items():
        size = math.prod(t.shape) * dtype.itemsize
        header[name] = {"dtype": ST_DTYPES[str(dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does
    generator = torch.Generator().manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, t in state.items():
            owner = model.get_submodule(name.rpartition(".")[0])
            value = random_tensor(owner, name, tuple(t.shape), generator).to(dtype).contiguous()
            f.write(value.reshape(-1).view(torch.uint8).numpy().data)
            del value
    os.replace(tmp, path)
