"""Choosing a memory level: never one whose estimated cold peak (with the margin) exceeds the VRAM given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kcli.pipelines import memplan
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


# ---- plan: the levels measured on the real configs, whole and tiled, for the size and dtype asked ----

REAL = Path(__file__).parent / "data" / "configs"
VRAMS_GIB = (0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24)


@pytest.fixture(scope="module")
def real_configs():
    return Configs.from_folder(REAL)


def test_a_plan_never_exceeds_the_vram_and_takes_the_highest_level_that_fits(real_configs):
    size = (1024, 768)  # width and height, not a square
    for vram in VRAMS_GIB:
        free = int(vram * GiB)
        plan = memplan.plan(real_configs, sizes=[size], dtype=torch.float16, free=free)
        run = {"size": size, "dtype": torch.float16}
        if plan.fits:
            assert plan.peak.needs() <= free and plan.peak.cold < free, (vram, plan)
            assert plan.peak.warm <= plan.peak.cold * 1.01  # a warm run holds no more (the image encoder is gone)
            assert plan.peak.cold == memplan.peak(real_configs, plan.memory, tile=plan.tile, **run)[0]
        higher = ORDER[:ORDER.index(plan.memory)] if plan.fits else ORDER
        for level in higher:  # every faster level, whole or tiled, needs more than there is
            for tile in (False, True):
                cold = memplan.peak(real_configs, level, tile=tile, **run)[0]
                assert LevelPeak(cold, cold).needs() > free, (vram, level, tile, cold / GiB)


def test_tiles_are_chosen_where_they_make_a_level_fit(real_configs):
    size = {"sizes": [(768, 768)], "dtype": torch.float16}
    whole = memplan.peak(real_configs, "high", size=(768, 768), dtype=torch.float16, tile=False)
    assert whole[1] == "decode"  # high's peak at 768 px is the whole fp32 MoVQ decode beside every model
    assert LevelPeak(whole[0], whole[0]).needs() > 8 * GiB
    tight = memplan.plan(real_configs, free=8 * GiB, **size)
    assert (tight.memory, tight.offload, tight.tile, tight.tile_setting) == ("high", "none", True, True)
    assert tight.peak.cold < whole[0] - GiB
    roomy = memplan.plan(real_configs, free=16 * GiB, **size)
    assert (roomy.memory, roomy.tile, roomy.tile_setting) == ("high", False, None)  # high's own: whole below 1024
    small = memplan.plan(real_configs, free=int(0.8 * GiB), **size)
    assert (small.memory, small.tile) == ("min", True)  # low tiled is min


def test_figures_are_kept_on_disk_and_read_back(real_configs, tmp_path, monkeypatch):
    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path))
    monkeypatch.setattr(memplan, "_MEMO", {})
    run = {"size": (512, 512), "dtype": torch.float16, "tile": True}
    first = memplan.peak(real_configs, "min", **run)
    assert len(list((tmp_path / "memplan").glob("*.json"))) == 1
    monkeypatch.setattr(memplan, "_MEMO", {})

    def measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("kcli.pipelines.memsim.measure", measure)
    assert memplan.peak(real_configs, "low", **run) == first  # the same offload and tiles: the same figure
    other = dict(real_configs.unet, block_out_channels=[64, 128, 256, 512])
    with pytest.raises(AssertionError, match="measured again"):  # other configs: another key
        memplan.peak(dataclasses.replace(real_configs, unet=other), "min", **run)
