"""Device-independent noise: every draw comes from a CPU generator and is then moved to the device.

This is what diffusers' ``randn_tensor`` does for a CPU generator, so a seed gives the same picture on
CPU and GPU, and the same picture as diffusers called with ``torch.Generator("cpu").manual_seed(seed)``.
Draws use the target dtype directly (on CPU a half-precision draw equals the fp32 draw cast down).
"""

from __future__ import annotations

import torch


def randn(shape, generator: torch.Generator, device: torch.device | str = "cpu", dtype=torch.float32):
    return torch.randn(tuple(shape), generator=generator, device="cpu", dtype=dtype).to(device)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))
