"""Where kandinsky keeps what it downloads or computes once: ``$KANDINSKY_HOME`` or the platform cache dir."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where tensors are read or written: `kandinsky models` stays fast
    import torch


def home() -> Path:
    env = os.environ.get("KANDINSKY_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kandinsky", appauthor=False))


def fingerprint(*paths: Path, extra: str = "") -> str:
    """A cheap identity for files: resolved path, size and modification time (never reads the bytes)."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def load_tensor(kind: str, key: str) -> "torch.Tensor | None":
    path = home() / kind / f"{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["tensor"]
    except Exception:  # a damaged cache entry is recomputed, never fatal
        return None


def save_tensor(kind: str, key: str, tensor: "torch.Tensor") -> None:
    """Best effort and atomic: a read-only or full cache only costs a recomputation next time."""
    from safetensors.torch import save_file

    folder = home() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        save_file({"tensor": tensor.detach().cpu().contiguous()}, str(tmp))
        os.replace(tmp, folder / f"{key}.safetensors")
    except OSError:
        pass
