"""The checkpoints a server was started with, each loaded once and kept.

A checkpoint is a registry model (``--model 2.2``) or a prior and a decoder (``--prior P --decoder D``,
with ``--inpaint-decoder`` for inpaint and outpaint). Requests choose among these by name only
(``sd_model_checkpoint``, OpenAI's ``model``): no request ever names a path on the server. The decoders a
model needs (text to image, inpainting) are both kept once loaded, sharing one prior
(``Kandinsky.sibling``), so mixed requests never reload weights. Everything here runs on the worker thread.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from kcli.serve.errors import ApiError


@dataclass(frozen=True)
class Checkpoint:
    name: str
    model: str | None = None
    prior: str | None = None
    decoder: str | None = None
    inpaint_decoder: str | None = None  # with prior/decoder: the decoder inpaint and outpaint use

    def settings(self) -> dict:
        return {k: v for k, v in (("model", self.model), ("prior", self.prior), ("decoder", self.decoder))
                if v is not None}


class Models:
    def __init__(self, checkpoints: list[Checkpoint], load: dict, events=None):
        if not checkpoints:
            raise ApiError("no checkpoint to serve")
        self.checkpoints = {c.name: c for c in checkpoints}
        self.current = checkpoints[0].name
        self.load, self.events = load, events
        self.loads = {"models": 0, "decoders": 0}  # Kandinsky.open calls; decoders loaded beside a model
        self._open: dict[bool, object] = {}  # needs the inpainting decoder -> the model that has it

    def names(self) -> list[str]:
        return list(self.checkpoints)

    def check_name(self, name) -> str:
        if not isinstance(name, str) or name not in self.checkpoints:
            raise ApiError(f"unknown checkpoint {name!r}: this server has {', '.join(self.checkpoints)}", 404)
        return name

    def open(self):
        """The current checkpoint's model, loaded on first use."""
        if not self._open:
            from kcli.pipelines import Kandinsky

            c = self.checkpoints[self.current]
            k = Kandinsky.open(**c.settings(), **self.load, events=self.events)
            self.loads["models"] += 1
            self._open[k.decoder.is_inpainting] = k
        return next(iter(self._open.values()))

    def select(self, name: str) -> None:
        """Make ``name`` the current checkpoint, releasing the other's weights first."""
        self.check_name(name)
        if name == self.current:
            return
        self._open.clear()
        gc.collect()
        _empty_device_cache()
        self.current = name
        self.open()

    def for_request(self, request):
        """The model with the decoder ``request`` needs (its sibling is loaded once, when first needed)."""
        k = self.open()
        want = request.inpainting
        if want in self._open:
            return self._open[want]
        c = self.checkpoints[self.current]
        if c.model is None and c.decoder is not None and c.inpaint_decoder is None:
            return k  # a decoder named alone is used as is (the pipeline says when it does not fit)
        named = c.inpaint_decoder if want else c.decoder
        other = k.sibling(None if c.model is not None and c.decoder is None else named)
        self.loads["decoders"] += 1
        self._open[want] = other
        return other


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_name() -> str:
    """The registry's default model: what a server started without --model or --prior/--decoder serves."""
    from kcli.pipelines.store import load_registry

    return load_registry().default
