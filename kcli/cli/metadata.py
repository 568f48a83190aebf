"""What every image says about how it was made, and how to read it back (no model, no torch needed).

Two PNG text chunks:
- ``parameters``: the AUTOMATIC1111 layout that image browsers, CivitAI and others already read:
  the prompt, a "Negative prompt:" line, then "Key: value, ..." settings.
- ``kandinsky``: lossless JSON with everything needed to make the image again: mode, both stages'
  settings, seed, size, sampler, model and checkpoint revisions, dtype, device, offload, versions.
JPEG and WebP files carry the JSON in their EXIF user comment.
"""

from __future__ import annotations

import json
from pathlib import Path

from kcli.errors import KandinskyError

JSON_KEY = "kandinsky"
A1111_KEY = "parameters"
FORMAT = 1  # bump when the JSON layout changes incompatibly
USER_COMMENT = 0x9286


def a1111_text(meta: dict) -> str:
    s = meta["settings"]
    lines = [s.get("prompt") or ""]
    if s.get("negative"):
        lines.append(f"Negative prompt: {s['negative']}")
    fields = {
        "Steps": s.get("steps"), "Sampler": meta.get("sampler"), "CFG scale": s.get("guidance"),
        "Seed": s.get("seed"), "Size": f"{s.get('width')}x{s.get('height')}", "Model": meta.get("model"),
        "Prior steps": s.get("prior_steps"), "Prior CFG scale": s.get("prior_guidance"),
        "Denoising strength": meta.get("inputs", {}).get("strength"), "Mode": meta.get("mode"),
        "Version": f"kandinsky {meta.get('versions', {}).get('kandinsky', '')}".strip(),
    }
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, "")))
    return "\n".join(lines)


def save_kwargs(path: Path, meta: dict) -> dict:
    """Arguments for ``PIL.Image.save`` that embed ``meta`` in the file's format."""
    png = path.suffix.lower() == ".png"
    # PNG iTXt holds UTF-8; EXIF strings do not, so there the JSON escapes everything beyond ASCII
    payload = json.dumps({"format": FORMAT, **meta}, ensure_ascii=not png, sort_keys=True)
    if png:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt(A1111_KEY, a1111_text(meta))
        info.add_itxt(JSON_KEY, payload)
        return {"pnginfo": info}
    from PIL import Image

    exif = Image.Exif()
    exif[USER_COMMENT] = payload
    return {"exif": exif.tobytes()}


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
