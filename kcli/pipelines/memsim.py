"""Peak device memory of one image at a memory level, measured without a GPU or any weights.

The real stages and the real ``Kandinsky`` run one text-to-image call, with full-size models built on the
``meta`` device from the checkpoints' configs (``configured``), under ``memtrack.DeviceMemory``. So the schedule
measured is the pipeline's own: which models are resident in which stage, the classifier-free-guidance batch of
2, the cold zero embedding (the image encoder loaded and run right after the prior, before the decoder loads, as
``Kandinsky.open`` does), the decode and its tiling. Steps do not change the peak, so one of each is run.
``memplan`` keeps these figures on disk, so a run plans from them in milliseconds after the first time.

What is simulated rather than run: loading (``configured``: the stages are built from meta modules, in the
loaders' dtypes and order), the zero-embedding cache and the tokenizers (``configured``), and the placement:
``SimPlacement`` stands in for ``placement.Placement``,
because meta weights cannot move between a host and a device. It has ``Placement``'s interface (attach,
attach_encoder, on, release) and tells the tracker what is resident:
offload ``none`` holds every model from its load until it is freed; ``model`` holds a stage's models inside
``on``; ``sequential`` runs the real ``Streamer``, whose per-block copies are the device allocations (dropped, as
``Placement`` drops them, when a stage ends), and holds the small tensors the streamer keeps on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from kcli.pipelines import memory
from kcli.pipelines.configured import Configs, ConfiguredDecoder, ConfiguredPrior
from kcli.pipelines.kandinsky import Kandinsky
from kcli.pipelines.memtrack import DeviceMemory
from kcli.pipelines.offload import Streamer
from kcli.pipelines.placement import Offload, Placement
from kcli.pipelines.requests import TextToImage
from kcli.pipelines.settings import Loading

META = torch.device("meta")
LEVELS = memory.SETTINGS  # memory level -> (offload, MoVQ tiling): what each level sets


def _maker(mem: DeviceMemory):
    def make(build, dtype: torch.dtype, channels_last: bool = False) -> nn.Module:
        """A module built on the tracked device as its loader builds it; weights made here are host weights."""
        with mem.host(), mem.device:
            module = build().to(dtype).eval().requires_grad_(False)
            return module.to(memory_format=torch.channels_last) if channels_last else module

    return make


class SimPlacement:
    """``placement.Placement`` for weights that stay on the tracked device (meta, or the CPU in tests), telling
    ``mem`` what would be resident (see the module docstring)."""

    def __init__(self, mode: str | Offload, mem: DeviceMemory):
        self.mode, self.mem, self.device = Offload.parse(mode), mem, mem.device
        self._streamers: dict[nn.Module, Streamer] = {}
        self._held: list[nn.Module] = []

    @property
    def weights_device(self) -> torch.device:
        return self.device

    @property
    def streamers(self) -> list[Streamer]:
        return list(self._streamers.values())

    def attach(self, module: nn.Module | None, *, streamed: bool = True) -> nn.Module | None:
        if module is None:
            return None
        if self.mode is Offload.NONE or (self.mode is Offload.SEQUENTIAL and not streamed):
            self.mem.hold(module)  # loaded onto the device, there until released
            self._held.append(module)
        elif self.mode is Offload.SEQUENTIAL:
            self._streamers[module] = Streamer(module, self.device)
            self.mem.hold(*self._streamers[module].kept)
        return module

    def attach_encoder(self, encoder):
        encoder.exec_device = self.device
        self.attach(encoder.model)
        return encoder

    def release(self, module: nn.Module | None) -> None:
        if module is None:
            return
        if any(m is module for m in self._held):
            self._held = [m for m in self._held if m is not module]
            self.mem.drop(module)
        streamer = self._streamers.pop(module, None)
        if streamer is not None:
            kept = streamer.kept
            streamer.remove()
            self.mem.drop(*kept)

    def on(self, *modules: nn.Module | None):
        if self.mode is Offload.SEQUENTIAL:  # as Placement: a stage's end drops its streamed copies
            return _Resident(self.mem, (), [self._streamers[m] for m in modules if m in self._streamers])
        return _Resident(self.mem, modules) if self.mode is Offload.MODEL else _Resident(self.mem, ())

    recovered = Placement.recovered  # the same recovery, on the simulated device

    def recover(self) -> None:
        for s in self._streamers.values():
            s.evict()

    def close(self) -> None:
        for s in self._streamers.values():
            s.remove()


class _Resident:
    def __init__(self, mem: DeviceMemory, modules, streamers=()):
        self.mem, self.modules, self.streamers = mem, [m for m in modules if m is not None], streamers

    def __enter__(self):
        self.mem.hold(*self.modules)

    def __exit__(self, *exc):
        self.mem.drop(*self.modules)
        for s in self.streamers:
            s.evict()


class _MetaTruth(TorchFunctionMode):
    """``bool(meta tensor)`` is True: transformers' XLM-R asks ``mask.all()`` to skip an all-ones padding mask,
    which the tokenizer stub's mask is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__bool__ and args[0].is_meta:
            return True
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class Peak:
    bytes: int
    stage: str  # where it was reached: load, prior, zero embed, decoder, decode
    stages: dict[str, int]  # the peak of each of them


def measure(configs: Configs, level: str, *, size: int | tuple[int, int] = 512, dtype: torch.dtype = torch.float16,
            cold: bool = True, tile: bool | None = None, batch: int = 1,
            device: str | torch.device = META) -> Peak:
    """Peak device bytes of one text-to-image call at ``level`` (``tile`` overrides the level's) making
    ``batch`` images of ``size`` pixels (a side, or (width, height); on the model's grid).

    The schedule is ``Kandinsky.open``'s: the zero embedding (cold: computed) right after the prior loads,
    before the decoder does. ``device`` "cpu" runs it for real (tiny configs only: it checks that the meta
    run measures what a real one does).
    """
    width, height = (size, size) if isinstance(size, int) else size
    offload, level_tile = LEVELS[level]
    mem = DeviceMemory(device)
    placement = SimPlacement(offload, mem)
    with mem, _MetaTruth():
        mem.label = "load"

        def label(stage: str) -> None:
            mem.label = stage

        make = _maker(mem)
        prior = ConfiguredPrior(configs, dtype, placement, make, cold, on_stage=label)
        prior.zero_embed()  # as Kandinsky.open: before the decoder is resident
        mem.label = "load"
        decoder = ConfiguredDecoder(configs, dtype, placement, make, on_stage=label)
        k = Kandinsky(prior, decoder, placement, dtype, Loading(tile=tile if tile is not None else level_tile))
        request = TextToImage("x", seed=0, width=width, height=height, steps=1, prior_steps=1, num_images=batch)
        for _ in k.run(request):
            pass
        placement.close()
    return Peak(mem.peak, mem.peak_label, dict(mem.peaks))
