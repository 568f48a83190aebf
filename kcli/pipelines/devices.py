"""Device and dtype choice: ``auto`` means CUDA when there is one; half precision only where it pays."""

from __future__ import annotations

import torch

from kcli.errors import KandinskyError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KandinskyError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KandinskyError("--device cuda was asked for, but no CUDA GPU is available (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KandinskyError(f"no GPU {device.index}: this machine has {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise KandinskyError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 on CPU by default. fp16 on a CPU has no fast kernels and is refused."""
    if name is None or name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise KandinskyError(f"unknown dtype {name!r}: use fp32, fp16 or bf16")
    if name == "fp16" and device.type == "cpu":
        raise KandinskyError("fp16 on the CPU is hundreds of times slower than fp32: use --dtype bf16 or fp32")
    return DTYPES[name]
