"""The known models by short name (``2.2``, ``2.1``): which hub repositories, at which commit, which files.

The data is ``weights/registry.toml`` (shipped inside the wheel as ``kcli/weights/registry.toml``);
``KANDINSKY_REGISTRY`` points to another file that replaces it. This module only parses and checks it:
fetching is ``kcli.loading.download``. It imports nothing else from kcli but the error types.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kcli.errors import KandinskyError

ENV = "KANDINSKY_REGISTRY"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PARTS = ("prior", "decoder", "inpaint", "depth")
OPTIONAL_PARTS = ("inpaint", "depth")  # a model may have no inpainting decoder; only 2.2-depth has a depth estimator


@dataclass(frozen=True)
class FileSpec:
    path: str  # inside the repository, with forward slashes
    size: int | None = None  # exact bytes, when known
    sha256: str | None = None  # the Git LFS object id, when known


@dataclass(frozen=True)
class RepoSpec:
    """One hub repository. ``files`` None means "choose from the hub's listing" (a hub id given by hand)."""

    id: str
    revision: str | None = None  # a pinned commit; None follows the main branch
    files: tuple[FileSpec, ...] | None = None
    layout: str = "diffusers"  # what to choose from the listing when files is None: diffusers | open_clip

    @property
    def ref(self) -> str:
        return self.revision or "main"

    @property
    def known_size(self) -> int:
        return sum(f.size or 0 for f in self.files or ())

    @property
    def sizes_complete(self) -> bool:
        return self.files is not None and all(f.size is not None for f in self.files)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    prior: RepoSpec
    decoder: RepoSpec  # text-to-image and image-to-image (for 2.2-depth: the ControlNet decoder)
    inpaint: RepoSpec | None = None  # None: the model cannot inpaint
    depth: RepoSpec | None = None  # the depth model (transformers) that --depth-from uses by default

    def repos(self, inpaint: bool = True) -> tuple[RepoSpec, ...]:
        """Every part (what `models pull` fetches); ``inpaint=False``: only what text-to-image needs."""
        parts = (self.prior, self.decoder, self.inpaint, self.depth) if inpaint else (self.prior, self.decoder)
        return tuple(p for p in parts if p is not None)


@dataclass(frozen=True)
class Registry:
    default: str
    models: dict[str, ModelSpec]
    source: Path

    def get(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise KandinskyError(f"unknown model {name!r}: known models are {', '.join(self.models)}")
        return self.models[name]


def registry_path() -> Path:
    """``$KANDINSKY_REGISTRY``, else the file in the source tree (checkouts, editable installs), else the
    copy inside the installed package."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    source = Path(__file__).resolve().parents[2] / "weights" / "registry.toml"
    if source.is_file():
        return source
    from importlib.resources import files

    try:
        return Path(str(files("kcli.weights") / "registry.toml"))
    except ModuleNotFoundError:
        return source  # reported as missing by load_registry


def load_registry(path: Path | None = None) -> Registry:
    return _load(path or registry_path())


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> Registry:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KandinskyError(f"the model registry {path} is missing (set {ENV} or reinstall kandinsky)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KandinskyError(f"the model registry {path} cannot be read: {e}") from None
    try:
        return parse(data, Path(path))
    except (KeyError, TypeError, ValueError) as e:
        raise KandinskyError(f"the model registry {path} is invalid: {e}") from None


def parse(data: dict, source: Path = Path("<registry>")) -> Registry:
    """Check everything a typo could break; raises ValueError/KeyError/TypeError with the culprit named."""
    repos = {repo_id: _repo(repo_id, entry) for repo_id, entry in data.get("repos", {}).items()}
    models = {}
    for name, entry in data["models"].items():
        parts = {}
        for part in PARTS:
            if part not in entry:
                if part in OPTIONAL_PARTS:
                    continue
                raise ValueError(f"model {name} has no {part} repository")
            repo_id = entry[part]
            if repo_id not in repos:
                raise ValueError(f"model {name}: {part} repository {repo_id} has no [repos] entry")
            parts[part] = repos[repo_id]
        models[str(name)] = ModelSpec(str(name), str(entry.get("description", "")), **parts)
    default = str(data.get("default", next(iter(models), "")))
    if default not in models:
        raise ValueError(f"default model {default!r} is not defined")
    return Registry(default, models, source)


def _repo(repo_id: str, entry: dict) -> RepoSpec:
    if not REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id (org/name)")
    revision = entry.get("revision")
    if revision is not None and not COMMIT.match(revision):
        raise ValueError(f"{repo_id}: revision {revision!r} is not a full 40-digit commit hash")
    files, seen = [], set()
    for item in entry["files"]:
        path, size, sha256 = item["path"], item.get("size"), item.get("sha256")
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path or path in seen:
            raise ValueError(f"{repo_id}: bad or repeated file path {path!r}")
        if pure.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise ValueError(f"{repo_id}: {path} is a pickle; only safetensors weights are fetched")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError(f"{repo_id}: {path}: size {size!r} is not a byte count")
        if sha256 is not None and not SHA256.match(sha256):
            raise ValueError(f"{repo_id}: {path}: sha256 {sha256!r} is not 64 hex digits")
        seen.add(path)
        files.append(FileSpec(path, size, sha256))
    stems = {f.path.removesuffix(".safetensors") for f in files if f.path.endswith(".safetensors")}
    if any(s.endswith(".fp16") and s.removesuffix(".fp16") in stems for s in stems):
        raise ValueError(f"{repo_id}: lists both the fp32 and the fp16 variant of the same weights")
    return RepoSpec(repo_id, revision, tuple(files))


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and not text.startswith((".", "/", "~"))
