"""Pixels in and out: PIL pictures to model tensors and back."""

from __future__ import annotations

import numpy as np
import torch

from kcli.pipelines.files import eight_bit


def to_uint8(decoded: torch.Tensor) -> np.ndarray:
    """MoVQ output in [-1, 1] (B, 3, H, W) -> (B, H, W, 3) uint8, rounded like the reference's PIL output."""
    x = (decoded.float() * 0.5 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def rgb(image):
    """Drop alpha by compositing on white, so transparent areas do not turn black; 16-bit grey scaled to 8."""
    from PIL import Image

    image = eight_bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize(image, width: int, height: int):
    """Bicubic resize as the reference's image processor does (``reducing_gap=1``); a no-op at the same size."""
    from PIL import Image

    return image.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=1)


def to_pixels(image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return x * 2.0 - 1.0


def resize_array(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W[, 3]) uint8 pixels resized like ``resize``; a no-op at the same size."""
    from PIL import Image

    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(resize(Image.fromarray(pixels), width, height))
