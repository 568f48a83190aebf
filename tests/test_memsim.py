"""The simulated run measures what a real run does: the same pipeline on the tiny checkpoints' configs, once on
the meta device and once for real on the CPU, peaks at the same bytes in the same stage."""

from __future__ import annotations

import pytest
import torch

from kcli.pipelines.memsim import Configs, measure


@pytest.mark.parametrize("level", ["high", "balanced", "min"])  # offload none, model, sequential with tiles
def test_a_meta_run_peaks_as_a_real_run_does(prior22, decoder22, level):
    configs = Configs.from_checkpoints(prior22, decoder22)
    real = measure(configs, level, size=64, dtype=torch.float32, cold=True, device="cpu")
    meta = measure(configs, level, size=64, dtype=torch.float32, cold=True)
    # the real run also counts a few kB of host-side tensors (token ids, schedules) that the meta run does not
    assert meta.bytes <= real.bytes <= meta.bytes * 1.01 + 16384, (real, meta)
    assert real.stage == meta.stage
    assert real.stages.keys() == meta.stages.keys() == {"load", "prior", "zero embed", "decoder", "decode"}
