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


# CPU instructions that run bf16 matrix products and convolutions at about twice fp32's rate (oneDNN uses them):
# AMX tiles (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later). Without them bf16 is
# emulated in fp32 and no faster.
FAST_BF16 = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo does not say."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(flags: set[str] | None = None) -> str | None:
    """The instructions that make ``--dtype bf16`` about twice as fast as fp32 on this CPU, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((name for flag, name in FAST_BF16 if flag in flags), None)


def bf16_advice(flags: set[str] | None = None) -> str:
    """One line for ``doctor``: whether bf16 pays on this CPU (fp32 stays the default: it is exact)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "unknown (the CPU's flags cannot be read here): time --dtype bf16 against the default fp32"
    found = fast_bf16(flags)
    if found:
        return (f"this CPU has {found}: --dtype bf16 runs about twice as fast as the default fp32 (and takes half "
                "the memory), with slightly different pictures")
    return "this CPU has no bf16 instructions (AMX-BF16, AVX512-BF16): keep the default fp32, bf16 is no faster"
