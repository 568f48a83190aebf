"""Outpainting canvases: how far to grow a picture on each side, and the canvas and mask that result.

``--expand top=128,left=64``, ``all=96`` or percentages of the picture's own size (``left=25%``;
``all=10%`` grows top and bottom by 10% of the height, left and right by 10% of the width). An axis
that grows is rounded up to the model's grid, the extra pixels going to the growing sides, so the
original is never resampled for that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kcli.errors import KandinskyError
from kcli.pipelines.files import eight_bit

SIDES = ("top", "bottom", "left", "right")
ITEM = re.compile(r"^\s*(top|bottom|left|right|all)\s*=\s*(\d+(?:\.\d+)?)\s*(%|px)?\s*$")


@dataclass(frozen=True)
class Canvas:
    width: int
    height: int
    left: int  # where the original's top-left corner lands
    top: int
    image_width: int
    image_height: int

    def describe(self) -> str:
        grow = {"top": self.top, "left": self.left,
                "bottom": self.height - self.top - self.image_height,
                "right": self.width - self.left - self.image_width}
        parts = ", ".join(f"{k} {v}" for k, v in grow.items() if v)
        return f"canvas {self.width}x{self.height} ({self.image_width}x{self.image_height} grown by {parts})"


def parse_expand(spec: str, width: int, height: int) -> dict[str, int]:
    """``"top=128,left=25%"`` -> pixels per side for a ``width`` x ``height`` picture."""
    out = dict.fromkeys(SIDES, 0)
    for item in filter(None, (p.strip() for p in spec.split(","))):
        m = ITEM.match(item)
        if not m:
            raise KandinskyError(f"--expand: cannot read {item!r} (use side=N, side=N%, with side one of "
                                 "top, bottom, left, right, all)")
        side, value, unit = m.group(1), float(m.group(2)), m.group(3)
        for s in SIDES if side == "all" else (side,):
            size = height if s in ("top", "bottom") else width
            out[s] = round(value * size / 100) if unit == "%" else int(value)
    if not any(out.values()):
        raise KandinskyError("--expand grows no side: give at least one side a size above 0")
    return out


def fit_canvas(width: int, height: int, grow: dict[str, int], step: int) -> Canvas:
    def axis(size: int, before: int, after: int) -> tuple[int, int]:
        total = size + before + after
        if before + after == 0 or total % step == 0:
            return total, before
        extra = -total % step
        share = round(extra * before / (before + after))  # the extra pixels go to the growing sides
        return total + extra, before + share

    w, left = axis(width, grow["left"], grow["right"])
    h, top = axis(height, grow["top"], grow["bottom"])
    return Canvas(w, h, left, top, width, height)


def build(image: Image.Image, canvas: Canvas) -> tuple[Image.Image, np.ndarray]:
    """The canvas (new area filled by repeating the picture's edge, a neutral start for the model) and the
    repaint mask (True on the new area)."""
    px = np.asarray(eight_bit(image).convert("RGB"))
    pad = ((canvas.top, canvas.height - canvas.top - canvas.image_height),
           (canvas.left, canvas.width - canvas.left - canvas.image_width), (0, 0))
    filled = np.pad(px, pad, mode="edge")
    repaint = np.ones((canvas.height, canvas.width), dtype=bool)
    repaint[canvas.top:canvas.top + canvas.image_height, canvas.left:canvas.left + canvas.image_width] = False
    return Image.fromarray(filled), repaint
