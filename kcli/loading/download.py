"""Fetch hub repositories into kandinsky's cache: resumable, file-locked, checked, with progress callbacks.

Layout: ``cache_dir()`` (``<home>/hub``) is a huggingface_hub cache (``models--org--name/{blobs,snapshots,
refs}``, one blob per ETag, snapshots of symlinks), so the hub's own tools can read it. Next to it each
repository folder holds ``kandinsky.json``: per commit, the files a fetch completed, with size and ETag.
A snapshot counts as cached only when that record lists every file it needs.

The bytes move through ``huggingface_hub``'s HTTP client, URLs, headers and errors (so ``HF_ENDPOINT``,
``HF_TOKEN``, proxies and ``HF_HUB_OFFLINE`` behave as with any hub tool), but with our own transfer loop:
huggingface_hub 2.x deletes a partial file when a download fails, while here ``blobs/<etag>.incomplete``
stays and the next run resumes it with a Range request. Each file is hashed as it arrives (sha256 for LFS
files, git's blob sha1 for the rest, which is what the hub's ETag is) and renamed into place only when it
matches, under the same lock file huggingface_hub uses.

The hub's HTTP side lives in ``hubapi.py``, the cache's layout in ``snapshots.py``, verification in
``checks.py``. This module imports nothing else from kcli but the loading layer and the errors, and never
prints: ``Progress`` callbacks report what happens.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kcli.errors import CheckpointError
from kcli.loading.hubapi import (  # noqa: F401 (the hub's side, re-exported for callers of download)
    HubUnreachable,
    NotCached,
    Remote,
    _first_line,
    _get_json,
    _hub_error,
    _listing,
    choose_files,
    choose_open_clip_files,
    endpoint,
    hub_offline,
)
from kcli.loading.registry import RepoSpec
from kcli.loading.snapshots import (  # noqa: F401 (the cache's side, re-exported for callers of download)
    Cached,
    _write_manifest,
    cache_dir,
    disk_usage,
    inspect,
    recorded_files,
    remove,
    repo_folder,
)
CHUNK = 1 << 20
RETRIES = 3  # attempts in a row that receive nothing before a download is given up (and kept for next time)


class DownloadInterrupted(CheckpointError):
    """The connection dropped for good in the middle of a file; its partial download is kept."""


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


# ---- talking to the hub --------------------------------------------------------------------------------


@dataclass
class Transfer:
    repo: RepoSpec
    commit: str
    files: list[Remote]

    @property
    def folder(self) -> Path:
        return repo_folder(self.repo.id)

    def blob(self, f: Remote) -> Path:
        return self.folder / "blobs" / f.etag

    def todo(self) -> list[Remote]:
        return [f for f in self.files if not _blob_ok(self.blob(f), f.size)]


def _blob_ok(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def transfer_for(repo: RepoSpec) -> Transfer:
    """Ask the hub what to fetch; a registry entry's files, sizes and sha256 must match what it lists."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        commit, listed = _listing(repo)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError, OSError) as e:
        raise _hub_error(e, repo) from None
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the hub's JSON
        raise CheckpointError(f"the hub at {endpoint()} sent an unreadable listing of {repo.id} "
                              f"({_first_line(e)}): is HF_ENDPOINT a hub?") from None
    if repo.files is None:
        if repo.layout == "open_clip":
            return Transfer(repo, commit, choose_open_clip_files(repo, listed))
        files = choose_files(listed)
        if not files:
            raise CheckpointError(f"{repo.id} has no configs or safetensors weights at revision {repo.ref}")
        return Transfer(repo, commit, files)
    files = []
    for spec in repo.files:
        remote = listed.get(spec.path)
        if remote is None:
            raise CheckpointError(f"{repo.id} has no file {spec.path} at revision {repo.ref}")
        if spec.size is not None and spec.size != remote.size:
            raise CheckpointError(f"{repo.id}/{spec.path} is {remote.size} bytes on the hub, the registry "
                                  f"says {spec.size}: refusing to fetch it")
        if spec.sha256 is not None and (not remote.lfs or remote.etag != spec.sha256):
            raise CheckpointError(f"{repo.id}/{spec.path} on the hub has sha256 {remote.etag}, the registry "
                                  f"says {spec.sha256}: refusing to fetch it")
        files.append(remote)
    return Transfer(repo, commit, files)


# ---- moving bytes --------------------------------------------------------------------------------------


def _hasher(f: Remote):
    if f.lfs:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % f.size)  # git's blob id: the hub's ETag of a file kept in git
    return h


def file_digest(path: Path, f: Remote, on_bytes=None) -> str:
    h = _hasher(f)
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 8):
            h.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(done)
    return h.hexdigest()


def _space_error(folder: Path) -> CheckpointError:
    return CheckpointError(f"no space left on the disk of {folder}: free some space and run the command "
                           "again (the partial download is kept and resumes)")


def _download(p: Transfer, f: Remote, progress: Progress) -> None:
    """Fetch one file into ``blobs/<etag>``, resuming ``blobs/<etag>.incomplete`` if a run left one."""
    import httpx2
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    blob = p.blob(f)
    part = blob.with_name(blob.name + ".incomplete")
    name = f"{p.repo.id.split('/')[-1]}/{f.path}"
    url = hf_hub_url(p.repo.id, f.path, revision=p.commit, endpoint=endpoint())
    headers = build_hf_headers()
    h = _hasher(f)
    done = part.stat().st_size if part.exists() else 0
    if done > f.size:
        part.unlink()
        done = 0
    if done:
        with open(part, "rb") as fh:  # the hash covers the bytes a previous run kept
            while chunk := fh.read(CHUNK * 8):
                h.update(chunk)
    progress.started(name, f.size, done)
    idle = 0
    while done < f.size:
        request_headers = {**headers, "Accept-Encoding": "identity"}
        if done:
            request_headers["Range"] = f"bytes={done}-"
        got = 0
        try:
            with get_session().stream("GET", url, headers=request_headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                hf_raise_for_status(r)
                if done and r.status_code != 206:  # the server ignored the range: start over
                    done, h = 0, _hasher(f)
                    part.unlink(missing_ok=True)
                with open(part, "ab") as out:
                    for chunk in r.iter_bytes():  # as the bytes arrive: a cut loses none of them
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        got += len(chunk)
                        progress.advanced(name, done)
        except HfHubHTTPError as e:
            raise _hub_error(e, p.repo, f.path) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _space_error(blob.parent) from None
            raise
        except httpx2.TransportError as e:
            idle = 0 if got else idle + 1
            if idle >= RETRIES:
                raise DownloadInterrupted(
                    f"the download of {p.repo.id}/{f.path} was interrupted at {human_size(done)} of {human_size(f.size)} "
                    f"({_first_line(e)}): run the command again to resume it") from None
            time.sleep(0.2 * idle)
            continue
        if not got and done < f.size:
            idle += 1
            if idle >= RETRIES:
                raise DownloadInterrupted(f"the hub sent nothing for {p.repo.id}/{f.path} at {human_size(done)} of "
                                          f"{human_size(f.size)}: run the command again to resume it")
    if done != f.size or h.hexdigest() != f.etag:
        part.unlink(missing_ok=True)
        raise CheckpointError(f"the download of {p.repo.id}/{f.path} does not match the hub's checksum "
                              f"({'sha256' if f.lfs else 'git sha1'} {f.etag}): it was deleted, run the command "
                              "again")
    os.replace(part, blob)
    progress.finished(name)


def _link(p: Transfer, f: Remote) -> None:
    """``snapshots/<commit>/<path>`` -> ``blobs/<etag>``: a relative symlink, else a hard link, else a copy."""
    pointer = p.folder / "snapshots" / p.commit / f.path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == p.blob(f).resolve():
            return
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(p.blob(f), pointer.parent), pointer)
    except OSError:
        try:
            os.link(p.blob(f), pointer)
        except OSError:
            shutil.copyfile(p.blob(f), pointer)


def _lock(p: Transfer, f: Remote):
    from huggingface_hub.utils import WeakFileLock

    lock = cache_dir() / ".locks" / p.folder.name / f"{f.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    return WeakFileLock(lock)


def _free_space(folder: Path) -> int:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 1 << 62


def execute(plans: list[Transfer], what: str, progress: Progress | None = None) -> None:
    """Download what the plans lack (reporting the total first), then link and record each snapshot."""
    progress = progress or Progress()
    todo = [(p, f) for p in plans for f in p.todo()]
    partial = sum(_partial_size(p, f) for p, f in todo)
    need = sum(f.size for _, f in todo)
    cached = sum(f.size for p in plans for f in p.files) - need + partial
    files = sum(len(p.files) for p in plans)
    if todo:
        progress.planned(what, files, need - partial, cached, cache_dir())
        free = _free_space(cache_dir())
        if need - partial > free:
            raise CheckpointError(f"not enough disk space in {cache_dir()}: the download needs "
                                  f"{human_size(need - partial)} and {human_size(free)} is free")
    for p in plans:
        (p.folder / "blobs").mkdir(parents=True, exist_ok=True)
        for f in p.files:
            if not _blob_ok(p.blob(f), f.size):
                with _lock(p, f):
                    if not _blob_ok(p.blob(f), f.size):  # another process may have fetched it meanwhile
                        p.blob(f).unlink(missing_ok=True)  # a damaged copy (wrong size)
                        try:
                            _download(p, f, progress)
                        except OSError as e:
                            if e.errno == errno.ENOSPC:
                                raise _space_error(p.folder) from None
                            raise CheckpointError(f"cannot write {p.blob(f)}: {_first_line(e)}") from None
            _link(p, f)
        if p.repo.ref != p.commit:
            (p.folder / "refs").mkdir(exist_ok=True)
            (p.folder / "refs" / p.repo.ref).write_text(p.commit)
        _write_manifest(p.folder, p.commit, p.files)


def _partial_size(p: Transfer, f: Remote) -> int:
    part = p.blob(f).with_name(f.etag + ".incomplete")
    return min(part.stat().st_size, f.size) if part.exists() else 0


def fetch(repos: list[RepoSpec], *, what: str, offline: bool = False, progress: Progress | None = None,
          hint=None) -> list[Path]:
    """The snapshot folder of each repository, downloading what the cache lacks (unless offline).

    ``what`` names the download for the user ("model 2.2", a repository id); ``hint(repo)`` is the whole
    message when, offline, something of ``repo`` is missing. A pinned, complete snapshot never touches the network; a
    repository that follows a branch is refreshed when the hub is reachable and used from the cache when
    it is not.
    """
    offline = offline or hub_offline()
    states = [inspect(repo) for repo in repos]
    if offline:
        for state in states:
            message = hint(state.repo) if hint else f"{state.repo.id} is not in the cache"
            if state.damaged:
                raise CheckpointError(f"the cached file {state.damaged[0]} of {state.repo.id} is damaged (its size "
                                      f"is wrong): {message.split(': ', 1)[-1]}")
            if not state.complete:
                raise NotCached(message)
        return [s.snapshot for s in states]
    plans: dict[int, Transfer] = {}
    for i, state in enumerate(states):
        if state.complete and state.repo.revision:
            continue
        try:
            plans[i] = transfer_for(state.repo)
        except HubUnreachable:
            if state.complete:
                continue  # a branch we cannot refresh: the cached snapshot will do
            raise
    execute(list(plans.values()), what, progress)
    return [plans[i].folder / "snapshots" / plans[i].commit if i in plans else s.snapshot
            for i, s in enumerate(states)]


def human_size(n: float) -> str:
    """Sizes as the hub shows them: SI units, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"
