"""How an image file carries its metadata: the writing half, shared by the command line and the server
(``kcli.cli.metadata`` reads it back). No torch here.

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
    """Arguments for ``PIL.Image.save`` that embed ``meta`` in the file's format (by ``path``'s suffix)."""
    png = Path(path).suffix.lower() == ".png"
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
