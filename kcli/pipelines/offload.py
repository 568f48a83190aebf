"""Running models bigger than the GPU: keep weights in CPU memory and bring to the GPU only what runs.

- ``ModelOffload``: each model moves to the GPU for its stage and back after (``with offload.on(unet):``).
  Costs one transfer per model per image; needs the largest model to fit.
- ``Streamer`` (sequential offload): weights stay in CPU memory; every module that owns weights (a *block*)
  is copied to the GPU just before its forward and dropped right after. While a block computes, the block
  that followed it last time is copied on a side CUDA stream, so transfers overlap compute. At most two
  blocks' weights are on the device: the one running and the one prefetched.

How the two streams stay in step (``CudaStreams``): a block's copy is made, and its memory allocated, on the
copy stream; the compute stream waits for the copy's event before the block runs. When the block is done, the
copy stream waits for the compute stream's work so far, and only then is the copy dropped. The memory goes
back to the copy stream's pool at once, and the next copy that reuses it is queued after that wait. So a
freed block is reusable immediately, however far the CPU runs ahead of the GPU (``record_stream``, by contrast,
keeps it until the GPU has caught up, and the copies pile up to the model's whole size).

Host memory (``HostPins``): asynchronous copies need page-locked memory. Each streamed model's weights are
packed into one host buffer (each block a contiguous range of it, so a block is one copy) and that buffer is
page-locked in place (``cudaHostRegister``): the pinned bytes are the weights' bytes. Pinning each tensor with
``pin_memory()`` instead goes through an allocator that rounds every one up to a power of two (5.8 GiB of
weights pinned as 7.6). ``Streamer.remove`` unpins, and leaves the model whole in ordinary CPU memory.

Everything takes the device and the stream and pinning functions as parameters, so the logic runs and is
tested on the CPU and the meta device, where the "transfer" is a copy and there is nothing to order.
References: accelerate's cpu_offload hooks; diffusers group offloading with ``use_stream`` (PR #11106).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

ALIGN = 256  # bytes: where each tensor starts in a packed block (what vectorised CUDA kernels may assume)


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


# ---- streams ------------------------------------------------------------------------------------------------

class NoStreams:
    """Where copies are synchronous (CPU, meta): nothing to order."""

    def copying(self):
        return contextlib.nullcontext()

    def copied(self):
        return None

    def use(self, event) -> None:
        pass

    def release(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class CudaStreams(NoStreams):
    """A side stream for copies, ordered against the current (compute) stream by events; see the module
    docstring."""

    def __init__(self, device: torch.device):
        self.device = device
        self.copy = torch.cuda.Stream(device)

    def copying(self):
        """Copies made (and their memory allocated) inside run on the copy stream."""
        return torch.cuda.stream(self.copy)

    def copied(self):
        return self.copy.record_event()

    def use(self, event) -> None:
        """The compute stream waits for a copy before using it."""
        torch.cuda.current_stream(self.device).wait_event(event)

    def release(self) -> None:
        """Before copies are dropped: the copy stream (whose pool gets their memory back) waits for all the
        compute queued so far, so that no later copy overwrites weights still being read."""
        self.copy.wait_event(torch.cuda.current_stream(self.device).record_event())

    def synchronize(self) -> None:
        self.copy.synchronize()
        torch.cuda.current_stream(self.device).synchronize()


def streams_for(device: torch.device) -> NoStreams:
    return CudaStreams(device) if device.type == "cuda" else NoStreams()


# ---- pinned host memory -------------------------------------------------------------------------------------

def _cuda_register(ptr: int, size: int) -> bool:
    return int(torch.cuda.cudart().cudaHostRegister(ptr, size, 1)) == 0  # 1: cudaHostRegisterPortable


def _cuda_unregister(ptr: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(ptr)


class HostPins:
    """Page-locks host buffers in place and counts the bytes (``pinned``). ``register(ptr, size) -> bool`` and
    ``unregister(ptr)`` default to CUDA's; a buffer that cannot be locked (the system's limit) stays pageable:
    its copies are then synchronous, and still correct."""

    def __init__(self, register: Callable[[int, int], bool] | None = None,
                 unregister: Callable[[int], None] | None = None):
        self._register = register or _cuda_register
        self._unregister = unregister or _cuda_unregister
        self.pinned = 0  # bytes page-locked now

    def pin(self, buffer: torch.Tensor) -> Callable[[], None] | None:
        """Lock ``buffer``'s bytes; returns the function that unlocks them (also called if the buffer dies
        first), or None when they could not be locked."""
        ptr, size = buffer.data_ptr(), buffer.numel() * buffer.element_size()
        if size == 0 or not self._register(ptr, size):
            return None
        self.pinned += size

        def unpin(ptr=ptr, size=size):
            self._unregister(ptr)
            self.pinned -= size

        return weakref.finalize(buffer.untyped_storage(), unpin)


# ---- the streamer -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Slot:
    """Where one tensor of a block lives in the block's bytes."""

    name: str
    offset: int
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.size) * self.dtype.itemsize

    def view(self, slab: torch.Tensor) -> torch.Tensor:
        """The tensor as a view of ``slab`` (uint8: a block's bytes)."""
        return slab[self.offset:self.offset + self.nbytes].view(self.dtype).as_strided(self.size, self.stride)


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """``t``'s strides when it covers exactly its elements in some order (channels-last included), so that the
    copy keeps its layout; else the contiguous ones."""
    expect = 1
    for d in sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=t.stride):
        if t.stride(d) != expect:
            break
        expect *= t.shape[d]
    else:
        if t.numel():
            return tuple(t.stride())
    out, step = [], 1
    for n in reversed(t.shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[list[_Slot], int]:
    slots, offset = [], 0
    for name, t in tensors.items():
        offset = -(-offset // ALIGN) * ALIGN
        slots.append(_Slot(name, offset, t.dtype, tuple(t.shape), _strides(t)))
        offset += slots[-1].nbytes
    return slots, -(-offset // ALIGN) * ALIGN


def _owners(root: nn.Module) -> list[nn.Module]:
    """Modules that hold parameters or buffers of their own, in registration order (the root excluded)."""
    return [m for m in root.modules() if m is not root and
            (next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None)]


def _tensors(module: nn.Module):
    yield from module._parameters.items()
    yield from module._buffers.items()


def _set(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor


class _Copy:
    """A block's weights on the device: one allocation, its tensors views of it, ready after ``event``."""

    def __init__(self, slab: torch.Tensor, tensors: dict[str, torch.Tensor], event):
        self.slab, self.tensors, self.event = slab, tensors, event


class Streamer:
    """Sequential offload of one model to ``device``; see the module docstring.

    ``pins``: pack the weights into one host buffer and page-lock it (None: leave them where they are).
    ``streams``: how copies are ordered against compute (default: CUDA streams on CUDA, nothing elsewhere).
    The blocks are the leaf modules that own tensors; the tensors of the root and of modules that contain
    blocks (position ids, class tokens, the prior's positional embedding: kilobytes) stay on the device.
    """

    def __init__(self, root: nn.Module, device: torch.device, pins: HostPins | None = None, streams=None):
        self.root, self.device = root, torch.device(device)
        self.streams = streams if streams is not None else streams_for(self.device)
        owners = _owners(root)
        ids = {id(m) for m in owners}
        inner = [m for m in owners if any(c is not m and id(c) in ids for c in m.modules())]
        self.blocks = [m for m in owners if not any(m is i for i in inner)]
        self._kept: list[tuple[nn.Module, str, torch.Tensor]] = []  # (module, name, home tensor)
        for module in [root, *inner]:
            for name, t in list(_tensors(module)):
                if t is not None:
                    self._kept.append((module, name, t))
                    _set(module, name, t.to(self.device))
        self.layout: dict[nn.Module, tuple[list[_Slot], int]] = {
            b: _layout({n: t for n, t in _tensors(b) if t is not None}) for b in self.blocks}
        self.home: dict[nn.Module, dict[str, torch.Tensor]] = {
            b: {n: t for n, t in _tensors(b) if t is not None} for b in self.blocks}
        self.packed: dict[nn.Module, torch.Tensor] = {}  # block -> its bytes in the host buffer (when pinned)
        self._unpin = None
        if pins is not None:
            self._pack(pins)
        self.weights = sum(size for _, size in self.layout.values())  # bytes streamed per pass, padding included
        self.next: dict[nn.Module, nn.Module] = {}  # block -> the block that ran after it last time
        self._last: nn.Module | None = None
        self._running: dict[nn.Module, _Copy] = {}
        self._ahead: tuple[nn.Module, _Copy] | None = None  # the prefetched block
        self.loads = 0  # transfers made (for tests and benchmarks)
        self._hooks = []
        for block in self.blocks:
            self._hooks.append(block.register_forward_pre_hook(self._before))
            self._hooks.append(block.register_forward_hook(self._after))

    def _pack(self, pins: HostPins) -> None:
        """Every block's tensors into one host buffer, block after block, then page-locked."""
        total = sum(size for _, size in self.layout.values())
        buffer = torch.empty(total, dtype=torch.uint8, device="cpu")
        start = 0
        for block in self.blocks:
            slots, size = self.layout[block]
            self.packed[block] = buffer[start:start + size]
            home = {}
            for slot in slots:
                home[slot.name] = slot.view(self.packed[block])
                home[slot.name].copy_(self.home[block][slot.name])
                _set(block, slot.name, home[slot.name])  # the loaded tensor is freed here
            self.home[block] = home
            start += size
        self._unpin = pins.pin(buffer)

    @property
    def kept(self) -> list[torch.Tensor]:
        """The tensors that stay on the device: the root's, and those of modules that contain blocks."""
        return [dict(_tensors(module))[name] for module, name, _ in self._kept]

    @property
    def pinned(self) -> bool:
        return self._unpin is not None

    # ---- copies ----------------------------------------------------------------------------------------------

    def _load(self, block: nn.Module) -> _Copy:
        """Start copying ``block``'s weights to the device (on the copy stream where there is one)."""
        self.loads += 1
        slots, size = self.layout[block]
        with self.streams.copying():
            slab = torch.empty(size, dtype=torch.uint8, device=self.device)
            tensors = {s.name: s.view(slab) for s in slots}
            if block in self.packed:
                slab.copy_(self.packed[block], non_blocking=True)  # one transfer for the whole block
            else:
                for name, t in tensors.items():
                    t.copy_(self.home[block][name], non_blocking=True)
            event = self.streams.copied()
        return _Copy(slab, tensors, event)

    def _before(self, block: nn.Module, args) -> None:
        if self._last is not None:
            self.next[self._last] = block
        self._last = block
        if self._ahead is not None and self._ahead[0] is block:
            copy, self._ahead = self._ahead[1], None
        else:
            self._drop_ahead()  # it guessed wrong: not needed now
            copy = self._load(block)
        self.streams.use(copy.event)
        for name, t in copy.tensors.items():
            _set(block, name, t)
        self._running[block] = copy
        after = self.next.get(block)
        if after is not None and after is not block and after not in self._running:
            self._ahead = (after, self._load(after))  # copied while this block computes

    def _after(self, block: nn.Module, args, output) -> None:
        copy = self._running.pop(block, None)
        if copy is None:
            return
        self.streams.release()
        for name, t in self.home[block].items():
            _set(block, name, t)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self.streams.release()
            self._ahead = None

    def evict(self) -> None:
        """Every block back on its home copy and every device copy dropped, the prefetched one too (after a
        stage, or when a forward failed half way)."""
        self.streams.release()
        for block in list(self._running):
            for name, t in self.home[block].items():
                _set(block, name, t)
        self._running.clear()
        self._ahead = None
        self._last = None

    @property
    def resident(self) -> int:
        """Bytes of block weights on the device now."""
        copies = list(self._running.values()) + ([self._ahead[1]] if self._ahead else [])
        return sum(c.slab.numel() for c in copies)

    def remove(self) -> None:
        """Undo everything: hooks off, device copies dropped, the root's tensors home, the host buffer unpinned.
        The model is left whole in CPU memory, usable as it is."""
        self.streams.synchronize()  # no copy may still read the buffer that is unpinned
        self.evict()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module, name, t in self._kept:
            _set(module, name, t)
        self._kept.clear()
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
