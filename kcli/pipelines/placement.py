"""Where weights live and where they run: one owner, one mode.

``Offload`` is the user's choice; a ``Placement`` carries it out for every model of a pipeline. Stages
hand it each model once (``attach``), wrap each piece of work in ``with placement.on(models...)``, and give
models back (``release``) when they are done with them for good. Models never learn where they run: the
placement alone moves them, streams them, or leaves them be. References: accelerate's offload hooks and
stable-diffusion.cpp's backend scheduler, which keep device decisions out of the model code.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gc
import traceback

import torch
from torch import nn

from kcli.errors import KandinskyError, OutOfDeviceMemory
from kcli.pipelines.offload import HostPins, ModelOffload, Streamer


class Offload(str, enum.Enum):
    NONE = "none"  # every model stays on the device
    MODEL = "model"  # one model on the device at a time, moved for its stage and back
    SEQUENTIAL = "sequential"  # weights streamed to the device block by block

    @classmethod
    def parse(cls, value: str | Offload) -> Offload:
        try:
            return cls(value)
        except ValueError:
            raise KandinskyError(f"unknown offload mode {value!r}: use {', '.join(m.value for m in cls)}") from None


class Placement:
    """Carries out one ``Offload`` mode on ``device`` for every model attached to it."""

    def __init__(self, mode: str | Offload, device: torch.device, pins: HostPins | None = None):
        """``pins``: how streamed weights are page-locked (default: CUDA's, on a CUDA device; none elsewhere)."""
        self.mode, self.device = Offload.parse(mode), torch.device(device)
        self.pins = pins if pins is not None else (HostPins() if self.device.type == "cuda" else None)
        self._mover = ModelOffload(self.device)
        self._streamers: dict[nn.Module, Streamer] = {}

    @property
    def weights_device(self) -> torch.device:
        """Where models are loaded: the device itself, or (offloaded) CPU memory."""
        return self.device if self.mode is Offload.NONE else torch.device("cpu")

    @property
    def streamers(self) -> list[Streamer]:
        """The models streamed now (a released one is no longer among them, nor pinned)."""
        return list(self._streamers.values())

    @property
    def pinned_bytes(self) -> int:
        """Host memory page-locked for streamed weights now."""
        return self.pins.pinned if self.pins is not None else 0

    def attach(self, module: nn.Module | None, *, streamed: bool = True) -> nn.Module | None:
        """Take charge of a freshly loaded model. ``streamed=False`` keeps a model whole under sequential
        offload (moved like ``model`` instead): code that reads its weights directly cannot be streamed."""
        if module is not None and self.mode is Offload.SEQUENTIAL and streamed:
            self._streamers[module] = Streamer(module, self.device, pins=self.pins)
        return module

    def attach_encoder(self, encoder):
        """Attach a text or image encoder wrapper's model. The wrappers tokenize inside ``forward``, so they
        are told where their inputs go (``exec_device``): the one place a model hears of a device, until the
        CLIP wrappers take their inputs' device from the caller."""
        encoder.exec_device = self.device
        self.attach(encoder.model)
        return encoder

    def release(self, module: nn.Module | None) -> None:
        """Let go of a model for good; its memory returns when the caller drops it. A streamed model loses its
        hooks and device copies and is unpinned (left whole in CPU memory, usable as a plain module)."""
        streamer = self._streamers.pop(module, None) if module is not None else None
        if streamer is not None:
            streamer.remove()
        self.empty_cache()

    def on(self, *modules: nn.Module | None):
        """The context in which ``modules`` run: on the device for its duration, when they live elsewhere.
        However it ends, what it put on the device leaves: moved models go back, streamed ones drop their
        copies (the prefetched block included)."""
        if self.mode is Offload.MODEL:
            return self._mover.on(*modules)
        if self.mode is Offload.SEQUENTIAL:
            return self._streaming([m for m in modules if m is not None])
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _streaming(self, modules: list[nn.Module]):
        whole = [m for m in modules if m not in self._streamers]
        try:
            with self._mover.on(*whole) if whole else contextlib.nullcontext():
                yield
        finally:
            for m in modules:
                if m in self._streamers:
                    self._streamers[m].evict()

    def recover(self) -> None:
        """After a failure (out of memory above all): every streamed block home, the allocator's cache emptied,
        so that the next job starts from what the models need at rest."""
        for streamer in self._streamers.values():
            streamer.evict()
        self.empty_cache()

    def recovered(self, work, *args):
        """``work(*args)``, after which nothing it put on the device stays, however it ends. Out of device
        memory, the failed stages' frames are cleared (their activations die with them), the cache is emptied,
        and it ends with ``OutOfDeviceMemory``, whose message carries the hint (and holds nothing of the failed
        work); the models stay usable for the next job."""
        try:
            return work(*args)
        except torch.OutOfMemoryError as e:
            traceback.clear_frames(e.__traceback__)
        except Exception:
            self.recover()
            raise
        gc.collect()  # outside the except clause: the error, its traceback and its frames are gone
        self.recover()
        raise OutOfDeviceMemory()

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def recovering(run):
    """Decorates a generator method of an object with a ``placement`` (``Kandinsky.run``): however a job ends,
    nothing it put on the device stays. Out of device memory, the failed stages' frames are cleared (their
    activations die with them), the cache is emptied, and the job ends with ``OutOfDeviceMemory``, whose
    message carries the hint; the object stays usable for the next job."""

    @functools.wraps(run)
    def guarded(self, *args, **kwargs):
        try:
            yield from run(self, *args, **kwargs)
            return
        except torch.OutOfMemoryError as e:
            traceback.clear_frames(e.__traceback__)
        except Exception:
            self.placement.recover()
            raise
        gc.collect()  # outside the except clause: the error, its traceback and its frames are gone
        self.placement.recover()
        raise OutOfDeviceMemory()

    return guarded
