"""Sane ranges for the numbers of checkpoint configs (config.json, scheduler_config.json).

A config is text anyone can edit, and every module is built from it: 10^9 layers would build for hours, a
negative channel count fails deep inside torch, a string where a number goes fails in an f-string. Each
config dataclass declares the ranges of its keys in one place (``RANGES``), and ``check`` refuses a value of
the wrong type or outside its range in one line, before anything is built. The ranges hold every released
Kandinsky checkpoint with room to spare (the largest, the 2.1 image encoder, has 48 layers of width 1664).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kcli.errors import CheckpointError

MAX_LEVELS = 8  # entries of a per-level list (block_out_channels ...)


@dataclass(frozen=True)
class Bound:
    kind: type  # int or float
    min: float
    max: float
    many: bool = False  # a list of them, one per level
    required: bool = False  # the config must give it (no default)

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        return f"{what} from {_num(self.min)} to {_num(self.max)}"


def count(low: int, high: int, *, many: bool = False, required: bool = False) -> Bound:
    """A whole number in [low, high] (``many``: a list of 1 to MAX_LEVELS of them)."""
    return Bound(int, low, high, many, required)


def real(low: float, high: float, *, required: bool = False) -> Bound:
    """A finite number in [low, high]."""
    return Bound(float, low, high, False, required)


def check(config: dict, ranges: dict[str, Bound], what: str) -> None:
    """Every key of ``ranges`` in ``config`` has the right type and lies in its range, and the required ones
    are there; else a CheckpointError names ``what`` and the key."""
    for key, bound in ranges.items():
        if key not in config:
            if bound.required:
                raise CheckpointError(f"{what}: {key} is missing")
            continue
        value = config[key]
        if value is None and not bound.required:
            continue
        if bound.many:
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LEVELS:
                raise CheckpointError(f"{what}: {key} must be a list of 1 to {MAX_LEVELS} numbers, got "
                                      f"{_shown(value)}")
            values = value
        else:
            values = (value,)
        for v in values:
            number = isinstance(v, int) if bound.kind is int else isinstance(v, (int, float))
            if isinstance(v, bool) or not number or not math.isfinite(v) or not bound.min <= v <= bound.max:
                raise CheckpointError(f"{what}: {key} must be {bound.describe()}, got {_shown(value)}")


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def in_file(path) -> Iterator[None]:
    """A config error raised inside names the file it came from."""
    try:
        yield
    except CheckpointError as e:
        if str(e).startswith(str(path)):
            raise
        raise CheckpointError(f"{path}: {e}") from None


@contextmanager
def buildable() -> Iterator[None]:
    """Building a module from a config whose values are each in range but do not fit together (heads that do
    not divide the width, a group count that does not divide the channels ...): the constructors' own error,
    in one line, as the config's fault."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- torch and transformers raise ValueError, TypeError, their own ...
        text = str(e).strip()
        first = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
        raise CheckpointError(f"the config does not describe a model that can be built ({first[:300]})") from None
