"""Pictures from disk: EXIF rotation applied, errors that name the file; their hashes. No torch here."""

from __future__ import annotations

import os
import warnings

MAX_PIXELS = 64_000_000  # per picture, read from its header before any decode; KANDINSKY_MAX_PIXELS overrides
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}  # mode -> white


def max_pixels() -> int:
    """The most pixels a picture may have. PIL refuses, as it opens a picture, anything above twice its own
    figure (179 MP) whatever we allow: where our limit is higher, PIL's is raised to it."""
    from PIL import Image

    value = os.environ.get("KANDINSKY_MAX_PIXELS", "")
    limit = int(value) if value.isdigit() and int(value) > 0 else MAX_PIXELS
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def eight_bit(image):
    """A 16-bit grey picture (PNG, TIFF) as 8-bit "L"; others as they are. PIL's own conversion clips every
    value above 255 to white, so a 16-bit picture became near-white."""
    import numpy as np
    from PIL import Image

    white = HIGH_DEPTH.get(image.mode)
    if white is None:
        return image
    levels = np.asarray(image, dtype=np.float64) * (255 / white)
    return Image.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8), "L")


def load_image(path, what: str = "image", header_only: bool = False):
    """An RGB(A) picture from disk, EXIF rotation applied. Errors name the file. ``header_only`` checks that
    the file is a picture PIL reads, cheaply, and returns None."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from kcli.errors import KandinskyError

    p = str(path)
    limit = max_pixels()
    try:
        with warnings.catch_warnings():  # our own limit speaks below, in one line; PIL's warning would not
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(p)
        with opened as im:  # reads the header only
            if im.width * im.height > limit:
                raise KandinskyError(f"{what} {p} is {im.width}x{im.height}, {im.width * im.height / 1e6:.0f} "
                                     f"megapixels: above the limit of {limit / 1e6:g} (set KANDINSKY_MAX_PIXELS "
                                     "to allow more)")
            if header_only:
                return None
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise KandinskyError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise KandinskyError(f"{what} {p} is a folder, not an image") from None
    except Image.DecompressionBombError as e:  # PIL's own limit, met in the header of some formats
        raise KandinskyError(f"{what} {p} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise KandinskyError(f"{what} {p} cannot be read as an image ({e.__class__.__name__})") from None
    return im


def file_sha256(path) -> str:
    """The sha256 of a file's bytes: what an image records about the pictures it was made from."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_unchanged(path, recorded: str | None, what: str) -> str:
    """The file's sha256, which must be ``recorded`` when one is (``--from`` replays the file it names)."""
    found = file_sha256(path)
    if recorded and found != recorded:
        from kcli.errors import KandinskyError

        raise KandinskyError(f"{what} {path} has changed since the image was made (sha256 {found[:12]}..., "
                             f"recorded {recorded[:12]}...)")
    return found
