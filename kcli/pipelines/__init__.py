"""kcli's Python API: everything the command line does, for programs (and the coming server).

    from kcli.pipelines import Kandinsky, TextToImage, Inpaint, Fuse
    k = Kandinsky.open("2.2", device="cuda")
    for result in k.run(TextToImage("a corgi gliding on the wave", seed=7)):
        result.image.save(f"corgi-{result.seed}.png")

Public: the names below, and the torch-free modules ``settings`` (the one declaration of every setting),
``requests``, ``events``, ``batch`` (prompts files), ``store`` (the model cache), ``files`` (reading
pictures), ``imagemeta`` (the metadata image files carry) and ``raybatch`` (a batch on a Ray cluster; Ray is
imported on first use). The heavy names (``Kandinsky``, ``Result``, ``Scorer`` ...) load torch on first use
only, so ``import kcli.pipelines`` stays cheap.
"""

from kcli.pipelines.events import Events
from kcli.pipelines.requests import (
    Fuse,
    ImageToImage,
    Inpaint,
    Outpaint,
    Request,
    TextToImage,
    Vary,
)
from kcli.pipelines.settings import Loading, Output, Sampling

PUBLIC_MODULES = ("settings", "requests", "events", "batch", "store", "files", "imagemeta", "raybatch", "resume")
_HEAVY = {  # name -> module, imported on first use
    "Kandinsky": "kcli.pipelines.kandinsky", "Result": "kcli.pipelines.kandinsky",
    "Scorer": "kcli.pipelines.scoring", "fit_linear_prior": "kcli.pipelines.linear_prior",
    "system_report": "kcli.pipelines.system", "clip_model_names": "kcli.pipelines.scoring",
    "plan_run": "kcli.pipelines.dryrun", "planned_size": "kcli.pipelines.dryrun",
}

__all__ = ["Events", "Fuse", "ImageToImage", "Inpaint", "Kandinsky", "Loading", "Outpaint", "Output", "Request",
           "Result", "Sampling", "Scorer", "TextToImage", "Vary", "clip_model_names", "fit_linear_prior",
           "plan_run", "planned_size", "system_report"]


def __getattr__(name: str):
    if name in _HEAVY:
        import importlib

        return getattr(importlib.import_module(_HEAVY[name]), name)
    raise AttributeError(f"module 'kcli.pipelines' has no attribute {name!r}")
