"""Pictures from disk: EXIF rotation applied, errors that name the file; their hashes. No torch here."""

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
