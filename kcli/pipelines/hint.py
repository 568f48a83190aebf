"""Hint pictures for the depth ControlNet: a file or a PIL picture -> (1, 3, H, W) floats in [0, 1].

As diffusers' examples build them: a grey depth map's levels / 255 repeated over the 3 channels, or an RGB
picture's channels / 255. 16-bit grey pictures (depth PNGs often are) are scaled by 65535 instead. The
picture is resized to the size generated (bicubic), so any hint fits any output size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kcli.pipelines.images import load_image, resize, rgb

GREY_WHITE = {"1": 255.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0,
              "F": 1.0}  # grey PIL modes -> the value of white once converted to floats ("1" goes through "L")


@dataclass(frozen=True)
class HintSource:
    """Where a hint came from, for metadata and ``--from``: the file's name and the sha256 of its bytes."""

    name: str
    sha256: str


def load_hint(path) -> tuple:
    """(PIL picture, HintSource) from a file; a file that is not a picture ends with one line naming it."""
    image = load_image(path, "hint")
    return image, HintSource(Path(path).name, file_sha256(path))


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hint_pixels(image, width: int, height: int) -> torch.Tensor:
    """A PIL picture -> (1, 3, height, width) float32 in [0, 1]. Pictures with alpha are put on white first."""
    from PIL import Image

    if image.mode in GREY_WHITE:
        grey = (image.convert("L") if image.mode == "1" else image).convert("F")
        if grey.size != (width, height):
            grey = grey.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=1)
        x = torch.from_numpy(np.asarray(grey, dtype=np.float32) / GREY_WHITE[image.mode]).clamp(0, 1)
        return x[None, None].expand(1, 3, -1, -1).contiguous()
    pixels = resize(rgb(image), width, height)
    return torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def hint_input(path, expected_sha256: str | None = None) -> tuple:
    """(picture, what the metadata records) for a hint file; ``expected_sha256`` (``--from``) must match."""
    image, source = load_hint(path)
    if expected_sha256 and source.sha256 != expected_sha256:
        from kcli.loading.errors import KandinskyError

        raise KandinskyError(f"hint {path} has changed since the image was made (sha256 {source.sha256[:12]}..., "
                             f"recorded {expected_sha256[:12]}...)")
    return image, {"hint": str(Path(path).resolve()), "hint_sha256": source.sha256}


def check_hint_file(path) -> None:
    """A hint that is not a picture fails here, before any model loads."""
    load_image(path, "hint", header_only=True)
