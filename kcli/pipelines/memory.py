"""``--memory auto|high|balanced|low|min``: one knob that picks offload and tiling for the GPU at hand.

| level    | offload    | MoVQ tiles | peak GPU memory (2.2, fp16, 512-1024 px; first run)      |
|----------|------------|------------|-----------------------------------------------------------|
| high     | none       | when large | 6.8 GiB at 512 px (every model; the image encoder before)|
| balanced | model      | when large | 3.5 GiB (the CLIP image encoder, then prior + text)      |
| low      | sequential | when large | 1.0 GiB at 512 px, 2.3 at 768 (the MoVQ decode)          |
| min      | sequential | always     | 0.3-0.5 GiB                                               |

Figures from the device-memory tracker (memtrack/memsim; docs/benchmarks.md has the table by size and dtype).

``auto`` plans with ``memplan``: the highest level whose cold-run peak (with a margin) fits the free memory,
for the size, dtype and batch asked, tiling the MoVQ where that makes a level fit. ``vram`` plans for a GPU
with that much free memory instead of asking the device. On the CPU there is no GPU memory to plan: weights
stay where they are and the dtype defaults to fp32.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kcli.errors import KandinskyError

LEVELS = ("auto", "high", "balanced", "low", "min")
SETTINGS = {"high": ("none", None), "balanced": ("model", None), "low": ("sequential", None),
            "min": ("sequential", True)}  # level -> (offload, MoVQ tiles: None = only large pictures)
NEEDS_GB = {"high": 10.5, "balanced": 4.5, "low": 3.0}  # without configs to plan from (doctor): the cold peak
                                                       # up to 1024 px in fp16, plus 10% and 0.25 GiB

_UNITS = {"": None, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str, what: str = "--vram") -> int:
    """Bytes from ``8GiB``, ``8G`` (binary), ``8GB`` or ``8000MB`` (decimal); anything else is one line."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise KandinskyError(f"{what}: give a size with a unit, e.g. 8GiB, 8G or 8000MB (got {text!r})")
    n = float(m.group(1)) * unit
    if not math.isfinite(n) or n < 2**20 or n > 2**50:
        raise KandinskyError(f"{what}: {text!r} is not a GPU's memory (between 1 MiB and 1 PiB)")
    return int(n)


@dataclass(frozen=True)
class MemoryChoice:
    level: str
    offload: str
    tile: bool | None  # None: tile only large pictures
    reason: str
    plan: object | None = None  # memplan.Plan when one was made (a GPU, or --vram)
    replan: Callable | None = None  # (width, height) -> memplan.Plan at this level, for a larger picture
    compile_fallback: bool = False  # auto picked sequential offload, --compile made it model offload

    def describe(self) -> str:
        """One line: ``memory balanced: offload model, whole MoVQ decode (5.1 GB free on ...)``."""
        tiles = {True: "tiled", False: "whole", None: "whole (tiled when large)"}[self.tile]
        peak = f", peak {self.plan.peak.cold / 2**30:.2f} GiB cold" if self.plan is not None else ""
        return f"memory {self.level}: offload {self.offload}, {tiles} MoVQ{peak} ({self.reason})"


def free_memory(device: torch.device, vram: str | int | None) -> tuple[int | None, str]:
    """The bytes to plan for and where they come from: ``vram``, a CUDA device's free memory, or none (CPU)."""
    if vram is not None:
        n = vram if isinstance(vram, int) else parse_size(vram)
        return n, f"{n / 2**30:.1f} GiB given by --vram"
    if device.type != "cuda":
        return None, "CPU: weights stay in RAM"
    free, _ = torch.cuda.mem_get_info(device)
    return free, f"{free / 2**30:.1f} GiB free on {torch.cuda.get_device_name(device)}"


def choose_memory(level: str, device: torch.device, *, planner: Callable | None = None, vram=None,
                  offload: str | None = None, tile: bool | None = None, compile: bool = False,
                  events=None) -> MemoryChoice:
    """The level, offload and tiling for a run. ``planner(level, free, offload, tile)`` makes a
    ``memplan.Plan`` from the checkpoints' configs and the sizes asked (see ``memplan.planner``); without
    one, auto reads a fixed table. ``compile`` with auto never picks sequential offload (the streamer's hooks
    swap weights under the compiled graph): model offload instead, with a note to ``events``."""
    if level not in LEVELS:
        raise KandinskyError(f"unknown memory level {level!r}: use {', '.join(LEVELS)}")
    free, reason = free_memory(device, vram)
    if free is None:  # the CPU: nothing to plan, weights stay in RAM
        plan = planner("high", None, offload or "none", tile) if planner is not None else None
        return MemoryChoice("high", offload or "none", tile, reason, plan)  # tile None: when large
    if level != "auto":
        reason = f"asked for; {reason}"
    if planner is not None:
        plan = planner(level, free, offload, tile)
        fallback = compile and level == "auto" and offload is None and plan.offload == "sequential"
        if fallback:
            plan = planner("balanced", free, "model", tile)
            if events is not None:
                events.note("--compile does not combine with sequential offload: memory balanced (model offload) "
                            "instead")
        return MemoryChoice(plan.memory, plan.offload, plan.tile_setting, reason, plan, compile_fallback=fallback)
    if level == "auto":
        level = next((lv for lv, need in NEEDS_GB.items() if free / 2**30 >= need), "min")
        if compile and SETTINGS[level][0] == "sequential" and offload is None:
            level = "balanced"
    level_offload, level_tile = SETTINGS[level]
    return MemoryChoice(level, offload or level_offload, level_tile if tile is None else tile, reason)


DEFAULT_SIZES = [(1024, 1024)]  # what a plan is made for when the sizes to come are not known


def plan_memory(load, device: torch.device, dtype: torch.dtype, prior_dir, decoder_dir, sizes=None, batch: int = 1,
                events=None) -> MemoryChoice:
    """``Kandinsky.open``'s choice for ``load`` (the ``Loading`` settings) and these checkpoints: planned from
    their configs for ``sizes`` on a GPU or with ``load.vram``; a plan that fits nowhere ends here, in one line."""
    from kcli.pipelines import memplan
    from kcli.pipelines.configured import Configs

    if load.vram is not None:
        parse_size(load.vram)  # checked on any device, so that a typo never passes silently
    configs = []

    def configs_of():
        if not configs:
            configs.append(Configs.from_checkpoints(prior_dir, decoder_dir))
        return configs[0]

    planned = device.type == "cuda"  # on the CPU a run keeps its weights in RAM: nothing to plan (nor --vram)
    sizes = sizes or DEFAULT_SIZES

    def choose(sizes):
        make = memplan.planner(configs_of, sizes=sizes, dtype=dtype, batch=batch) if planned else None
        return choose_memory(load.memory, device, planner=make, vram=load.vram if planned else None,
                             offload=load.offload, tile=load.tile, compile=load.compile, events=events)

    choice = choose(sizes)
    if choice.plan is not None and not choice.plan.fits and len(set(sizes)) > 1:
        smallest = min(sizes, key=lambda wh: wh[0] * wh[1])  # the larger jobs then end alone (check_plan)
        choice = choose([smallest])
    if choice.plan is not None and not choice.plan.fits:
        raise KandinskyError(too_big(choice))
    if choice.plan is not None:
        choice = dataclasses.replace(choice, replan=lambda size: memplan.plan(
            configs_of(), sizes=[size], dtype=dtype, free=choice.plan.free, level=choice.level,
            offload=choice.offload, tile=load.tile, batch=batch))
    return choice


def too_big(choice: MemoryChoice) -> str:
    """The one line for a plan that fits nowhere (needed against available)."""
    hint = "; --compile needs model offload: without it, sequential offload fits" if choice.compile_fallback else ""
    return choice.plan.too_big() + hint


def check_plan(choice: MemoryChoice | None, size: tuple[int, int]) -> None:
    """Before a request's work: a picture larger than the plan was made for must fit too, or end in one line."""
    plan = choice.plan if choice is not None else None
    if plan is None or plan.free is None or size[0] * size[1] <= plan.width * plan.height:
        return
    bigger = choice.replan(size)
    if not bigger.fits:
        raise KandinskyError(bigger.too_big())
