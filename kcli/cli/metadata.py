"""What every image says about how it was made, and how to read it back (no model, no torch needed).
The writing half lives in ``kcli.pipelines.imagemeta`` (the server writes the same files).

Two PNG text chunks, ``parameters`` (AUTOMATIC1111's layout) and ``kandinsky`` (lossless JSON); JPEG and
WebP files carry the JSON in their EXIF user comment.
"""

from __future__ import annotations

import json
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines.imagemeta import A1111_KEY, FORMAT, JSON_KEY, USER_COMMENT, a1111_text, save_kwargs

__all__ = ["A1111_KEY", "FORMAT", "JSON_KEY", "USER_COMMENT", "a1111_text", "parameters", "read", "save_kwargs"]


def _open(path: Path):
    """The image with its text chunks read (they may follow the pixel data), without importing torch."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise KandinskyError(f"{path} does not exist") from None
    except (UnidentifiedImageError, IsADirectoryError, OSError, ValueError):
        raise KandinskyError(f"{path} cannot be read as an image") from None


def read(path: Path) -> dict:
    """The JSON metadata of an image made by kandinsky; a one-line error if there is none."""
    image = _open(path)
    raw = image.info.get(JSON_KEY) or image.getexif().get(USER_COMMENT)
    if not raw:
        raise KandinskyError(f"{path} carries no kandinsky metadata (was it made by kandinsky, and not re-saved?)")
    try:
        meta = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        raise KandinskyError(f"{path}: its kandinsky metadata is damaged") from None
    if meta.get("format", 0) > FORMAT:
        raise KandinskyError(f"{path} was made by a newer kandinsky (metadata format {meta['format']}): update")
    return meta


def parameters(path: Path) -> str | None:
    return _open(path).info.get(A1111_KEY)
