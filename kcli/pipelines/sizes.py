"""Output sizes on the model's grid: what is generated, and what is cropped back to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kcli.errors import KandinskyError


@dataclass(frozen=True)
class Size:
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


def grid_size(width: int, height: int, step: int) -> Size:
    """Round up to the model's grid (as the reference does), remembering the size to crop back to."""
    for name, v in (("width", width), ("height", height)):
        if v < step:
            raise KandinskyError(f"{name} {v} is below this model's minimum of {step} pixels")
    up = lambda v: -(-v // step) * step  # noqa: E731
    return Size(width, height, up(width), up(height), step)


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return image[top:top + height, left:left + width]
