"""Shared fixtures: tiny random checkpoints, written once per test session in the diffusers layout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tiny.py, oracle.py

CONFIGS = HERE / "data" / "configs"  # the real checkpoints' configs (from shared/reference), for meta builds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def prior22(ckpt_root) -> Path:
    import tiny

    return tiny.make_prior_22(ckpt_root / "kandinsky-2-2-prior")


@pytest.fixture(scope="session")
def decoder22(ckpt_root) -> Path:
    import tiny

    return tiny.make_decoder_22(ckpt_root / "kandinsky-2-2-decoder")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep the zero-embedding cache (and anything else kcli caches) out of the user's home."""
    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path_factory.getbasetemp() / "kandinsky-home"))


@pytest.fixture(scope="session")
def reference22(prior22, decoder22):
    """diffusers' KandinskyV22CombinedPipeline on the same files, loaded from disk."""
    import oracle

    return oracle.combined_22(prior22, decoder22)


@pytest.fixture(scope="session")
def inpaint22(ckpt_root) -> Path:
    import tiny

    return tiny.make_decoder_22(ckpt_root / "kandinsky-2-2-decoder-inpaint", in_channels=9,
                                scheduler=tiny.ddpm_scheduler_config(clip_sample=False))


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> dict:
    """Input files: a noisy 128x64 picture, a mask over part of it, an all-black and an all-white mask."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    files = {}
    picture = (rng.random((64, 128, 3)) * 255).astype(np.uint8)
    picture[:, :64] //= 2  # some structure, so CLIP and MoVQ see more than noise
    for name, array in {
        "picture": picture,
        "square": (rng.random((64, 64, 3)) * 255).astype(np.uint8),
        "mask": np.pad(np.full((32, 60), 255, np.uint8), ((0, 32), (40, 28))),
        "black": np.zeros((64, 128), np.uint8),
        "white": np.full((64, 128), 255, np.uint8),
    }.items():
        files[name] = folder / f"{name}.png"
        Image.fromarray(array).save(files[name])
    files["broken"] = folder / "broken.png"
    files["broken"].write_bytes(b"not a png at all")
    return files


@pytest.fixture(scope="session")
def prior21(ckpt_root) -> Path:
    import tiny

    return tiny.make_prior_21(ckpt_root / "kandinsky-2-1-prior")


@pytest.fixture(scope="session")
def decoder21(ckpt_root) -> Path:
    import tiny

    return tiny.make_decoder_21(ckpt_root / "kandinsky-2-1")


@pytest.fixture(scope="session")
def inpaint21(ckpt_root) -> Path:
    import tiny

    return tiny.make_decoder_21(ckpt_root / "kandinsky-2-1-inpaint", in_channels=9)


@pytest.fixture(scope="session")
def controlnet22(ckpt_root) -> Path:
    import tiny

    return tiny.make_controlnet_22(ckpt_root / "kandinsky-2-2-controlnet-depth")


@pytest.fixture(scope="session")
def depth_model(ckpt_root) -> Path:
    import tiny

    return tiny.make_depth_model(ckpt_root / "tiny-dpt")
