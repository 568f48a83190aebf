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

import torch
from torch import nn

from kcli.errors import KandinskyError
from kcli.pipelines.offload import ModelOffload, Streamer


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

    def __init__(self, mode: str | Offload, device: torch.device):
        self.mode, self.device = Offload.parse(mode), torch.device(device)
        self._mover = ModelOffload(self.device)
        self._streamers: dict[nn.Module, Streamer] = {}

    @property
    def weights_device(self) -> torch.device:
        """Where models are loaded: the device itself, or (offloaded) CPU memory."""
        return self.device if self.mode is Offload.NONE else torch.device("cpu")

    @property
    def streamers(self) -> list[Streamer]:
        return list(self._streamers.values())

    def attach(self, module: nn.Module | None, *, streamed: bool = True) -> nn.Module | None:
        """Take charge of a freshly loaded model. ``streamed=False`` keeps a model whole under sequential
        offload (moved like ``model`` instead): code that reads its weights directly cannot be streamed."""
        if module is not None and self.mode is Offload.SEQUENTIAL and streamed:
            self._streamers[module] = Streamer(module, self.device)
        return module

    def attach_encoder(self, encoder):
        """Attach a text or image encoder wrapper's model. The wrappers tokenize inside ``forward``, so they
        are told where their inputs go (``exec_device``): the one place a model hears of a device, until the
        CLIP wrappers take their inputs' device from the caller."""
        encoder.exec_device = self.device
        self.attach(encoder.model)
        return encoder

    def release(self, module: nn.Module | None) -> None:
        """Let go of a model for good (its hooks removed, its device memory returned)."""
        streamer = self._streamers.pop(module, None) if module is not None else None
        if streamer is not None:
            streamer.remove()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def on(self, *modules: nn.Module | None):
        """The context in which ``modules`` run: on the device for its duration, when they live elsewhere."""
        if self.mode is Offload.MODEL:
            return self._mover.on(*modules)
        if self.mode is Offload.SEQUENTIAL:
            whole = [m for m in modules if m is not None and m not in self._streamers]
            return self._mover.on(*whole) if whole else contextlib.nullcontext()
        return contextlib.nullcontext()
