"""Pictures in a request (base64, data URLs, uploads) and PNGs out, with the metadata a CLI run writes.

Decoding checks the pixel count from the header before any pixel is decoded (``kcli.pipelines.files``'
limit, ``KANDINSKY_MAX_PIXELS``), so a small compressed bomb never expands in memory.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from kcli.pipelines.files import max_pixels
from kcli.pipelines.imagemeta import save_kwargs
from kcli.serve.errors import ApiError


def decode_base64(data, what: str) -> bytes:
    """The bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(data, str):
        raise ApiError(f"{what} must be a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{what} is not valid base64") from None


def open_image(raw: bytes, what: str):
    """A decoded picture (EXIF rotation applied); pictures beyond the pixel limit are refused unread."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = max_pixels()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > limit:
                raise ApiError(f"{what} is {im.width}x{im.height}: above the limit of {limit / 1e6:g} megapixels",
                               413)
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        raise ApiError(f"{what} is too large to decode safely", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(f"{what} is not an image PIL can read") from None


def decode_image(data, what: str):
    return open_image(decode_base64(data, what), what)


def png_bytes(image, meta: dict | None) -> bytes:
    """``image`` as PNG, carrying ``meta`` as the command line's files do."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **(save_kwargs(Path("image.png"), meta) if meta else {}))
    return buffer.getvalue()


def png_base64(image, meta: dict | None) -> str:
    return base64.b64encode(png_bytes(image, meta)).decode("ascii")
