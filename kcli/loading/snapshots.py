"""The cache on disk, in the Hugging Face layout: where a repository lives, which commit and files it holds
(kandinsky's manifest records the hub's listing at download time), whether they are complete, its size."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kcli.loading.hubapi import Remote
from kcli.loading.registry import RepoSpec

MANIFEST = "kandinsky.json"


def cache_dir() -> Path:
    """Where checkpoints live: ``$KANDINSKY_HOME/hub``, by default under the platform's cache folder."""
    from kcli.loading.cache import home  # the one place that decides where kandinsky keeps things

    return home() / "hub"


def repo_folder(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


# ---- what is cached ------------------------------------------------------------------------------------


@dataclass
class Cached:
    """The state of one repository in the cache."""

    repo: RepoSpec
    commit: str | None = None
    snapshot: Path | None = None  # set when every needed file is present with the right size
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # present with the wrong size

    @property
    def complete(self) -> bool:
        return self.snapshot is not None


def _read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, commit: str, files: list[Remote]) -> None:
    data = _read_manifest(folder)
    data[commit] = {"files": {f.path: {"size": f.size, "etag": f.etag, "lfs": f.lfs} for f in files}}
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)


def _commit_for(folder: Path, repo: RepoSpec) -> str | None:
    if repo.revision:
        return repo.revision
    try:
        return (folder / "refs" / repo.ref).read_text().strip() or None
    except OSError:
        return None


def recorded_files(repo: RepoSpec, commit: str) -> dict[str, dict]:
    return _read_manifest(repo_folder(repo.id)).get(commit, {}).get("files", {})


def inspect(repo: RepoSpec) -> Cached:
    """What the cache holds for ``repo``, from file sizes only (cheap: reads no weights)."""
    folder = repo_folder(repo.id)
    state = Cached(repo, _commit_for(folder, repo))
    if state.commit is None:
        state.missing = [f.path for f in repo.files or ()] or ["(everything)"]
        return state
    recorded = recorded_files(repo, state.commit)
    expected = {f.path: f.size for f in repo.files} if repo.files is not None else {
        p: e.get("size") for p, e in recorded.items()}
    if not expected:
        state.missing = ["(everything)"]
        return state
    snap = folder / "snapshots" / state.commit
    for path, size in expected.items():
        entry = recorded.get(path)
        target = snap / path
        if entry is None or not target.exists():
            state.missing.append(path)
        elif target.stat().st_size != entry.get("size") or (size is not None and size != entry.get("size")):
            state.damaged.append(path)
    if not state.missing and not state.damaged:
        state.snapshot = snap
    return state


def disk_usage(repo_id: str) -> int:
    """Bytes the repository's blobs (finished and partial) take."""
    blobs = repo_folder(repo_id) / "blobs"
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file()) if blobs.is_dir() else 0


def remove(repo_id: str) -> int:
    """Delete a repository from the cache; returns the bytes freed."""
    folder = repo_folder(repo_id)
    freed = disk_usage(repo_id)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.rmtree(cache_dir() / ".locks" / folder.name, ignore_errors=True)
    return freed
