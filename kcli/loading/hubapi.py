"""Talking to the hub (or an ``HF_ENDPOINT`` mirror): which commit, which files, and what to fetch.

Requests go through ``huggingface_hub``'s HTTP client, URLs, headers and errors (so ``HF_ENDPOINT``,
``HF_TOKEN``, proxies and ``HF_HUB_OFFLINE`` behave as with any hub tool). Nothing the hub sends is trusted
to name a place on disk: listings are checked entry by entry before a plan is made.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.registry import COMMIT, RepoSpec
from kcli.loading.snapshots import Remote, blob_ok, first_line, repo_folder

WANTED = (".json", ".txt", ".model", ".safetensors")  # configs, tokenizers, sentencepiece models, weights


ETAG = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # git blob sha1, or sha256 for LFS files


class NotCached(CheckpointError):
    """Offline, and the cache lacks something."""


class HubUnreachable(CheckpointError):
    """No answer from the hub (network down, wrong HF_ENDPOINT, proxy)."""


def hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_error(e: Exception, repo: RepoSpec, path: str | None = None) -> KandinskyError:
    """One line for everything the hub or the network can answer."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return CheckpointError(f"repository {repo.id} is gated: accept its terms on the hub and set HF_TOKEN")
    if isinstance(e, RepositoryNotFoundError):
        return CheckpointError(f"repository {repo.id} was not found on the hub at {endpoint()} "
                               "(a private repository needs HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return CheckpointError(f"revision {repo.ref} of {repo.id} was not found on the hub")
    if isinstance(e, RemoteEntryNotFoundError):
        return CheckpointError(f"{repo.id} has no file {path or '?'} at revision {repo.ref}")
    if isinstance(e, OfflineModeIsEnabled):
        return NotCached(f"{repo.id} is not in the cache and HF_HUB_OFFLINE forbids downloading it")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        return CheckpointError(f"the hub answered {status} for {repo.id}: {first_line(e)}")
    # the network is only needed for what the cache lacks, so --offline could not help here
    return HubUnreachable(f"cannot reach the hub at {endpoint()} ({first_line(e)}): check the network "
                          "(HF_ENDPOINT sets a mirror); the cache does not hold this yet")


def _get_json(url: str, params: dict | None = None):
    """GET a hub API url (no long retry loop: an unreachable hub should fail in seconds, not minutes)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers()
    for attempt in range(2):
        try:
            r = get_session().get(url, headers=headers, params=params, timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                  follow_redirects=True)
            hf_raise_for_status(r)
            return r
        except (httpx2.TimeoutException, httpx2.NetworkError):
            if attempt:
                raise
            time.sleep(0.5)


def _listing(repo: RepoSpec) -> tuple[str, dict[str, Remote]]:
    """The commit ``repo.ref`` points to, and every file of the repository at that commit.

    Everything the hub (or an ``HF_ENDPOINT`` mirror) sends is checked before it names anything on disk: the
    commit is 40 hex digits, every path is relative and normalised, every ETag a sha1 or sha256 and every size
    a byte count. One bad entry refuses the whole listing, naming it.
    """
    base = f"{endpoint()}/api/models/{repo.id}"
    commit = repo.revision
    if commit is None:
        commit = _get_json(f"{base}/revision/{quote(repo.ref, safe='')}").json()["sha"]
        if not isinstance(commit, str) or not COMMIT.match(commit):
            raise _hostile(repo, f"a revision {commit!r} that is not a 40-digit commit hash")
    files: dict[str, Remote] = {}
    url, params = f"{base}/tree/{commit}", {"recursive": "true"}
    while url:
        r = _get_json(url, params)
        for entry in r.json():
            if entry.get("type") == "file":
                remote = _remote(repo, entry)
                files[remote.path] = remote
        url, params = r.links.get("next", {}).get("url"), None
    return commit, files


def _remote(repo: RepoSpec, entry: dict) -> Remote:
    path, lfs, size = entry.get("path"), entry.get("lfs"), entry.get("size")
    if not safe_relative_path(path):
        raise _hostile(repo, f"the file path {path!r}")
    etag = lfs.get("oid") if isinstance(lfs, dict) else entry.get("oid")
    if not isinstance(etag, str) or not ETAG.match(etag):
        raise _hostile(repo, f"the checksum {etag!r} for {path}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _hostile(repo, f"the size {size!r} for {path}")
    return Remote(path, size, etag, bool(lfs))


def safe_relative_path(path) -> bool:
    """A path inside a repository: relative, forward slashes, no empty, ``.`` or ``..`` parts, no control
    characters. Such a path can only name something below the folder it is joined to."""
    if not isinstance(path, str) or not path or len(path) > 1000 or "\\" in path:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return False
    return not path.startswith("/") and all(part not in ("", ".", "..") for part in path.split("/"))


def _hostile(repo: RepoSpec, what: str) -> CheckpointError:
    return CheckpointError(f"the hub at {endpoint()} listed {what} in {repo.id}: refusing the whole listing "
                           "(is HF_ENDPOINT a hub you trust?)")


def choose_files(files: dict[str, Remote]) -> list[Remote]:
    """For a hub id given by hand: configs, tokenizer files and safetensors weights, never pickles; of an
    fp32/fp16 pair of weights only the fp32 file; other variants (ema, ...) never."""
    chosen = []
    for path, remote in sorted(files.items()):
        pure = PurePosixPath(path)
        if pure.suffix not in WANTED or any(part.startswith(".") for part in pure.parts):
            continue
        if pure.suffix == ".safetensors":
            stem = pure.name[: -len(".safetensors")]
            base, _, variant = stem.rpartition(".")
            if variant and base and "-of-" not in variant:  # name.variant.safetensors
                plain = str(pure.with_name(base + ".safetensors"))
                if variant != "fp16" or plain in files:
                    continue
        chosen.append(remote)
    return chosen


OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


OPEN_CLIP_FILES = ("open_clip_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def choose_open_clip_files(repo: RepoSpec, files: dict[str, Remote]) -> list[Remote]:
    """An open_clip repository holds its weights several times over (open_clip pickle and safetensors, timm
    formats): only the open_clip safetensors, its config and any tokenizer files are fetched."""
    if OPEN_CLIP_WEIGHTS not in files:
        raise CheckpointError(f"{repo.id} has no {OPEN_CLIP_WEIGHTS} at revision {repo.ref} (kandinsky loads "
                              "safetensors only, never pickled weights)")
    return [files[p] for p in (OPEN_CLIP_WEIGHTS, *OPEN_CLIP_FILES) if p in files]


@dataclass
class Plan:
    repo: RepoSpec
    commit: str
    files: list[Remote]

    @property
    def folder(self) -> Path:
        return repo_folder(self.repo.id)

    def blob(self, f: Remote) -> Path:
        return self.folder / "blobs" / f.etag

    def todo(self) -> list[Remote]:
        return [f for f in self.files if not blob_ok(self.blob(f), f.size)]


def plan(repo: RepoSpec) -> Plan:
    """Ask the hub what to fetch; a registry entry's files, sizes and sha256 must match what it lists."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        commit, listed = _listing(repo)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError, OSError) as e:
        raise hub_error(e, repo) from None
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the hub's JSON
        raise CheckpointError(f"the hub at {endpoint()} sent an unreadable listing of {repo.id} "
                              f"({first_line(e)}): is HF_ENDPOINT a hub?") from None
    if repo.files is None:
        if repo.layout == "open_clip":
            return Plan(repo, commit, choose_open_clip_files(repo, listed))
        files = choose_files(listed)
        if not files:
            raise CheckpointError(f"{repo.id} has no configs or safetensors weights at revision {repo.ref}")
        return Plan(repo, commit, files)
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
    return Plan(repo, commit, files)
