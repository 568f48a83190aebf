"""Choosing a memory level from measured peaks: the highest level whose cold-run peak fits the free memory.

``estimate`` measures each level's peak for a size and dtype with ``memsim`` (seconds per level on a CPU,
no weights read); ``pick`` is the pure choice over those figures, so it can be tested on any table:

    peaks = estimate(Configs.from_checkpoints(prior, decoder), size=1024, dtype=torch.float16)
    level = pick(peaks, free=torch.cuda.mem_get_info()[0])

The cold peak is the one that counts: the first run for a checkpoint computes the zero-image embedding,
and a plan that only fits warm runs fails on that first run. The margin covers what the tracker does not
count: the caching allocator's rounding and fragmentation, cuDNN/cuBLAS workspaces, kernels' own scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kcli.pipelines.memsim import LEVELS, Configs, measure
from kcli.pipelines.memtrack import GiB

ORDER = tuple(LEVELS)  # highest (fastest) first
MARGIN = 0.10  # share of the estimate added for what the tracker does not see
MARGIN_BYTES = GiB // 4  # and a fixed amount (workspaces)


@dataclass(frozen=True)
class LevelPeak:
    cold: int  # bytes: first run, the zero embedding computed
    warm: int  # bytes: the zero embedding cached

    def needs(self) -> int:
        """The free memory this level asks for: the cold peak with the margin."""
        return int(self.cold * (1 + MARGIN)) + MARGIN_BYTES


def pick(peaks: Mapping[str, LevelPeak], free: int) -> str | None:
    """The highest level in ``peaks`` whose needs fit ``free`` bytes; None when none does."""
    for level in ORDER:
        if level in peaks and peaks[level].needs() <= free:
            return level
    return None


def estimate(configs: Configs, *, size: int, dtype: torch.dtype, levels=ORDER) -> dict[str, LevelPeak]:
    """Each level's cold and warm peak for one ``size``x``size`` image in ``dtype``."""
    return {level: LevelPeak(measure(configs, level, size=size, dtype=dtype, cold=True).bytes,
                             measure(configs, level, size=size, dtype=dtype, cold=False).bytes)
            for level in levels}
