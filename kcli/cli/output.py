"""Where images go: names that never leave the chosen folder, never overwrite by accident, and files
that appear whole or not at all (written to a temporary name, then renamed)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from kcli.loading.errors import KandinskyError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe summary of a prompt: letters, digits and dashes only (no separators, no dots)."""
    s = re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-_")
    return (s[:limit].rstrip("-_") or "image")


def plan_outputs(output: Path | None, prompt: str, seeds: list[int], overwrite: bool) -> list[Path]:
    """One path per image. ``output`` is a file (a name per seed when several) or a folder: an existing one,
    or any path without a file suffix (created when the first image is saved)."""
    if output is None or output.is_dir() or not output.suffix:
        folder, names = output or Path.cwd(), [f"{slug(prompt)}-{s}.png" for s in seeds]
    else:
        suffix = output.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise KandinskyError(f"{output}: unsupported image type {suffix} (use .png, .jpg or .webp)")
        folder = output.parent
        names = [output.name] if len(seeds) == 1 else [f"{output.stem}-{s}{output.suffix}" for s in seeds]
    paths = [folder / n for n in names]
    if not overwrite:
        taken = [p for p in paths if p.exists()]
        if taken:
            raise KandinskyError(f"{taken[0]} already exists (use --overwrite to replace it)")
    if len(set(paths)) != len(paths):
        raise KandinskyError("several images would get the same file name")
    return paths


def save_image(image, path: Path) -> None:
    """Write atomically: a crash or Ctrl-C leaves either the old state or the whole new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
        image.save(tmp, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
