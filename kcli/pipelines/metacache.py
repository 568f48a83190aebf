"""Faster meta-device ops: remember what an op gives for inputs of given shapes, and make it directly next time.

Many meta kernels are Python (``torch._refs``, ``torch._meta_registrations``) and cost about half a
millisecond each; a full-size pipeline runs tens of thousands of ops with the same few hundred input
layouts (32 CLIP layers alike, a UNet's repeated blocks, the same run at another memory level). On meta
an op's outputs depend only on its inputs' metadata and its other arguments, so ``call`` keys on those
and rebuilds the outputs from the remembered layouts: a fresh storage (``empty_strided``), a view of an
input's storage (``as_strided``: same storage, so memory counts stay right), or the input itself (in-place
ops). Anything it cannot key (an unhashable argument, a non-meta tensor) runs the op as is.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

_CACHE: dict = {}
_MISS = object()
_RESHAPES_IN_PLACE = {"resize_", "resize_as_", "set_", "as_strided_"}


def _describe(x):
    if isinstance(x, torch.Tensor):
        if not x.is_meta or x.layout != torch.strided:
            raise TypeError
        return ("T", tuple(x.shape), x.stride(), x.storage_offset(), x.dtype)
    hash(x)
    return x


def _rebuild(spec, inputs: list):
    kind = spec[0]
    if kind == "value":
        return spec[1]
    if kind == "same":
        return inputs[spec[1]]
    _, shape, stride, offset, dtype, source = spec
    if kind == "view":
        return torch.as_strided(inputs[source], shape, stride, offset)
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def _spec(out, inputs: list):
    if not isinstance(out, torch.Tensor):
        return ("value", out)
    for i, t in enumerate(inputs):
        if out is t:
            return ("same", i)
    layout = (tuple(out.shape), out.stride(), out.storage_offset(), out.dtype)
    storage = out.untyped_storage()._cdata
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata == storage:
            if t.dtype != out.dtype:
                raise TypeError  # a view as another dtype: as_strided cannot make it
            return ("view", *layout, i)
    if out.storage_offset() != 0 or out.untyped_storage().nbytes() != _extent(out):
        raise TypeError  # a fresh storage of another size than its tensor: not rebuilt, not remembered
    return ("new", *layout, None)


def _extent(t: torch.Tensor) -> int:
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()


def call(func, args: tuple, kwargs: dict):
    """``func(*args, **kwargs)`` on meta tensors, from the cache when it saw these layouts before."""
    if torch.Tag.inplace_view in func.tags or func.__name__.split(".")[0] in _RESHAPES_IN_PLACE:
        return func(*args, **kwargs)  # changes an input's shape: the op must run
    leaves, _ = tree_flatten((args, kwargs))
    try:
        key = (func, tuple(_describe(x) for x in leaves))
        hit = _CACHE.get(key, _MISS)
    except TypeError:
        return func(*args, **kwargs)
    if hit is not _MISS:
        specs, tree = hit
        return tree_unflatten([_rebuild(s, leaves) for s in specs], tree)
    out = func(*args, **kwargs)
    outs, tree = tree_flatten(out)
    try:
        _CACHE[key] = ([_spec(o, leaves) for o in outs], tree)
    except TypeError:
        pass
    return out
