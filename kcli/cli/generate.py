"""``kandinsky generate``: text to image, image to image with ``--init``, and replay with ``--from``."""

# no `from __future__ import annotations`: the settings dataclass below is read for its real field types
from dataclasses import dataclass
from pathlib import Path

from kcli.cli.flags import Values, generating
from kcli.errors import KandinskyError
from kcli.pipelines.requests import ImageToImage, TextToImage
from kcli.pipelines.settings import INPUT, read_back, setting


@dataclass(frozen=True, kw_only=True)
class Replay:
    """The command line's own setting: make an image again."""

    from_image: Path | None = setting(None, "Make an image again from its metadata; flags given change what "
                                      "they name.", flag="--from", panel=INPUT, file=False)


def recorded(meta: dict) -> dict:
    """What ``--from IMAGE`` takes from an image's metadata: its settings, inputs, model and precision."""
    values = read_back(meta, ImageToImage)
    if not meta.get("load"):  # made before the load settings were recorded by name
        ckpt = meta.get("checkpoints", {})
        values.update({k: ckpt[k] for k in ("prior", "decoder") if ckpt.get(k)})
        if not (ckpt.get("prior") or ckpt.get("decoder")) and meta.get("model") not in (None, "custom"):
            values["model"] = meta["model"]
        if meta.get("dtype"):
            values["dtype"] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(meta["dtype"])
    values["num_images"] = 1
    return values


@generating("generate", TextToImage, ImageToImage, Replay, size="512, or --init's",
            doc="Make images from a text prompt (and a starting picture with --init).")
def generate(values: Values) -> None:
    from kcli.cli import metadata
    from kcli.cli.run import pick, run

    replayed, prompt = None, values["prompt"]
    if values["from_image"] is not None:
        meta = metadata.read(values["from_image"])
        replayed = recorded(meta)
        prompt = prompt if prompt is not None else meta.get("settings", {}).get("prompt", "")
    init = values["init"] if "init" in values.given or not replayed else replayed.get("init")
    if init is None and "strength" in values.given:
        raise KandinskyError("--strength needs --init: it says how much of the starting picture to change")
    kind = TextToImage if init is None else ImageToImage
    if init is not None:
        replayed = {**(replayed or {}), "init": init}

    def build(text: str, settings: dict):
        return pick(kind, {**settings, "prompt": text})

    run(values, (kind,), build, recorded=replayed, prompt=prompt)
