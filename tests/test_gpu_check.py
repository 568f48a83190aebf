"""benchmarks/gpu_check.py's logic, on the CPU with the tiny checkpoints' configs (the GPU run itself needs a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_level_runs_finite_and_agrees_with_random_weights(prior22, decoder22):
    gc = _gpu_check()
    configs = gc.Configs.from_checkpoints(prior22, decoder22)
    lines = []
    runs = gc.check(configs, device=torch.device("cpu"), sizes=[64], dtypes=["fp32"], levels=("balanced", "min"),
                    steps=2, prior_steps=2, compile=False, log=lines.append)  # model and sequential offload, tiles
    assert [r.level for r in runs] == ["balanced", "min"]
    for r in runs:
        assert r.finite and not r.problems, (r.level, r.problems)
        assert r.estimate["warm"] > 0 and r.estimate["cold"] > 0  # the tracker's figures, on the same configs
        assert r.allocated == {"cold": None, "warm": None}  # no CUDA counters on a CPU
        assert r.seconds_per_image > 0 and r.images_per_second > 0
    assert len(lines) == 2 and all(line.endswith("| yes |") for line in lines)


def test_the_same_model_class_gets_the_same_weights_on_every_build(prior22, decoder22):
    gc = _gpu_check()
    make = gc.random_maker(torch.device("cpu"), torch.device("cpu"))
    configs = gc.Configs.from_checkpoints(prior22, decoder22)
    from kcli.models.movq import MoVQ, MoVQConfig

    a, b = (make(lambda: MoVQ(MoVQConfig.from_dict(configs.movq)), torch.float32) for _ in range(2))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert any(x.std() > 0 for x in a.state_dict().values())


def test_agreement_names_the_image_that_differs():
    gc = _gpu_check()
    base = np.zeros((8, 8, 3), np.uint8)
    diffs = gc.agreement({"high": base, "low": base.copy(), "min": base + 10})
    assert diffs == {"low": 0.0, "min": 10.0}
