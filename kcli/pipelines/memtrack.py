"""Device memory without the device: count the bytes that live tensors hold on it, and their peak.

``DeviceMemory`` is a dispatch mode. Every aten op that runs under it is looked at once: a storage on the
tracked device that an op's outputs hold and none of its inputs did is an allocation (views and in-place ops
allocate nothing), counted until the storage dies (a finalizer on the storage, so views keep it alive as they
do on a GPU). Weights that sit on the device without an op having made them are added with ``hold`` (and taken
off with ``drop`` when they leave). The peak is taken after every op, with its inputs and outputs alive, as a
caching allocator's ``max_memory_allocated`` would see it (not its reserved memory, nor fragmentation).

Run it on the ``meta`` device, where tensors have shapes, dtypes and storages but no data, to measure full-size
models on any machine in seconds (meta ops are remembered by input layout: ``metacache``); on a real device it
measures the same way.

Attention: under the mode, ``F.scaled_dot_product_attention`` runs as CUDA runs it in half precision and fp32
(flash / memory-efficient kernels: no (N, N) score matrix) unless ``fused_attention=False`` (the math path,
which materialises the scores, as a CPU without flash attention does).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kcli.pipelines import metacache

GiB = 2**30


def _storages(tensors, device: torch.device) -> dict[int, torch.UntypedStorage]:
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device == device and t.layout == torch.strided:
            s = t.untyped_storage()
            out[s._cdata] = s
    return out


class _FusedAttention(TorchFunctionMode):
    """``scaled_dot_product_attention`` as a fused kernel: the output and nothing of size N x N."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q = args[0] if args else kwargs["query"]
        v = args[2] if len(args) > 2 else kwargs["value"]
        out_shape = (*q.shape[:-1], v.shape[-1])
        return q.new_zeros(out_shape)  # flash / mem-efficient: the log-sum-exp rows are not kept at inference


class DeviceMemory(TorchDispatchMode):
    """Live bytes on ``device`` and their peak; see the module docstring.

        with DeviceMemory("meta") as mem:
            mem.hold(model)          # weights resident on the device
            model(x.to("meta"))
        mem.peak, mem.current
    """

    def __init__(self, device: str | torch.device = "meta", fused_attention: bool = True):
        super().__init__()
        self.device = torch.device(device)
        self.fused_attention = fused_attention
        self.live: dict[int, int] = {}  # storage key -> bytes
        self.held: set[int] = set()  # keys added by hold (weights), not by an op
        self.current = self.peak = 0
        self.label = ""  # what runs now (set by the caller), recorded with the peak
        self.peak_label = ""
        self.peaks: dict[str, int] = {}  # label -> the peak while it was set
        self._attention = _FusedAttention() if fused_attention else None
        self._paused = 0

    # ---- accounting ----------------------------------------------------------------------------------------

    def _add(self, key: int, storage: torch.UntypedStorage) -> None:
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.held.discard(key)
        self.current -= self.live.pop(key, 0)

    def _update_peak(self) -> None:
        if self.current > self.peaks.get(self.label, -1):
            self.peaks[self.label] = self.current
        if self.current > self.peak:
            self.peak, self.peak_label = self.current, self.label

    def hold(self, *items: nn.Module | torch.Tensor | None) -> None:
        """Count these weights (modules' parameters and buffers, or tensors) as resident on the device."""
        for key, s in _storages(_flatten(items), self.device).items():
            self._add(key, s)
            self.held.add(key)
        self._update_peak()

    def drop(self, *items: nn.Module | torch.Tensor | None) -> None:
        """Stop counting weights that ``hold`` counted (they went back to the host)."""
        for key in _storages(_flatten(items), self.device):
            if key in self.held:
                self._free(key)

    @contextlib.contextmanager
    def host(self):
        """Ops inside run on the host (building and converting weights): nothing they make is counted."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def reset_peak(self) -> None:
        self.peak, self.peak_label = self.current, self.label

    # ---- the mode ------------------------------------------------------------------------------------------

    def __enter__(self):
        if self._attention is not None:
            self._attention.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if self._attention is not None:
            self._attention.__exit__(*exc)
        return out

    def _run(self, func, args, kwargs):
        if self.device.type == "meta":  # meta outputs depend on input layouts only: remembered (metacache)
            return metacache.call(func, args, kwargs)
        return func(*args, **kwargs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._paused:
            return self._run(func, args, kwargs)
        before = _storages(tree_leaves((args, kwargs)), self.device)
        out = self._run(func, args, kwargs)
        for key, s in _storages(tree_leaves(out), self.device).items():
            if key not in before:
                self._add(key, s)
        self._update_peak()
        return out


def _flatten(items):
    for item in items:
        if isinstance(item, nn.Module):
            yield from item.parameters()
            yield from item.buffers()
        elif isinstance(item, torch.Tensor):
            yield item


def gib(n: int) -> float:
    return n / GiB
