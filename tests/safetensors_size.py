"""The exact byte size of a safetensors file, computed from its tensors' names, dtypes and shapes alone.

A safetensors file is an 8-byte little-endian header length N, then N bytes of JSON header, then the data.
The header maps every tensor name to ``{"dtype","shape","data_offsets"}`` (offsets into the data, which holds
the tensors back to back with no gaps) plus ``"__metadata__"`` (``{"format":"pt"}`` from every writer that
made the hub files: the hub's conversion bot, transformers' and diffusers' ``save_pretrained``). The Rust
library writes it compactly (serde_json: no spaces), so the file size is

    8 + len(header) + sum(nbytes)

and ``len(header)`` depends on every name, every dtype string, every shape and the digits of every offset,
hence on the order of the tensors in the data. Measured with each released writer (pip wheels 0.2.8, 0.3.0,
0.3.1, 0.3.2, 0.3.3, 0.4.0 and today's, serialising the same dicts), the writers differ in two ways:

* order in the data: 0.2.x writes the tensors in name order; from 0.3.0 on they are sorted by dtype
  alignment, largest first (int64 before float32 before float16), then by name, so that every tensor starts
  aligned.
* padding of the header: 0.2.x adds none; 0.3.1 and later add spaces up to a multiple of 8; 0.3.0 (released
  March 2023, in use when most Kandinsky files were converted) has an off-by-complement bug: it appends
  ``len % 8`` spaces instead of ``(8 - len % 8) % 8`` (a 239-byte header became 246 bytes, a 270-byte one 276,
  a 306-byte one 308; checked on 300 random headers). So a 0.3.0 header is a multiple of 8 only when
  ``len % 8`` is 0 or 4, and the file size betrays the writer: a float32 file written by 0.3.1+ has
  ``size % 4 == 0``; one of size ``2 mod 4`` can only come from 0.3.0 (or 0.2.x).

The JSON key order of the header does not change its length, so it is not modelled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
            "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
TORCH_DTYPE = {"float64": "F64", "int64": "I64", "float32": "F32", "int32": "I32", "float16": "F16",
               "bfloat16": "BF16", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
WRITERS = ("0.2", "0.3.0", "0.3.1+")  # "0.3.1+" is every release from 0.3.1 to today's
PT = {"format": "pt"}  # the metadata torch writers store; None writes no "__metadata__" (save_file's default)

Tensor = tuple[str, str, tuple[int, ...]]  # (name, safetensors dtype such as "F32", shape)


def ordered(tensors: Iterable[Tensor], writer: str = "0.3.1+") -> list[Tensor]:
    """The tensors in the order the writer lays them out in the data."""
    if writer not in WRITERS:
        raise ValueError(f"unknown writer {writer!r}; known: {', '.join(WRITERS)}")
    tensors = list(tensors)
    if writer == "0.2":
        return sorted(tensors, key=lambda t: t[0])
    return sorted(tensors, key=lambda t: (-ITEMSIZE[t[1]], t[0]))


def header(tensors: Iterable[Tensor], writer: str = "0.3.1+", metadata: dict | None = PT) -> bytes:
    """The JSON header the writer produces, with its padding."""
    tensors = list(tensors)
    names = [t[0] for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("repeated tensor name")
    doc: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in ordered(tensors, writer):
        end = offset + ITEMSIZE[dtype] * math.prod(shape)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    pad = {"0.2": 0, "0.3.0": len(raw) % 8, "0.3.1+": -len(raw) % 8}[writer]
    return raw + b" " * pad


def file_size(tensors: Iterable[Tensor], writer: str = "0.3.1+", metadata: dict | None = PT) -> int:
    """Bytes of the whole file: length prefix, header, data."""
    tensors = list(tensors)
    data = sum(ITEMSIZE[d] * math.prod(s) for _, d, s in tensors)
    return 8 + len(header(tensors, writer, metadata)) + data


def from_state_dict(state: dict, dtype: str | None = None) -> list[Tensor]:
    """(name, dtype, shape) of every tensor of a state dict (meta tensors are fine); ``dtype`` overrides the
    floating-point ones (the dtype the file stores), integer buffers keep theirs."""
    out = []
    for name, t in state.items():
        d = TORCH_DTYPE[str(t.dtype).removeprefix("torch.")]
        if dtype is not None and t.dtype.is_floating_point:
            d = dtype
        out.append((name, d, tuple(t.shape)))
    return out
