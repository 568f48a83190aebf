"""Read one component folder of a diffusers-layout checkpoint: its config and its tensors.

A component folder (``unet/``, ``movq/``, ``prior/`` ...) holds ``config.json`` and one weights file.
Modules are built on the ``meta`` device and the tensors are *assigned* to them (no random init, no
second copy): safetensors files are memory-mapped, so a CPU load in the stored dtype touches each byte
once. Pickled ``.bin`` files are read with ``torch.load(weights_only=True)``, which runs no code.

This module imports nothing else from kcli.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from kcli.loading.errors import CheckpointError
from kcli.loading.keys import is_leftover
from kcli.loading.ranges import buildable, in_file

M = TypeVar("M", bound=nn.Module)

# Looked up in this order: safetensors first, so a folder with both never goes through pickle.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)

Rules = Iterable[tuple[str, str]]


def read_json(path: Path) -> dict:
    """Read a JSON object, turning every way it can be unusable into a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def read_config(folder: Path) -> dict:
    return read_json(Path(folder) / "config.json")


def find_weights(folder: Path) -> Path:
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} has no weights file (looked for {', '.join(WEIGHT_FILES[:2])})")


def read_tensors(path: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                 channels_last: bool = False) -> dict:
    """All tensors of a weights file on ``device``, floating ones cast to ``dtype`` (None keeps the stored
    dtype), and with ``channels_last`` the 4-D ones (convolution kernels) laid out channels-last.

    A safetensors tensor kept as stored stays a view of the memory-mapped file (no copy: its pages count in
    the process's memory only once touched). A tensor that is cast, laid out or moved is read with plain
    file reads, one at a time, and converted: the mapped file pages of a converted tensor are never touched,
    so its bytes are not held twice (converted copy + mapped source) for as long as the file stays mapped.
    """
    path = Path(path)
    device = torch.device(device)
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path, dtype, device, channels_last)
        tensors = _read_pickle(path)
    except CheckpointError:
        raise
    except _NotTheFile as e:
        raise e.__cause__ from None
    except Exception as e:  # safetensors and torch raise several unrelated types for a damaged file
        raise CheckpointError(f"{path} is corrupt or truncated ({e.__class__.__name__}: {e})") from None
    if dtype is not None or channels_last or device.type != "cpu":
        tensors = {k: _convert(v, dtype, channels_last, device) for k, v in tensors.items()}
    return tensors


# safetensors' dtype names (https://github.com/huggingface/safetensors, format.md)
_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


def _changes(stored: torch.dtype, shape: list, dtype, channels_last: bool, device: torch.device) -> bool:
    if device.type != "cpu":
        return True
    if not stored.is_floating_point:
        return False
    return (dtype is not None and dtype != stored) or (channels_last and len(shape) == 4)


class _NotTheFile(Exception):
    """A conversion failed (e.g. onto a device this machine lacks): the cause is raised as it is."""


def _read_safetensors(path: Path, dtype, device: torch.device, channels_last: bool) -> dict:
    from safetensors import safe_open

    header, start = _safetensors_header(path)
    tensors, convert = {}, set()
    for key, info in header.items():
        stored = _SAFE_DTYPES.get(info["dtype"])
        if stored is not None and _changes(stored, info["shape"], dtype, channels_last, device):
            convert.add(key)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key not in convert:
                tensors[key] = f.get_tensor(key)
    if not convert:
        return tensors
    sizes = [header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in convert]
    scratch = torch.empty(max(sizes), dtype=torch.uint8)  # one buffer for all: its pages fault in once
    with open(path, "rb", buffering=0) as raw:
        for key in sorted(convert, key=lambda k: header[k]["data_offsets"][0]):  # one pass through the file
            info = header[key]
            begin, end = info["data_offsets"]
            buf = scratch[:end - begin]
            raw.seek(start + begin)
            if raw.readinto(memoryview(buf.numpy())) != end - begin:
                raise CheckpointError(f"{path} is truncated (tensor {key})")
            t = buf.view(_SAFE_DTYPES[info["dtype"]]).reshape(info["shape"])
            try:
                converted = _convert(t, dtype, channels_last, device)
            except Exception as e:  # the device or the dtype, not the file: never reported as damage
                raise _NotTheFile(e) from e
            tensors[key] = converted.clone() if converted.data_ptr() == t.data_ptr() else converted
    return tensors


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table (name -> dtype, shape, data_offsets) and where its data starts."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 * 2**20:
            raise CheckpointError(f"{path} is not a safetensors file (header size {n})")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _read_pickle(path: Path) -> dict:
    """A pickled ``.bin``, through ``torch.load(weights_only=True)`` only: tensors and containers, never code.

    Current files are zip archives (memory-mapped); files from torch < 1.6 are a bare pickle stream, which
    torch reads without mmap. Anything else the safe unpickler meets is refused, not run.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    legacy = head[:1] == b"\x80"  # a bare pickle stream (protocol 2+) rather than a zip archive ("PK")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError:
        kind = "legacy (non-zip) PyTorch pickle" if legacy else "PyTorch pickle"
        raise CheckpointError(
            f"{path} is a {kind} holding objects other than tensors; kandinsky does not unpickle code "
            "from checkpoints (use its safetensors copy)"
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path} is a PyTorch pickle but not a flat dict of tensors (a state dict)")
    return tensors


def _convert(t: torch.Tensor, dtype: torch.dtype | None, channels_last: bool, device: torch.device) -> torch.Tensor:
    if not t.is_floating_point():
        return t.to(device)
    fmt = torch.channels_last if channels_last and t.dim() == 4 else torch.preserve_format
    return t.to(device=device, dtype=dtype or t.dtype, memory_format=fmt)


def rename_keys(tensors: dict, rules: Rules) -> dict:
    """Apply ordered ``(regex, replacement)`` rules to every key; the first rule that matches wins."""
    compiled = [(re.compile(p), r) for p, r in rules]
    if not compiled:
        return tensors
    out = {}
    for key, value in tensors.items():
        for pattern, repl in compiled:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def assign_weights(module: nn.Module, tensors: dict, *, source: Path | str, rules: Rules = ()) -> nn.Module:
    """Assign checkpoint tensors to a (meta-built) module; strict on names and shapes.

    The one tolerance: the id buffers older transformers saved (``keys.LEFTOVER_BUFFERS``) may be in the file
    where the module keeps them as non-persistent buffers; they must have the module's shape and are
    dropped. The module's own copies are then made on the weights' device.
    """
    tensors = rename_keys(tensors, rules)
    expected = module.state_dict()
    buffers = dict(module.named_buffers())
    leftovers = {k for k in tensors if k not in expected and is_leftover(k) and k in buffers}
    for key in leftovers:
        if tuple(tensors[key].shape) != tuple(buffers[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(tensors[key].shape)}, the config needs {tuple(buffers[key].shape)}"
            )
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - leftovers)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{source} does not fit its config: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(tensors[key].shape)}, the config needs {tuple(ref.shape)}"
            )
    module.load_state_dict({k: v for k, v in tensors.items() if k not in leftovers}, strict=True, assign=True)
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    _rebuild_id_buffers(module, device)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:  # a programming error: a module registered a buffer that the checkpoint cannot fill
        raise RuntimeError(f"{type(module).__name__} left tensors on the meta device: {leftover[:3]}")
    return module.eval().requires_grad_(False)


def _rebuild_id_buffers(module: nn.Module, device: torch.device) -> None:
    """Make the non-persistent id buffers of transformers' embeddings (``position_ids`` 0..n-1,
    ``token_type_ids`` zeros) for real: built on meta they hold nothing, and checkpoints need not carry them."""
    for name, buf in list(module.named_buffers()):
        if not (buf.is_meta and is_leftover(name)):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        n = buf.shape[-1]
        if attr == "position_ids":
            value = torch.arange(n, device=device).expand(buf.shape)
        else:
            value = torch.zeros(buf.shape, dtype=torch.long, device=device)
        owner.register_buffer(attr, value, persistent=False)


def load_module(
    folder: Path,
    build: Callable[[dict], M],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    rules: Rules = (),
    channels_last: bool = False,
) -> M:
    """Build a module from ``folder/config.json`` on the meta device and fill it from the folder's weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = read_config(folder)
    weights = find_weights(folder)
    with torch.device("meta"), in_file(folder / "config.json"), buildable():
        module = build(config)
    return assign_weights(module, read_tensors(weights, dtype, device, channels_last), source=weights, rules=rules)
