"""torchvision built for another torch than the one installed.

transformers imports torchvision whenever it is installed, for its faster image processors. A torchvision
built for another torch fails on import (``operator torchvision::nms does not exist``), and transformers turns
that into ``Could not import module 'CLIPTextModelWithProjection'`` for every model. kandinsky needs no
torchvision (its CLIP image processor is the PIL one), so a broken torchvision is hidden from transformers,
which then uses its PIL processors; ``kandinsky doctor`` names the problem and the fix.
"""

from __future__ import annotations

import functools
import importlib.util
import sys

FIX = ("reinstall torch and torchvision together from one index (pip install --force-reinstall torch torchvision), "
       "or pip uninstall torchvision: kandinsky does not need it")


@functools.cache
def torchvision_problem() -> str | None:
    """Why the installed torchvision cannot be imported (one line), or None when it imports or is absent."""
    module = sys.modules.get("torchvision", False)
    if module is None:  # already hidden
        return None
    if module is not False and hasattr(module, "__version__"):
        return None
    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- RuntimeError, ImportError, OSError (a missing symbol) ...
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
    return None


def hide_broken_torchvision() -> str | None:
    """Before transformers is used: if torchvision cannot be imported, make it look absent (transformers then
    picks its PIL image processors) and return why; None when torchvision is fine or not installed."""
    problem = torchvision_problem()
    if problem:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # find_spec now says "not installed"; an import raises ImportError
        utils = sys.modules.get("transformers.utils.import_utils")
        for name in ("is_torchvision_available", "is_torchvision_v2_available"):
            check = getattr(utils, name, None)
            if hasattr(check, "cache_clear"):
                check.cache_clear()
    return problem
