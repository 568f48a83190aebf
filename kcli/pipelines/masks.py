"""Inpainting masks: what to repaint at pixel and at latent size, and pasting the original back."""

from __future__ import annotations

import numpy as np


def repaint_mask(mask_image, width: int, height: int, invert: bool = False) -> np.ndarray:
    """(height, width) bool, True = repaint. White repaints, black keeps; where the mask has alpha,
    transparent repaints. Resized with Lanczos like the reference, then binarized at one half."""
    from PIL import Image

    from kcli.errors import KandinskyError
    from kcli.pipelines.pixels import eight_bit

    mask_image = eight_bit(mask_image)
    if mask_image.mode in ("RGBA", "LA") or (mask_image.mode == "P" and "transparency" in mask_image.info):
        alpha = mask_image.convert("RGBA").getchannel("A")
        gray = Image.eval(alpha, lambda a: 255 - a) if alpha.getextrema()[0] < 255 else mask_image.convert("L")
    else:
        gray = mask_image.convert("L")
    gray = gray.resize((width, height), resample=Image.Resampling.LANCZOS)
    repaint = np.asarray(gray, dtype=np.float32) / 255.0 >= 0.5
    if invert:
        repaint = ~repaint
    if not repaint.any():
        raise KandinskyError("the mask is all black: nothing to repaint (white marks what to repaint)")
    if repaint.all():
        raise KandinskyError("the mask is all white: everything would be repainted (use generate instead)")
    return repaint


GROWTH = ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1))


def keep_latent_mask(repaint: np.ndarray, latent_hw: tuple[int, int]):
    """(1, 1, h, w) float tensor, 1 = keep, at latent size (nearest), with the repaint area grown by one latent
    pixel towards (i±1, j), (i, j±1), (i-1, j-1) and (i+1, j+1), as the reference's ``prepare_mask`` does."""
    import torch

    keep = torch.from_numpy((~repaint).astype(np.float32))[None, None]
    keep = torch.nn.functional.interpolate(keep, size=latent_hw, mode="nearest")
    hole = keep[0, 0] != 1
    h, w = hole.shape
    padded = torch.nn.functional.pad(hole, (1, 1, 1, 1))
    cleared = torch.zeros_like(hole)
    for di, dj in GROWTH:  # a repaint pixel at q clears q + (di, dj)
        cleared |= padded[1 - di:1 - di + h, 1 - dj:1 - dj + w]
    return keep * (~cleared).float()


def paste_original(original: np.ndarray, generated: np.ndarray, repaint: np.ndarray, feather: float) -> np.ndarray:
    """Keep every pixel outside the repaint area exactly; inside, fade from the original to the generated
    image over about ``feather`` pixels from the edge, so the seam does not show."""
    from PIL import Image, ImageFilter

    soft = np.asarray(Image.fromarray(repaint.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(feather)),
                      dtype=np.float32) / 255.0
    alpha = np.where(repaint, np.clip(2.0 * soft - 1.0, 0.0, 1.0), 0.0)[..., None]  # 0 at the edge, 1 inside
    out = original.astype(np.float32) * (1 - alpha) + generated.astype(np.float32) * alpha
    return np.where(repaint[..., None], out.round(), original).astype(np.uint8)
