"""Several images per UNet call (and prior call): how many, and which images may share a call.

The images of ``-n N``, the candidates of ``--best-of``, and the jobs of a prompts file that differ only in
prompt and seed run as one batch of rows. Each image keeps its own CPU generator (``kcli.samplers.noise.PerImage``)
and draws what its single run draws, in the same order, so it stays the image of its single run; the rows of a
batch never mix (every model here is row-independent), only the arithmetic's blocking may change the last bits.

The cap (``images_per_call``) is the one place that says how many: on CUDA 4 with every model resident (the
memory levels that offload plan for one image, and keep to it); on the CPU 1, so that ``-n`` images are
bit-for-bit their single runs there, though a batch is faster (1.56x the images per minute for ``-n 4`` at
128 px, docs/benchmarks.md, "Batched images"). ``--batch N`` overrides it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

CUDA_BATCH = 4
CPU_BATCH = 1


def images_per_call(device: torch.device, asked: int | None = None, offload: str = "none") -> int:
    """The most images one UNet call makes: ``asked`` (``--batch``), else the device's default. Under offload
    (``--memory balanced``, ``low``, ``min``) the memory plan is made for one image: one at a time then."""
    if asked is not None:
        return max(1, int(asked))
    if device.type != "cuda":
        return CPU_BATCH
    return CUDA_BATCH if offload == "none" else 1


def group_key(request):
    """What images of one batch must share: every setting but the prompt and the seed."""
    blank = {name: None for name in ("prompt", "seed") if hasattr(request, name)}
    return dataclasses.replace(request, **blank, num_images=1)


@dataclass(frozen=True)
class Unit:
    """One image to make: candidate ``candidate`` of image ``image`` of request ``request`` (an index)."""

    request: int
    image: int
    candidate: int
    seed: int


def units(seed: int, num_images: int, best_of: int, request: int = 0) -> list[Unit]:
    """Image i's candidates are seeds S+iN .. S+iN+N-1 (N = best_of), in order."""
    return [Unit(request, i, j, seed + i * best_of + j) for i in range(num_images) for j in range(best_of)]


def chunks(todo: list[Unit], size: int) -> Iterator[list[Unit]]:
    for start in range(0, len(todo), size):
        yield todo[start:start + size]
