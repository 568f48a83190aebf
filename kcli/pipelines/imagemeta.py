"""How an image file carries its metadata, written and read back; shared by the command line, the server,
``--resume`` and ``info``. No torch here, and reading never decodes pixels.

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
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}  # what kandinsky writes and reads as pictures


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 1 << 20  # bytes of one text chunk, unpacked: the metadata is a few kB; anything larger is skipped


def png_text(path: Path) -> dict[str, str] | None:
    """The text chunks of a PNG file (tEXt, zTXt, iTXt), read by walking its chunks and seeking past the
    pixel data, which is never decoded (a picture of 10^10 pixels reads as fast as any); None when ``path``
    is not a PNG file. Oversized or malformed chunks are skipped."""
    try:
        with open(path, "rb") as stream:
            return _walk(stream)
    except FileNotFoundError:
        raise KandinskyError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise KandinskyError(f"{path} is a folder, not an image") from None
    except OSError as e:
        raise KandinskyError(f"{path} cannot be read ({e.strerror or e})") from None


def _walk(stream) -> dict[str, str] | None:
    import struct
    import zlib

    if stream.read(8) != PNG_SIGNATURE:
        return None
    texts = {}
    while len(head := stream.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt") or length > MAX_TEXT:
            stream.seek(length + 4, 1)  # the data and its CRC
            continue
        data = stream.read(length)
        stream.seek(4, 1)
        key, _, rest = data.partition(b"\0")
        try:
            if kind == b"tEXt":
                value = rest.decode("latin-1")
            elif kind == b"zTXt":
                value = _inflate(rest[1:]).decode("latin-1")
            else:  # iTXt: compressed?, method, language\0, translated key\0, text
                compressed, rest = rest[:1] == b"\1", rest[2:]
                _, _, rest = rest.partition(b"\0")
                _, _, rest = rest.partition(b"\0")
                value = (_inflate(rest) if compressed else rest).decode("utf-8", "replace")
        except (zlib.error, ValueError):
            continue
        texts.setdefault(key.decode("latin-1"), value)
    return texts


def _inflate(data: bytes) -> bytes:
    """zlib data unpacked up to MAX_TEXT bytes (a small chunk may unpack to gigabytes)."""
    import zlib

    out = zlib.decompressobj().decompress(data, MAX_TEXT)
    if len(out) >= MAX_TEXT:
        raise ValueError("text chunk too large")
    return out


def _texts(path: Path) -> tuple[str | bytes | None, str | None]:
    """(the kandinsky JSON, the AUTOMATIC1111 text) of an image, without decoding its pixels or importing
    torch: PNG text chunks, or the EXIF user comment of JPEG and WebP files (read with the header)."""
    texts = png_text(path)
    if texts is not None:
        return texts.get(JSON_KEY), texts.get(A1111_KEY)
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # the header only
                return image.getexif().get(USER_COMMENT), image.info.get(A1111_KEY)
    except Image.DecompressionBombError:
        raise KandinskyError(f"{path} is too large to open safely (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise KandinskyError(f"{path} cannot be read as an image") from None


def read(path: Path) -> dict:
    """The JSON metadata of an image made by kandinsky; a one-line error if there is none."""
    raw, _ = _texts(path)
    if not raw:
        raise KandinskyError(f"{path} carries no kandinsky metadata (was it made by kandinsky, and not re-saved?)")
    try:
        meta = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
    except (json.JSONDecodeError, RecursionError):
        raise KandinskyError(f"{path}: its kandinsky metadata is damaged") from None
    if not isinstance(meta, dict):
        raise KandinskyError(f"{path}: its kandinsky metadata is damaged (not a JSON object)")
    if not isinstance(meta.get("format", 0), int) or meta.get("format", 0) > FORMAT:
        raise KandinskyError(f"{path} was made by a newer kandinsky (metadata format {meta['format']}): update")
    return meta


def parameters(path: Path) -> str | None:
    return _texts(path)[1]
