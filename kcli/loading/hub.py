"""Turn what the user named into checkpoint folders: a model of the registry (``--model 2.2``), a local
folder, or a hub repository id (``--prior`` / ``--decoder``).

Hub repositories are fetched by ``kcli.loading.download`` into kandinsky's cache. A repository that the
registry knows (``kandinsky-community/kandinsky-2-2-prior``) is fetched at the registry's pinned commit with
its listed files, however it was named; any other id gets configs, tokenizer files and safetensors weights
from its main branch, never pickles.
"""

from __future__ import annotations

from pathlib import Path

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.registry import ModelSpec, RepoSpec, is_repo_id, load_registry

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEFAULT_INPAINT_DECODER = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
DEPTH_MODEL = "2.2-depth"  # the registry model a hint picture selects when no model or decoder is named


def depth_model_of(model: str | None) -> str:
    """The depth model ``--depth-from`` uses unless ``--depth-model`` names one: the registry model's ``depth``
    part (``model``, else 2.2-depth), else transformers' own default."""
    registry = load_registry()
    spec = registry.models.get(model or DEPTH_MODEL)
    return spec.depth.id if spec is not None and spec.depth is not None else "Intel/dpt-large"


def pull_hint(name: str) -> str:
    return f"run `kandinsky models pull {name}`"


def not_cached_message(name: str) -> str:
    """What ``--offline`` says when something is missing, word for word."""
    kind = "model" if name in load_registry().models else "repository"
    return f"{kind} {name} is not in the cache: {pull_hint(name)}"


def repo_spec(repo_id: str) -> RepoSpec:
    """The registry's entry for a repository it knows, else a spec that follows the main branch."""
    for model in load_registry().models.values():
        for repo in model.repos():
            if repo.id == repo_id:
                return repo
    return RepoSpec(repo_id)


def owner(repo: RepoSpec) -> str:
    """The name to pull for this repository: its registry model, or the id itself."""
    for model in load_registry().models.values():
        if repo in model.repos():
            return model.name
    return repo.id


def target(name: str) -> tuple[str, ModelSpec | None, list[RepoSpec]]:
    """``models`` commands accept a registry name or a hub id: (label, the model if any, repositories)."""
    registry = load_registry()
    if name in registry.models:
        model = registry.get(name)
        return f"model {name}", model, list(model.repos())
    if is_repo_id(name):
        return name, None, [repo_spec(name)]
    raise KandinskyError(f"unknown model {name!r}: known models are {', '.join(registry.models)} "
                         "(or give a hub id like org/name)")


def _local(spec: str | Path) -> Path | None:
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a folder: point to a checkpoint folder in the diffusers layout")
        return path
    text = str(spec)
    if not is_repo_id(text):
        raise CheckpointError(f"{text} does not exist (expected a checkpoint folder or a hub id like org/name)")
    return None


def resolve(spec: str | Path, *, offline: bool = False, progress=None) -> Path:
    """One ``--prior`` / ``--decoder`` value: a local folder as is, a hub id fetched into the cache."""
    return resolve_many([spec], offline=offline, progress=progress)[0]


def resolve_many(specs: list[str | Path], *, offline: bool = False, progress=None) -> list[Path]:
    """Several values at once, so that one download is announced, with its total size, before it starts."""
    from kcli.loading import download

    out: list[Path | None] = [_local(s) for s in specs]
    hub = [(i, repo_spec(str(s))) for i, s in enumerate(specs) if out[i] is None]
    if hub:
        names = list(dict.fromkeys(owner(repo) for _, repo in hub))
        registry = load_registry()
        what = ", ".join(f"model {n}" if n in registry.models else n for n in names)
        paths = download.fetch([repo for _, repo in hub], what=what, offline=offline, progress=progress,
                               hint=lambda repo: not_cached_message(owner(repo)))
        for (i, _), path in zip(hub, paths):
            out[i] = path
    return out  # type: ignore[return-value]


def resolve_checkpoints(model: str | None = None, prior: str | None = None, decoder: str | None = None, *,
                        inpainting: bool = False, offline: bool = False, progress=None) -> tuple[Path, Path]:
    """The prior and decoder folders for a run. ``--model`` (default: the registry's default, 2.2) supplies
    whichever of ``--prior`` / ``--decoder`` is not given; ``inpainting`` picks the inpainting decoder."""
    prior, decoder = _named(model, prior, decoder, inpainting)
    prior_dir, decoder_dir = resolve_many([prior, decoder], offline=offline, progress=progress)
    return prior_dir, decoder_dir


def _named(model: str | None, prior: str | None, decoder: str | None, inpainting: bool) -> tuple[str, str]:
    if model is not None or prior is None or decoder is None:  # two local folders need no registry
        registry = load_registry()
        spec = registry.get(model or registry.default)
        if inpainting and decoder is None and spec.inpaint is None:
            raise KandinskyError(f"model {spec.name} has no inpainting decoder: use --model "
                                 f"{next(n for n, m in registry.models.items() if m.inpaint)} or --decoder")
        prior = prior or spec.prior.id
        decoder = decoder or (spec.inpaint.id if inpainting else spec.decoder.id)
    return prior, decoder


def config_folders(model: str | None = None, prior: str | None = None, decoder: str | None = None, *,
                   inpainting: bool = False) -> tuple[Path, Path]:
    """``resolve_checkpoints`` without a download, for plans that read configs only: local folders as they
    are, hub repositories from the cache's snapshot (complete or not: its config files are what is read)."""
    from kcli.loading.snapshots import inspect, repo_folder

    out = []
    for spec in _named(model, prior, decoder, inpainting):
        local = _local(spec)
        if local is None:
            repo = repo_spec(str(spec))
            commit = inspect(repo).commit
            local = repo_folder(repo.id) / "snapshots" / commit if commit else None
            if local is None or not local.is_dir():
                raise CheckpointError(f"the configs of {spec} are not in the cache: {pull_hint(owner(repo))} "
                                      "(or give --prior/--decoder folders)")
        out.append(local)
    return out[0], out[1]
