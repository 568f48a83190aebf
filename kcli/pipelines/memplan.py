"""Choosing a memory level from measured peaks: the highest level whose cold-run peak fits the free memory.

``peaks`` measures one level's cold and warm peak for a size, dtype and batch with ``memsim`` (no weights
read), and keeps the figures in kandinsky's cache (``memplan/``, keyed by the configs, the run and
``SCHEDULE``), so a plan costs seconds the first time for a checkpoint and size, and milliseconds after.
``plan`` walks the levels from the fastest down, each whole then with its MoVQ in tiles, and takes the first
whose needs fit; ``pick`` is that choice over a table of figures, so it can be tested on any table:

    plan(Configs.from_checkpoints(prior, decoder), sizes=[(1024, 1024)], dtype=torch.float16,
         free=torch.cuda.mem_get_info()[0])

The cold peak is the one that counts: the first run for a checkpoint computes the zero-image embedding,
and a plan that only fits warm runs fails on that first run. The margin covers what the tracker does not
count: the caching allocator's rounding and fragmentation, cuDNN/cuBLAS workspaces, kernels' own scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

import kcli
from kcli.errors import CheckpointError, KandinskyError
from kcli.pipelines import tiling
from kcli.pipelines.memory import SETTINGS
from kcli.pipelines.memtrack import GiB

ORDER = tuple(SETTINGS)  # highest (fastest) first
MARGIN = 0.10  # share of the estimate added for what the tracker does not see
MARGIN_BYTES = GiB // 4  # and a fixed amount (workspaces)
SCHEDULE = 2  # the pipeline's schedule of what is resident when (bump when it changes: cached figures go stale)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
OFFLOAD_LEVEL = {"none": "high", "model": "balanced", "sequential": "low"}  # the level measured for an offload given


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


@dataclass(frozen=True)
class Plan:
    """What a run will hold on the device: a level, its offload and tiling, and the estimated peaks."""

    memory: str
    offload: str
    tile: bool  # the MoVQ decodes (and encodes) in tiles
    dtype: str
    width: int  # the largest picture planned for, on the model's grid
    height: int
    batch: int
    peak: LevelPeak
    free: int | None  # the bytes planned for (None: the CPU, nothing planned)
    tile_setting: bool | None = None  # what the run's ``tile`` becomes: the level's own (None: when large), or
                                      # what the user gave, or True where the plan needs tiles

    @property
    def fits(self) -> bool:
        return self.free is None or self.peak.needs() <= self.free

    def as_json(self) -> dict:
        return {"memory": self.memory, "offload": self.offload, "tile": self.tile, "dtype": self.dtype,
                "peak_bytes": {"cold": self.peak.cold, "warm": self.peak.warm}}

    def too_big(self) -> str:
        """The one line for a plan that does not fit: needed against available."""
        what = f"{self.width}x{self.height}" + (f" x{self.batch}" if self.batch > 1 else "")
        return (f"a {what} image needs {self.peak.needs() / GiB:.2f} GiB of GPU memory at --memory {self.memory} "
                f"({self.peak.cold / GiB:.2f} GiB cold peak + margin, {self.dtype}), but only "
                f"{self.free / GiB:.2f} GiB is available: make it smaller")


def _key(configs, level: str, tile: bool, width: int, height: int, dtype: torch.dtype, batch: int, cold: bool) -> str:
    text = json.dumps({"configs": dataclasses.asdict(configs), "offload": SETTINGS[level][0], "tile": tile,
                       "size": [width, height],
                       "dtype": str(dtype), "batch": batch, "cold": cold, "schedule": SCHEDULE,
                       "torch": torch.__version__, "kandinsky": kcli.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_MEMO: dict[str, tuple[int, str]] = {}


def peak(configs, level: str, *, size: tuple[int, int], dtype: torch.dtype, tile: bool, batch: int = 1,
         cold: bool = True, cached: bool = True) -> tuple[int, str]:
    """(bytes, stage) of one level's peak for ``batch`` images of ``size`` (width, height), cold or warm, from
    the cache when this run was measured before."""
    from kcli.loading.cache import home

    key = _key(configs, level, tile, *size, dtype, batch, cold)
    if cached and key in _MEMO:
        return _MEMO[key]
    path = home() / "memplan" / f"{key}.json"
    if cached:
        try:
            got = json.loads(path.read_text())
            _MEMO[key] = int(got["bytes"]), str(got["stage"])
            return _MEMO[key]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not measured yet, or a damaged entry: measured again
    from kcli.pipelines.memsim import measure

    try:
        found = measure(configs, level, size=size, dtype=dtype, cold=cold, tile=tile, batch=batch)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:  # a config the models cannot take
        if isinstance(e, KandinskyError):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot plan GPU memory from these checkpoints' configs: {first}") from None
    _MEMO[key] = found.bytes, found.stage
    try:  # best effort and atomic: a read-only cache only costs a measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"bytes": found.bytes, "stage": found.stage}))
        os.replace(tmp, path)
    except OSError:
        pass
    return _MEMO[key]


def peaks(configs, level: str, *, size: tuple[int, int], dtype: torch.dtype, tile: bool, batch: int = 1,
          cached: bool = True) -> LevelPeak:
    """One level's cold and warm peak (bytes); see ``peak``."""
    return LevelPeak(*(peak(configs, level, size=size, dtype=dtype, tile=tile, batch=batch, cold=cold,
                            cached=cached)[0] for cold in (True, False)))


def estimate(configs, *, size: int | tuple[int, int], dtype: torch.dtype, levels=ORDER,
             batch: int = 1) -> dict[str, LevelPeak]:
    """Each level's cold and warm peak for ``size`` (a side, or (width, height)) with the level's own tiling."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    return {level: peaks(configs, level, size=wh, dtype=dtype, tile=_tiles(SETTINGS[level][1], wh), batch=batch)
            for level in levels}


def _tiles(tile: bool | None, size: tuple[int, int], scale: int = 8) -> bool:
    """What the decoder does with ``tile``: None tiles pictures from AUTO_TILE_LATENT latent pixels on."""
    return tile if tile is not None else max(size) // scale >= tiling.AUTO_TILE_LATENT


def plan(configs, *, sizes: Sequence[tuple[int, int]], dtype: torch.dtype, free: int | None, level: str = "auto",
         offload: str | None = None, tile: bool | None = None, batch: int = 1) -> Plan:
    """The plan for the largest of ``sizes`` (pixels on the model's grid): ``level``, or with auto the highest
    level (each whole, then with its MoVQ in tiles) whose cold peak with the margin fits ``free`` bytes
    (``free`` None: the CPU, ``level`` as asked). ``offload`` and ``tile`` given by the user are kept; auto
    then only looks at the levels with that offload. A plan that fits nowhere is the last one tried:
    ``Plan.fits`` is False and ``Plan.too_big`` says why."""
    if not sizes:
        raise KandinskyError("nothing to plan for: no picture size")
    from kcli.pipelines.decoder import grid_step

    scale = 2 ** (len(configs.movq.get("block_out_channels", [0])) - 1)
    step = grid_step(len(configs.movq.get("block_out_channels", [0])), len(configs.unet.get("block_out_channels", [0])))
    width, height = max(((-(-w // step) * step, -(-h // step) * step) for w, h in sizes),
                        key=lambda wh: (wh[0] * wh[1], wh))
    if level == "auto":
        levels = [lv for lv in ORDER if offload is None or SETTINGS[lv][0] == offload] or ["low"]
    else:
        levels = [level]
    tried = None
    for lv in levels:
        measured = lv if offload is None or SETTINGS[lv][0] == offload else OFFLOAD_LEVEL[offload]
        own = _tiles(SETTINGS[lv][1] if tile is None else tile, (width, height), scale)
        later = [other for other in levels[levels.index(lv) + 1:] if SETTINGS[other][0] == SETTINGS[lv][0]]
        tiled = tile is None and free is not None and not later  # low tiled is min: tried as min
        for tiles in dict.fromkeys([own] + ([True] if tiled else [])):
            run = {"size": (width, height), "dtype": dtype, "tile": tiles, "batch": batch}
            cold, stage = peak(configs, measured, cold=True, **run)
            setting = tile if tile is not None else (SETTINGS[lv][1] if tiles == own else tiles)
            tried = Plan(lv, offload or SETTINGS[lv][0], tiles, DTYPE_NAMES.get(dtype, str(dtype)), width, height,
                         batch, LevelPeak(cold, cold), free, setting)
            if tried.fits:  # the warm figure only for the plan chosen
                warm = peak(configs, measured, cold=False, **run)[0]
                return dataclasses.replace(tried, peak=LevelPeak(cold, warm))
            if stage != "decode":
                break  # the peak is elsewhere: tiling the MoVQ cannot make this level fit
    return tried


def planner(configs_of, *, sizes: Sequence[tuple[int, int]], dtype: torch.dtype, batch: int = 1):
    """``memory.choose_memory``'s planner: ``(level, free, offload, tile) -> Plan`` for these sizes, with the
    configs read (``configs_of()``) only when a plan is made."""
    def make(level: str, free: int | None, offload: str | None, tile: bool | None) -> Plan:
        return plan(configs_of(), sizes=sizes, dtype=dtype, free=free, level=level, offload=offload, tile=tile,
                    batch=batch)

    return make
