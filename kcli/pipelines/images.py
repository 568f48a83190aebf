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


# ---- inputs -------------------------------------------------------------------------------------------

def load_image(path, what: str = "image", header_only: bool = False):
    """An RGB(A) picture from disk, EXIF rotation applied. Errors name the file. ``header_only`` checks that
    the file is a picture PIL reads, cheaply, and returns None."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from kcli.loading.errors import KandinskyError

    p = str(path)
    try:
        with Image.open(p) as im:
            if header_only:
                return None
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise KandinskyError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise KandinskyError(f"{what} {p} is a folder, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise KandinskyError(f"{what} {p} cannot be read as an image ({e.__class__.__name__})") from None
    return im


def rgb(image):
    """Drop alpha by compositing on white, so transparent areas do not turn black."""
    from PIL import Image

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


def repaint_mask(mask_image, width: int, height: int, invert: bool = False) -> np.ndarray:
    """(height, width) bool, True = repaint. White repaints, black keeps; where the mask has alpha,
    transparent repaints. Resized with Lanczos like the reference, then binarized at one half."""
    from PIL import Image

    from kcli.loading.errors import KandinskyError

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


def keep_latent_mask(repaint: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) float, 1 = keep, at latent size (nearest), with the repaint area grown by one latent
    pixel towards (i±1, j), (i, j±1), (i-1, j-1) and (i+1, j+1), as the reference's ``prepare_mask`` does."""
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
