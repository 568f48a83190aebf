"""``--memory auto|high|balanced|low|min``: one knob that picks dtype, offload and tiling for the GPU at hand.

| level    | dtype | offload    | MoVQ tiles | GPU memory it needs (2.2, 512 px) |
|----------|-------|------------|------------|-----------------------------------|
| high     | fp16  | none       | when large | ~8 GB (all models resident)       |
| balanced | fp16  | model      | when large | ~3.5 GB (the largest model)       |
| low      | fp16  | sequential | when large | ~1.5 GB                           |
| min      | fp16  | sequential | always     | ~1 GB                             |

``auto`` reads the free memory of the device and takes the highest level that fits. On the CPU there is
no GPU memory to plan: weights stay where they are and the dtype defaults to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kcli.errors import KandinskyError

LEVELS = ("auto", "high", "balanced", "low", "min")
NEEDS_GB = {"high": 9.0, "balanced": 4.5, "low": 2.0}  # free memory to pick a level in auto (with margin)


@dataclass(frozen=True)
class MemoryChoice:
    level: str
    offload: str
    tile: bool | None  # None: tile only large pictures
    reason: str

    def describe(self) -> str:
        """One line: ``memory balanced: offload model, whole MoVQ decode (5.1 GB free on ...)``."""
        return f"memory {self.level}: offload {self.offload}, {'tiled' if self.tile else 'whole'} MoVQ decode ({self.reason})"


def choose_memory(level: str, device: torch.device) -> MemoryChoice:
    if level not in LEVELS:
        raise KandinskyError(f"unknown memory level {level!r}: use {', '.join(LEVELS)}")
    if device.type != "cuda":
        return MemoryChoice("high", "none", None, "CPU: weights stay in RAM")
    reason = "asked for"
    if level == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        gb = free / 2**30
        level = next((lv for lv, need in NEEDS_GB.items() if gb >= need), "min")
        reason = f"{gb:.1f} GB free on {torch.cuda.get_device_name(device)}"
    offload = {"high": "none", "balanced": "model", "low": "sequential", "min": "sequential"}[level]
    return MemoryChoice(level, offload, True if level == "min" else None, reason)
