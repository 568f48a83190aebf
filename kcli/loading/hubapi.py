"""The hub's HTTP API, as kandinsky uses it: where it is, a repository's file listing at a commit, which of
those files to fetch, and the hub's failures as one-line errors."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.registry import RepoSpec

WANTED = (".json", ".txt", ".model", ".safetensors")  # configs, tokenizers, sentencepiece models, weights


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


@dataclass(frozen=True)
class Remote:
    """One file as the hub lists it at a commit."""

    path: str
    size: int
    etag: str  # sha256 for LFS files, git blob sha1 otherwise
    lfs: bool


def _hub_error(e: Exception, repo: RepoSpec, path: str | None = None) -> KandinskyError:
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
        return CheckpointError(f"the hub answered {status} for {repo.id}: {_first_line(e)}")
    # the network is only needed for what the cache lacks, so --offline could not help here
    return HubUnreachable(f"cannot reach the hub at {endpoint()} ({_first_line(e)}): check the network "
                          "(HF_ENDPOINT sets a mirror); the cache does not hold this yet")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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
    """The commit ``repo.ref`` points to, and every file of the repository at that commit."""
    base = f"{endpoint()}/api/models/{repo.id}"
    commit = repo.revision
    if commit is None:
        commit = _get_json(f"{base}/revision/{quote(repo.ref, safe='')}").json()["sha"]
    files: dict[str, Remote] = {}
    url, params = f"{base}/tree/{commit}", {"recursive": "true"}
    while url:
        r = _get_json(url, params)
        for entry in r.json():
            if entry.get("type") == "file":
                lfs = entry.get("lfs")
                etag = lfs["oid"] if lfs else entry["oid"]
                files[entry["path"]] = Remote(entry["path"], int(entry["size"]), etag, bool(lfs))
        url, params = r.links.get("next", {}).get("url"), None
    return commit, files


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


