"""Running models bigger than the GPU: keep weights in CPU memory and bring to the GPU only what runs.

- ``ModelOffload``: each model moves to the GPU for its stage and back after (``with offload.on(unet):``).
  Costs one transfer per model per image; needs the largest model to fit.
- ``Streamer`` (sequential offload): weights stay in pinned CPU memory; every module that owns weights
  is copied to the GPU just before its forward and dropped right after. The copy of the *next* module
  (in the order learned on the first pass) starts on a side CUDA stream while the current one computes,
  so transfers overlap compute instead of stalling it. Needs only a few blocks of GPU memory.

Both work on any device, so their logic is tested on the CPU (where the "transfer" is a copy).
References: accelerate's cpu_offload hooks; diffusers group offloading with ``use_stream`` (PR #11106).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class ModelOffload:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    @contextlib.contextmanager
    def on(self, *modules: nn.Module | None):
        live = [m for m in modules if m is not None]
        for m in live:
            m.to(self.device)
        try:
            yield
        finally:
            for m in live:
                m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def _owners(root: nn.Module) -> list[nn.Module]:
    """Modules that hold parameters or buffers of their own, in registration order (the root excluded)."""
    return [m for m in root.modules() if m is not root and
            (next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None)]


def _tensors(module: nn.Module):
    yield from module._parameters.items()
    yield from module._buffers.items()


class Streamer:
    """Sequential offload of one model to ``device``; see the module docstring."""

    def __init__(self, root: nn.Module, device: torch.device, pin: bool | None = None):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        pin = cuda if pin is None else pin
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        # the root's own tensors (e.g. the prior's positional embedding) are small: they stay on the device
        for name, t in list(_tensors(root)):
            if t is not None:
                self._set(root, name, t.to(self.device))
        self.blocks = _owners(root)
        self.home: dict[nn.Module, dict[str, torch.Tensor]] = {}
        for block in self.blocks:
            self.home[block] = {n: (t.pin_memory() if pin else t) for n, t in _tensors(block) if t is not None}
            for n, t in self.home[block].items():
                self._set(block, n, t)
        self.order: list[nn.Module] = []  # execution order, learned on the first pass
        self._copies: dict[nn.Module, tuple[dict[str, torch.Tensor], object]] = {}
        self.loads = 0  # transfers made (for tests and benchmarks)
        self._hooks = []
        for block in self.blocks:
            self._hooks.append(block.register_forward_pre_hook(self._before))
            self._hooks.append(block.register_forward_hook(self._after))

    @staticmethod
    def _set(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
        if name in module._parameters:
            module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[name] = tensor

    def _copy(self, block: nn.Module) -> None:
        """Start copying ``block``'s tensors to the device (on the side stream when there is one)."""
        if block in self._copies:
            return
        self.loads += 1
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            copies = {n: t.to(self.device, non_blocking=True, copy=True) for n, t in self.home[block].items()}
            done = self.stream.record_event() if self.stream is not None else None
        self._copies[block] = (copies, done)

    def _before(self, block: nn.Module, args) -> None:
        if block not in self.order:
            self.order.append(block)
        self._copy(block)
        copies, done = self._copies[block]
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
            for t in copies.values():  # memory made on the side stream, used on this one
                t.record_stream(torch.cuda.current_stream(self.device))
        for n, t in copies.items():
            self._set(block, n, t)
        i = self.order.index(block)
        if i + 1 < len(self.order):
            self._copy(self.order[i + 1])  # prefetch the next block while this one computes

    def _after(self, block: nn.Module, args, output) -> None:
        self._copies.pop(block, None)
        for n, t in self.home[block].items():
            self._set(block, n, t)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
