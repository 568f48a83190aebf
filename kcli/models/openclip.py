"""An ``open_clip_torch`` CLIP model as a scorer: pictures and texts -> unit-length embeddings.

open_clip is an optional dependency (the ``[score]`` extra: ``pip install -e ".[score]"`` in a checkout): it brings torchvision, whose
wheels pin one exact torch build. It is imported only here, and only when a scorer is loaded.

Models are named as open_clip names them, ``ARCH/TAG`` (``ViT-L-14/openai``, the default; ``kandinsky score
--list-models`` shows them all), or ``hf-hub:org/name`` / ``org/name`` for a hub repository in open_clip's
layout, or a local folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors``. Hub files
come through kandinsky's own cache (``kcli.loading.download``: resumable, checked, usable offline), only
the safetensors weights, never a pickle; open_clip then builds the model from the config and
``load_checkpoint`` fills it from the safetensors file.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading.registry import RepoSpec, is_repo_id

DEFAULT = "ViT-L-14/openai"
CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# kandinsky is installed from a checkout (it is not on the package index under its project name)
INSTALL = 'pip install -e ".[score]" in the kandinsky checkout, or pip install open_clip_torch'
INSTALL_HINT = f"scoring with open_clip needs the open_clip_torch package: {INSTALL}"


def import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise KandinskyError(f"{INSTALL_HINT} ({e})") from None
    except Exception as e:  # noqa: BLE001 -- typically torchvision built for another torch than the one installed
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise KandinskyError(f"open_clip cannot be imported ({type(e).__name__}: {first}): torchvision must match "
                             f"torch; reinstall both ({INSTALL})") from None
    logging.getLogger("open_clip").setLevel(logging.ERROR)
    return open_clip


@dataclass(frozen=True)
class Source:
    """Where a named model's files are: a hub repository to fetch, or a folder; ``arch``/``tag`` for open_clip's
    own names (their built-in config and preprocessing are used when the repository has no config)."""

    name: str
    repo: RepoSpec | None = None
    folder: Path | None = None
    arch: str | None = None
    tag_config: dict = field(default_factory=dict)


def locate(name: str) -> Source:
    """Parse a ``--clip-model`` value; a one-line error names what exists when it is wrong."""
    name = name.strip()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a folder (an open_clip model folder holds {CONFIG} and {WEIGHTS})")
        return Source(name, folder=path)
    if name.startswith("hf-hub:"):
        name = name.removeprefix("hf-hub:")
        if not is_repo_id(name):
            raise KandinskyError(f"{name!r} is not a hub repository id (org/name)")
        return Source(name, repo=RepoSpec(name, layout="open_clip"))
    open_clip = import_open_clip()
    arch, _, tag = name.replace(":", "/").partition("/")
    if arch in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            known = ", ".join(f"{arch}/{t}" for t in tags) or "none"
            raise KandinskyError(f"{name!r} names no pretrained {arch}: known are {known}")
        config = open_clip.get_pretrained_cfg(arch, tag)
        hub = (config.get("hf_hub") or "").strip("/")
        if not hub or hub.count("/") != 1:
            raise KandinskyError(f"{arch}/{tag} has no copy in open_clip's layout on the model hub, the only "
                                 "place kandinsky fetches from")
        return Source(f"{arch}/{tag}", repo=RepoSpec(hub, layout="open_clip"), arch=arch, tag_config=config)
    if is_repo_id(name) and "/" in name:
        return Source(name, repo=RepoSpec(name, layout="open_clip"))
    raise KandinskyError(f"unknown CLIP model {name!r}: give ARCH/TAG (e.g. {DEFAULT}; `kandinsky score "
                         "--list-models` shows them), a hub id org/name, or a folder")


@contextlib.contextmanager
def _no_init():
    """Skip the random initialisation of a model whose every weight is then loaded (strictly) from a file: it is
    most of open_clip's build time (2.4 s of 2.9 s for ViT-L/14 on a CPU)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


@contextlib.contextmanager
def _quiet():
    """open_clip logs to the root logger and warns freely; the CLI speaks for itself."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


class OpenCLIP(nn.Module):
    """``images(pictures)`` and ``texts(strings)`` give L2-normalised embeddings; their dot product is the score."""

    def __init__(self, model, preprocess, tokenizer, name: str):
        super().__init__()
        self.model, self.preprocess, self.tokenizer, self.name = model, preprocess, tokenizer, name

    @classmethod
    def load(cls, source: Source, folder: Path, *, device="cpu", dtype=torch.float32) -> OpenCLIP:
        """Build from ``folder`` (the fetched snapshot or the user's folder): its config if it has one, else
        open_clip's built-in config for ``source.arch`` with the pretrained tag's settings."""
        open_clip = import_open_clip()
        from open_clip.transform import PreprocessCfg, image_transform_v2

        weights = folder / WEIGHTS
        if not weights.is_file():
            found = sorted(folder.glob("*.safetensors"))
            if len(found) != 1:
                raise CheckpointError(f"{folder} has no {WEIGHTS}" if not found else
                                      f"{folder} has several .safetensors files: name one {WEIGHTS}")
            weights = found[0]
        try:
            with _quiet(), _no_init():
                if (folder / CONFIG).is_file():
                    spec = f"local-dir:{folder}"
                    model = open_clip.create_model(spec, load_weights=False, pretrained_text=False)
                elif source.arch is not None:
                    spec = source.arch
                    cfg = source.tag_config
                    keep = ("mean", "std", "interpolation", "resize_mode")
                    model = open_clip.create_model(
                        spec, load_weights=False, pretrained_text=False,
                        force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                        force_preprocess_cfg={k: cfg[k] for k in keep if k in cfg})
                else:
                    raise CheckpointError(f"{folder} has no {CONFIG}")
                open_clip.load_checkpoint(model, str(weights), strict=True)
                tokenizer = open_clip.get_tokenizer(spec)
        except (CheckpointError, KandinskyError):
            raise
        except Exception as e:  # open_clip raises RuntimeError, ValueError, KeyError ... for a bad folder
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load the CLIP model {source.name}: {msg[:300]}") from None
        preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return cls(model, preprocess, tokenizer, source.name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def images(self, pictures: list) -> torch.Tensor:
        """RGB PIL pictures -> (B, D) float32, unit length."""
        pixels = torch.stack([self.preprocess(p) for p in pictures]).to(self.device, self.dtype)
        return nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.inference_mode()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        """Strings -> (B, D) float32, unit length (truncated to the model's context, as open_clip does)."""
        tokens = self.tokenizer(prompts).to(self.device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)


def pretrained_names() -> list[str]:
    """Every ``ARCH/TAG`` of open_clip's table that has a copy on the model hub."""
    open_clip = import_open_clip()
    return [f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained()
            if (open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or "").strip("/").count("/") == 1]
