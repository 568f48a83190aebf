"""Device-independent noise: every draw comes from a CPU generator and is then moved to the device.

This is what diffusers' ``randn_tensor`` does for a CPU generator, so a seed gives the same picture on
CPU and GPU, and the same picture as diffusers called with ``torch.Generator("cpu").manual_seed(seed)``.
Draws use the target dtype directly (on CPU a half-precision draw equals the fp32 draw cast down).

Several images made in one batch each keep their own generator (``PerImage``): a draw of B*k rows takes k
rows from each image's generator in turn, so every image sees the very draws (shapes, order) of its single run.
"""

from __future__ import annotations

import torch


class PerImage:
    """The generators of the images of one batch, image i owning rows i*k .. i*k+k-1 of every draw."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    def draw(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n = len(self.generators)
        if not shape or shape[0] % n:
            raise ValueError(f"a draw of shape {shape} does not split into {n} images' rows")
        rows = (shape[0] // n, *shape[1:])
        return torch.cat([torch.randn(rows, generator=g, device="cpu", dtype=dtype) for g in self.generators])


def randn(shape, generator: torch.Generator | PerImage, device: torch.device | str = "cpu", dtype=torch.float32):
    if isinstance(generator, PerImage):
        return generator.draw(tuple(shape), dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device="cpu", dtype=dtype).to(device)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def generators(seeds: list[int]) -> torch.Generator | PerImage:
    """One image's generator as it is; several images' as a ``PerImage``."""
    gens = [cpu_generator(s) for s in seeds]
    return gens[0] if len(gens) == 1 else PerImage(gens)
