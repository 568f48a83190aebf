"""Pixels in and out: output sizes on the model's grid, latents to 8-bit images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kcli.loading.errors import KandinskyError


@dataclass(frozen=True)
class SizePlan:
    """What is generated (a multiple of the model's step) and what is returned (what was asked for)."""

    width: int
    height: int
    gen_width: int
    gen_height: int
    step: int

    @property
    def cropped(self) -> bool:
        return (self.width, self.height) != (self.gen_width, self.gen_height)

    def note(self) -> str | None:
        if not self.cropped:
            return None
        return (f"{self.width}x{self.height} is not a multiple of {self.step} px: generating {self.gen_width}x{self.gen_height} and center-cropping to "
                f"{self.width}x{self.height}")


def plan_size(width: int, height: int, step: int) -> SizePlan:
    """Round up to the model's grid (as the reference does), remembering the size to crop back to."""
    for name, v in (("width", width), ("height", height)):
        if v < step:
            raise KandinskyError(f"{name} {v} is below this model's minimum of {step} pixels")
    up = lambda v: -(-v // step) * step  # noqa: E731
    return SizePlan(width, height, up(width), up(height), step)


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """MoVQ output in [-1, 1] (B, 3, H, W) -> (B, H, W, 3) uint8, rounded like the reference's PIL output."""
    x = (decoded.float() * 0.5 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width]
