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
