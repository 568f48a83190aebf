"""Checking what is cached: every file hashed against the checksum the hub gave when it was stored."""

from __future__ import annotations

from dataclasses import dataclass

from kcli.loading.download import Progress, file_digest, inspect, recorded_files, repo_folder
from kcli.loading.hubapi import Remote, _first_line
from kcli.loading.registry import RepoSpec


@dataclass
class Check:
    repo: RepoSpec
    path: str
    ok: bool
    reason: str = ""


def verify(repo: RepoSpec, progress: Progress | None = None, *, repair: bool = True) -> list[Check]:
    """Hash every cached file of ``repo`` against the hub's ETag it was stored under (and the registry's
    sha256 where it records one). With ``repair`` a file that fails is deleted, so a pull fetches it again."""
    progress = progress or Progress()
    state = inspect(repo)
    if state.commit is None:
        return [Check(repo, "(everything)", False, "not in the cache")]
    recorded = recorded_files(repo, state.commit)
    wanted = {f.path: f for f in repo.files} if repo.files is not None else {p: None for p in recorded}
    folder = repo_folder(repo.id)
    checks = []
    for path, spec in wanted.items():
        entry = recorded.get(path)
        pointer = folder / "snapshots" / state.commit / path
        if entry is None or not pointer.exists():
            checks.append(Check(repo, path, False, "missing"))
            continue
        remote = Remote(path, int(entry["size"]), entry["etag"], bool(entry["lfs"]))
        name = f"{repo.id.split('/')[-1]}/{path}"
        progress.started(name, remote.size, 0)
        try:
            size = pointer.stat().st_size
            digest = file_digest(pointer, remote, lambda done, name=name: progress.advanced(name, done)) \
                if size == remote.size else ""
            reason = ""
        except OSError as e:
            size, digest, reason = -1, "", _first_line(e)
        progress.finished(name)
        if reason:
            pass  # unreadable
        elif size != remote.size:
            reason = f"{size} bytes, expected {remote.size}"
        elif digest != remote.etag:
            reason = f"{'sha256' if remote.lfs else 'git sha1'} {digest}, expected {remote.etag}"
        elif spec is not None and spec.sha256 is not None and digest != spec.sha256:
            reason = f"sha256 {digest}, the registry records {spec.sha256}"
        if not reason:
            checks.append(Check(repo, path, True))
            continue
        checks.append(Check(repo, path, False, reason))
        if repair:
            for p in (pointer, folder / "blobs" / remote.etag):
                if p.is_symlink() or p.exists():
                    p.unlink()
    return checks
