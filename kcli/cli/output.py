"""Where images go: names that never leave the chosen folder, never overwrite by accident, and files
that appear whole or not at all (written to a temporary name, then renamed), metadata included."""

from __future__ import annotations

import os
import re
import secrets
import string
import time
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines.imagemeta import IMAGE_SUFFIXES

FIELDS = ("date", "time", "slug", "seed", "index")  # what --name templates may use


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe summary of a prompt: letters, digits and dashes only (no separators, no dots)."""
    s = re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-_")
    return (s[:limit].rstrip("-_") or "image")


def folder_of(output: Path | None) -> Path:
    if output is None:
        return Path.cwd()
    return output if output.is_dir() or not output.suffix else output.parent


def render_name(template: str, prompt: str, seed: int, index: int) -> str:
    """A file name from ``template``; it stays a plain name inside the chosen folder."""
    used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    if used - set(FIELDS):
        raise KandinskyError(f"--name: unknown field {{{sorted(used - set(FIELDS))[0]}}} (use {', '.join(FIELDS)})")
    now = time.localtime()
    name = template.format(date=time.strftime("%Y%m%d", now), time=time.strftime("%H%M%S", now), slug=slug(prompt),
                           seed=seed, index=index)
    if not name or "/" in name or "\\" in name or name.startswith(".") or os.sep in name:
        raise KandinskyError(f"--name {template!r} gives {name!r}: a name must stay inside the output folder")
    return name if Path(name).suffix.lower() in IMAGE_SUFFIXES else name + ".png"


def output_paths(output: Path | None, prompt: str, seeds: list[int], overwrite: bool,
                 template: str = "{slug}-{seed}") -> list[Path]:
    """One path per image. ``output`` is a file (a name per seed when several) or a folder: an existing one,
    or any path without a file suffix (created when the first image is saved)."""
    if output is None or output.is_dir() or not output.suffix:
        folder = folder_of(output)
        return [folder / render_name(template, prompt, s, i) for i, s in enumerate(seeds)]
    suffix = output.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise KandinskyError(f"{output}: unsupported image type {suffix} (use .png, .jpg or .webp)")
    names = [output.name] if len(seeds) == 1 else [f"{output.stem}-{s}{output.suffix}" for s in seeds]
    paths = [output.parent / n for n in names]
    if not overwrite:
        taken = [p for p in paths if p.exists()]
        if taken:
            raise KandinskyError(f"{taken[0]} already exists (use --overwrite to replace it)")
    return paths


def save_image(image, path: Path, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``image`` (with ``meta`` embedded) and return where it went: to a temporary name first, so a crash
    or Ctrl-C leaves no partial file, then onto ``path`` or, if that is taken, ``name-2``, ``name-3`` ...
    The name is claimed atomically, so runs writing into one folder at once never overwrite each other."""
    from kcli.pipelines import imagemeta as metadata

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_parts(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}-{_host()}.part")  # unique
        try:
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
            extra = metadata.save_kwargs(path, meta) if meta else {}
            image.save(tmp, format=fmt, **extra)
            if overwrite:
                os.replace(tmp, path)
                return path
            return _claim(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:  # a full disk, a read-only folder, a name too long ...
        raise KandinskyError(f"cannot write {path}: {e.strerror or e}") from None


def _claim(tmp: Path, path: Path) -> Path:
    """Give the finished file ``tmp`` the first free name among ``path``, ``name-2`` ...: a hard link fails
    rather than replace a file another process made meanwhile (where links are not supported, the name is
    taken with O_EXCL first, then filled)."""
    n, candidate = 2, path
    while True:
        try:
            try:
                os.link(tmp, candidate)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                try:
                    os.replace(tmp, candidate)
                except OSError:
                    candidate.unlink(missing_ok=True)
                    raise
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
            n += 1


_swept: set[Path] = set()


def _host() -> str:
    """This machine, in a part file's name: a folder shared by several machines (a cluster's) holds parts whose
    process ids mean nothing here."""
    import socket
    import zlib

    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def sweep_parts(folder: Path) -> None:
    """Delete the ``.NAME.PID-TOKEN-HOST.part`` files that processes of this machine which no longer run left in
    ``folder`` (killed while saving); once per folder and process."""
    if folder in _swept:
        return
    _swept.add(folder)
    for part in folder.glob(".*.part"):
        pid, *rest = part.name.rsplit(".", 2)[-2].split("-")
        if pid.isdigit() and rest[1:2] in ([], [_host()]) and not _alive(int(pid)):
            part.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would end the process: never sweep there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True
