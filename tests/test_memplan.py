"""Choosing a memory level: never one whose estimated cold peak (with the margin) exceeds the VRAM given."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kcli.pipelines.memplan import ORDER, LevelPeak, estimate, pick
from kcli.pipelines.memsim import Configs
from kcli.pipelines.memtrack import GiB

# 2.2, fp16, 1024 px, as the tracker measured them (docs/benchmarks.md, section "memory")
TABLE = {"high": LevelPeak(int(9.24 * GiB), int(6.31 * GiB)), "balanced": LevelPeak(int(3.45 * GiB), int(3.21 * GiB)),
         "low": LevelPeak(int(0.52 * GiB), int(0.52 * GiB)), "min": LevelPeak(int(0.52 * GiB), int(0.52 * GiB))}
ODD = {"high": LevelPeak(8 * GiB, 5 * GiB), "balanced": LevelPeak(9 * GiB, 9 * GiB),  # not monotonic
       "low": LevelPeak(GiB, GiB), "min": LevelPeak(2 * GiB, GiB)}


@pytest.mark.parametrize("table", [TABLE, ODD], ids=["measured", "unordered"])
def test_auto_never_picks_a_level_whose_estimate_exceeds_the_vram(table):
    for free in range(0, 20 * GiB, 32 * 2**20):
        level = pick(table, free)
        if level is None:
            assert all(p.needs() > free for p in table.values()), free
            continue
        assert table[level].needs() <= free
        assert table[level].cold < free  # the cold peak itself, not the warm one, is what must fit
        higher = ORDER[:ORDER.index(level)]
        assert all(table[h].needs() > free for h in higher), (free, level)  # and it is the highest that fits


def test_the_margin_separates_an_exact_fit_from_a_fit():
    assert pick(TABLE, TABLE["high"].cold) == "balanced"  # a plan with nothing to spare fails on a GPU
    assert pick(TABLE, TABLE["high"].needs()) == "high"
    assert pick(TABLE, 0) is None


def test_estimates_come_from_the_tracker_on_the_real_configs():
    peaks = estimate(Configs.from_folder(Path(__file__).parent / "data" / "configs"), size=512,
                     dtype=torch.float16, levels=("min",))
    cold, warm = peaks["min"].cold, peaks["min"].warm
    assert 0.1 * GiB < cold < 2.5 * GiB
    assert abs(warm - cold) < 0.01 * cold  # min peaks in the decode, when the zero embedding is long gone
