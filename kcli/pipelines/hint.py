"""Hint pictures for the depth ControlNet: a file or a PIL picture -> (1, 3, H, W) floats in [0, 1].

As diffusers' examples build them: a grey depth map's levels / 255 repeated over the 3 channels, or an RGB
picture's channels / 255. 16-bit grey pictures (depth PNGs often are) are scaled by 65535 instead. The
picture is resized to the size generated (bicubic), so any hint fits any output size.

``prepare`` is the recipes' side (``kcli.pipelines.modes``): the request's hint picture, read from its file or
estimated from a photo (``kcli.pipelines.depth``), checked against the decoder, with the request as images
record it (the files' sha256, the depth model used).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from kcli.pipelines.files import file_sha256
from kcli.pipelines.pixels import resize, rgb
from kcli.pipelines.requests import Request, _picture
from kcli.pipelines.sizes import Size

GREY_WHITE = {"1": 255.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0,
              "F": 1.0}  # grey PIL modes -> the value of white once converted to floats ("1" goes through "L")


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


def fitted(picture, size: Size, stretch: bool = False) -> torch.Tensor | None:
    """The hint at the size generated (None without one).

    Off the grid, text-to-image crops the center of a larger picture: the hint is resized to the size asked
    for and its edges extended over the margin, so it lines up with what is kept. Image-to-image stretches
    its picture to the grid and back (``stretch``): the hint is stretched the same way."""
    if picture is None:
        return None
    if stretch or not size.cropped:
        return hint_pixels(picture, size.gen_width, size.gen_height)
    top, left = (size.gen_height - size.height) // 2, (size.gen_width - size.width) // 2
    pad = (left, size.gen_width - size.width - left, top, size.gen_height - size.height - top)
    return torch.nn.functional.pad(hint_pixels(picture, size.width, size.height), pad, mode="replicate")


def prepare(k, request: Request, events) -> tuple[Request, object]:
    """(the request as recorded, its hint picture or None) on the loaded pipeline ``k``. A hint goes with a
    depth ControlNet decoder and a ControlNet decoder with a hint: checked before anything runs."""
    k.decoder.check_hint(request.hinted)
    if not request.hinted:
        return request, None
    if request.depth_from is not None:
        from kcli.pipelines.depth import estimate

        return estimate(k, request, events)
    picture = _picture(request.hint, "hint")
    if isinstance(request.hint, (str, Path)):  # recorded by path and hash (a PIL picture is not recorded)
        request = dataclasses.replace(request, hint=Path(request.hint), hint_sha256=file_sha256(request.hint))
    return request, picture
