"""Turn ``--prior`` / ``--decoder`` values into checkpoint folders: a local folder, or a hub repository id.

Hub repositories are fetched with ``huggingface_hub`` into its cache (resumable, file-locked, honouring
``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``); only configs, tokenizer files and safetensors
weights are fetched, never pickles.
"""

from __future__ import annotations

import re
from pathlib import Path

from kcli.loading.errors import CheckpointError

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEFAULT_INPAINT_DECODER = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(spec: str | Path, *, offline: bool = False) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a folder: point to a checkpoint folder in the diffusers layout")
        return path
    text = str(spec)
    if not REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text} does not exist (expected a checkpoint folder or a hub id like org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=FILES, local_files_only=offline))
    except RepositoryNotFoundError:
        raise CheckpointError(f"repository {text} was not found on the hub") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{text} is not in the cache and the hub cannot be reached (offline, or no network)"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"cannot fetch {text}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
