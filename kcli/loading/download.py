"""Fetch hub repositories into kandinsky's cache: resumable, file-locked, checked, with progress callbacks.

The transfer loop is our own: huggingface_hub 2.x deletes a partial file when a download fails, while here
``blobs/<etag>.incomplete`` stays and the next run resumes it with a Range request. Each file is hashed as it
arrives (sha256 for LFS files, git's blob sha1 for the rest, which is what the hub's ETag is) and renamed into
place only when it matches, under the same lock file huggingface_hub uses. What is cached, and how it is
checked, is ``kcli.loading.snapshots``; what to fetch is ``kcli.loading.hubapi``.

This module imports nothing else from kcli but the loading layer, and never prints: ``Progress`` callbacks
report what happens.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

from kcli.errors import CheckpointError
from kcli.loading.hubapi import (  # noqa: F401  (choose_files, hub_offline: part of this module's interface)
    HubUnreachable,
    NotCached,
    Plan,
    choose_files,
    endpoint,
    hub_error,
    hub_offline,
    plan,
)
from kcli.loading.registry import RepoSpec
from kcli.loading.snapshots import (  # noqa: F401  (re-exported: the cache's interface for callers of fetch)
    CHUNK,
    Cached,
    Check,
    Progress,
    Remote,
    blob_ok,
    cache_dir,
    disk_usage,
    first_line,
    hasher,
    human_size,
    inspect,
    mtime,
    recheck,
    recorded_files,
    remove,
    repo_folder,
    verify,
    write_manifest,
)

RETRIES = 3  # attempts in a row that receive nothing before a download is given up (and kept for next time)


class DownloadInterrupted(CheckpointError):
    """The connection dropped for good in the middle of a file; its partial download is kept."""


def _space_error(folder: Path) -> CheckpointError:
    return CheckpointError(f"no space left on the disk of {folder}: free some space and run the command "
                           "again (the partial download is kept and resumes)")


def _download(p: Plan, f: Remote, progress: Progress) -> None:
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
    h = hasher(f)
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
                    done, h = 0, hasher(f)
                    part.unlink(missing_ok=True)
                with open(part, "ab") as out:
                    for chunk in r.iter_bytes():  # as the bytes arrive: a cut loses none of them
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        got += len(chunk)
                        progress.advanced(name, done)
        except HfHubHTTPError as e:
            raise hub_error(e, p.repo, f.path) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _space_error(blob.parent) from None
            raise
        except httpx2.TransportError as e:
            idle = 0 if got else idle + 1
            if idle >= RETRIES:
                raise DownloadInterrupted(
                    f"the download of {p.repo.id}/{f.path} was interrupted at {human_size(done)} of {human_size(f.size)} "
                    f"({first_line(e)}): run the command again to resume it") from None
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


def _link(p: Plan, f: Remote) -> Path:
    """``snapshots/<commit>/<path>`` -> ``blobs/<etag>``: a relative symlink, else a hard link, else a copy."""
    snapshot = p.folder / "snapshots" / p.commit
    pointer = snapshot / f.path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not _inside(pointer.parent, snapshot):  # the listing was checked; this guards the folders on disk
        raise CheckpointError(f"{pointer} would be written outside {snapshot}: refusing it")
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == p.blob(f).resolve():
            return pointer
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(p.blob(f), pointer.parent), pointer)
    except OSError:
        try:
            os.link(p.blob(f), pointer)
        except OSError:
            shutil.copyfile(p.blob(f), pointer)
    return pointer


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top


def _lock(p: Plan, f: Remote):
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


def execute(plans: list[Plan], what: str, progress: Progress | None = None) -> None:
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
        earlier = recorded_files(p.repo, p.commit)
        checked = {}
        for f in p.files:
            fresh = False
            if not blob_ok(p.blob(f), f.size):
                with _lock(p, f):
                    if not blob_ok(p.blob(f), f.size):  # another process may have fetched it meanwhile
                        p.blob(f).unlink(missing_ok=True)  # a damaged copy (wrong size)
                        try:
                            _download(p, f, progress)
                            fresh = True  # hashed as it arrived
                        except OSError as e:
                            if e.errno == errno.ENOSPC:
                                raise _space_error(p.folder) from None
                            raise CheckpointError(f"cannot write {p.blob(f)}: {first_line(e)}") from None
            stamp = mtime(_link(p, f))
            before = earlier.get(f.path, {})
            if fresh or (before.get("etag") == f.etag and before.get("checked") == stamp):
                checked[f.path] = stamp
        if p.repo.ref != p.commit:
            (p.folder / "refs").mkdir(exist_ok=True)
            (p.folder / "refs" / p.repo.ref).write_text(p.commit)
        write_manifest(p.folder, p.commit, p.files, checked)


def _partial_size(p: Plan, f: Remote) -> int:
    part = p.blob(f).with_name(f.etag + ".incomplete")
    return min(part.stat().st_size, f.size) if part.exists() else 0


def fetch(repos: list[RepoSpec], *, what: str, offline: bool = False, progress: Progress | None = None,
          hint=None) -> list[Path]:
    """The snapshot folder of each repository, downloading what the cache lacks (unless offline).

    ``what`` names the download for the user ("model 2.2", a repository id); ``hint(repo)`` is the whole
    message when, offline, something of ``repo`` is missing. A pinned, complete snapshot never touches the
    network (only its files rewritten since they were last checked are hashed again); a repository that
    follows a branch is refreshed when the hub is reachable and used from the cache when it is not.
    """
    offline = offline or hub_offline()
    progress = progress or Progress()
    states = [inspect(repo) for repo in repos]
    for state in states:
        if state.complete:
            recheck(state, progress)
    if offline:
        for state in states:
            message = hint(state.repo) if hint else f"{state.repo.id} is not in the cache"
            fix = message.split(": ", 1)[-1]
            if state.changed:
                raise CheckpointError(f"the cached file {state.changed[0]} of {state.repo.id} changed on disk since "
                                      f"it was downloaded and no longer matches its checksum (it was removed): {fix}")
            if state.damaged:
                raise CheckpointError(f"the cached file {state.damaged[0]} of {state.repo.id} is damaged (its size "
                                      f"is wrong): {fix}")
            if not state.complete:
                raise NotCached(message)
        return [s.snapshot for s in states]
    plans: dict[int, Plan] = {}
    for i, state in enumerate(states):
        if state.complete and state.repo.revision:
            continue
        try:
            plans[i] = plan(state.repo)
        except HubUnreachable:
            if state.complete:
                continue  # a branch we cannot refresh: the cached snapshot will do
            raise
    execute(list(plans.values()), what, progress)
    return [plans[i].folder / "snapshots" / plans[i].commit if i in plans else s.snapshot
            for i, s in enumerate(states)]
