"""Pictures from disk: EXIF rotation applied, errors that name the file. No torch here."""

from __future__ import annotations


def load_image(path, what: str = "image", header_only: bool = False):
    """An RGB(A) picture from disk, EXIF rotation applied. Errors name the file. ``header_only`` checks that
    the file is a picture PIL reads, cheaply, and returns None."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from kcli.errors import KandinskyError

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
