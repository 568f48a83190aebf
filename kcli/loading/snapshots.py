"""kandinsky's hub cache on disk: where it is, what a snapshot holds, and whether its bytes are still right.

Layout: ``cache_dir()`` (``<home>/hub``) is a huggingface_hub cache (``models--org--name/{blobs,snapshots,
refs}``, one blob per ETag, snapshots of symlinks), so the hub's own tools can read it. Next to it each
repository folder holds ``kandinsky.json``: per commit, the files a fetch completed, with size, ETag and the
mtime at which their bytes were last hashed and found right. A snapshot counts as cached only when that
record lists every file it needs; a file whose mtime moved is hashed again on its next use.

Imports nothing else from kcli but the loading layer, and never prints: ``Progress`` callbacks report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kcli.loading.registry import RepoSpec

MANIFEST = "kandinsky.json"


CHUNK = 1 << 20


class Progress:
    """What a fetch reports; the command line draws it. Each method is a no-op here."""

    def planned(self, what: str, files: int, todo: int, cached: int, folder: Path) -> None:
        """Before any byte moves: ``files`` files, ``todo`` bytes to fetch, ``cached`` bytes already here."""

    def started(self, name: str, size: int, done: int) -> None:
        """A file starts (``done`` > 0: resumed from a partial download)."""

    def advanced(self, name: str, done: int) -> None:
        """``done`` bytes of the file are in."""

    def finished(self, name: str) -> None:
        """The file is complete and checked."""


def cache_dir() -> Path:
    """Where checkpoints live: ``$KANDINSKY_HOME/hub``, by default under the platform's cache folder."""
    from kcli.loading.cache import home  # the one place that decides where kandinsky keeps things

    return home() / "hub"


def repo_folder(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


@dataclass(frozen=True)
class Remote:
    """One file as the hub lists it at a commit."""

    path: str
    size: int
    etag: str  # sha256 for LFS files, git blob sha1 otherwise
    lfs: bool


@dataclass
class Cached:
    """The state of one repository in the cache."""

    repo: RepoSpec
    commit: str | None = None
    snapshot: Path | None = None  # set when every needed file is present with the right size
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # present with the wrong size
    changed: list[str] = field(default_factory=list)  # rewritten on disk since downloaded, hash now wrong

    @property
    def complete(self) -> bool:
        return self.snapshot is not None


def _read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_manifest(folder: Path, commit: str, files: list[Remote], checked: dict[str, int]) -> None:
    """Record a snapshot's files; ``checked[path]`` is the mtime (ns) of the bytes last hashed and found
    right, so a file is hashed again only when something rewrote it (see ``recheck``)."""
    data = _read_manifest(folder)
    data[commit] = {"files": {f.path: {"size": f.size, "etag": f.etag, "lfs": f.lfs,
                                       **({"checked": checked[f.path]} if f.path in checked else {})}
                              for f in files}}
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


def hasher(f: Remote):
    if f.lfs:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % f.size)  # git's blob id: the hub's ETag of a file kept in git
    return h


def file_digest(path: Path, f: Remote, on_bytes=None) -> str:
    h = hasher(f)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 8):
            h.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(done)
    return h.hexdigest()


def mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _remote(path: str, entry: dict) -> Remote:
    return Remote(path, int(entry["size"]), entry["etag"], bool(entry["lfs"]))


def _restamp(folder: Path, commit: str, recorded: dict, stamps: dict[str, int], drop=()) -> None:
    """Rewrite a snapshot's record with new ``checked`` stamps, without the files in ``drop``."""
    files = [_remote(p, e) for p, e in recorded.items() if p not in drop]
    checked = {p: e["checked"] for p, e in recorded.items() if "checked" in e and p not in drop}
    write_manifest(folder, commit, files, checked | stamps)


def _discard(pointer: Path, blob: Path) -> None:
    for p in (pointer, blob):
        if p.is_symlink() or p.exists():
            p.unlink()


def recheck(state: Cached, progress: Progress) -> list[str]:
    """Hash the files of a complete snapshot that were rewritten since they were last found right (their
    mtime moved), or never hashed (a cache from an older kandinsky). A file that no longer matches is
    removed and the snapshot marked incomplete, so an online run fetches it again. Returns those files,
    also kept in ``state.changed``."""
    folder = repo_folder(state.repo.id)
    recorded = recorded_files(state.repo, state.commit)
    bad, stamps = [], {}
    for path, entry in recorded.items():
        pointer = state.snapshot / path
        stamp = mtime(pointer)
        if stamp is None or entry.get("checked") == stamp:
            continue
        remote = _remote(path, entry)
        name = f"{state.repo.id.split('/')[-1]}/{path} (changed on disk: checking)"
        progress.started(name, remote.size, 0)
        digest = file_digest(pointer, remote, lambda done, name=name: progress.advanced(name, done))
        progress.finished(name)
        if digest == remote.etag:
            stamps[path] = stamp
            continue
        bad.append(path)
        _discard(pointer, folder / "blobs" / remote.etag)
    if stamps or bad:
        _restamp(folder, state.commit, recorded, stamps, drop=bad)
    if bad:
        state.snapshot, state.changed = None, bad
    return bad


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
    checks, stamps = [], {}
    for path, spec in wanted.items():
        entry = recorded.get(path)
        pointer = folder / "snapshots" / state.commit / path
        if entry is None or not pointer.exists():
            checks.append(Check(repo, path, False, "missing"))
            continue
        remote = _remote(path, entry)
        name = f"{repo.id.split('/')[-1]}/{path}"
        progress.started(name, remote.size, 0)
        try:
            size = pointer.stat().st_size
            digest = file_digest(pointer, remote, lambda done, name=name: progress.advanced(name, done)) \
                if size == remote.size else ""
            reason = ""
        except OSError as e:
            size, digest, reason = -1, "", first_line(e)
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
            stamps[path] = mtime(pointer)
            continue
        checks.append(Check(repo, path, False, reason))
        if repair:
            _discard(pointer, folder / "blobs" / remote.etag)
    if stamps:  # what was found right needs no hashing on its next use
        _restamp(folder, state.commit, recorded, stamps)
    return checks


def human_size(n: float) -> str:
    """Sizes as the hub shows them: SI units, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def blob_ok(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False
