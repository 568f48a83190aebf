"""``--memory auto|high|balanced|low|min``: one knob that picks dtype, offload and tiling for the GPU at hand.

| level    | dtype | offload    | MoVQ tiles | peak GPU memory (2.2, fp16, 512-1024 px; first run)  |
|----------|-------|------------|------------|-------------------------------------------------------|
| high     | fp16  | none       | when large | 9.2 GiB (every model + the CLIP image encoder)       |
| balanced | fp16  | model      | when large | 3.5 GiB (the CLIP image encoder, then prior + text)  |
| low      | fp16  | sequential | when large | 1.0 GiB at 512 px, 2.3 at 768 (the MoVQ decode)      |
| min      | fp16  | sequential | always     | 0.3-0.5 GiB                                           |

Figures from the device-memory tracker (memtrack/memsim; docs/benchmarks.md has the table by size and dtype).

``auto`` reads the free memory of the device and takes the highest level that fits. On the CPU there is
no GPU memory to plan: weights stay where they are and the dtype defaults to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kcli.errors import KandinskyError

LEVELS = ("auto", "high", "balanced", "low", "min")
NEEDS_GB = {"high": 10.5, "balanced": 4.5, "low": 3.0}  # free GiB to pick a level in auto: the cold peak up to
                                                       # 1024 px in fp16, plus 10% and 0.25 GiB (memplan.MARGIN)


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
