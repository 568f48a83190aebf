"""``kandinsky generate``: text to image, image to image with ``--init``, a depth ControlNet's hint with ``--hint``
or ``--depth-from``, and replay with ``--from``."""

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
        ckpt = meta.get("checkpoints") if isinstance(meta.get("checkpoints"), dict) else {}
        values.update(read_back({"load": {k: ckpt[k] for k in ("prior", "decoder") if ckpt.get(k)}}))
        if not (ckpt.get("prior") or ckpt.get("decoder")) and meta.get("model") not in (None, "custom"):
            values["model"] = read_back({"load": {"model": meta["model"]}})["model"]
        if meta.get("dtype"):
            values["dtype"] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(str(meta["dtype"]))
    if values.get("depth_from"):  # estimated again from the photo (the saved hint is its copy)
        values.pop("hint", None)
        values.pop("hint_sha256", None)
    values["num_images"] = 1
    return values


HINTS = ("hint", "hint_sha256", "depth_from", "depth_from_sha256", "depth_model")


def hint_file(output: Path | None, photo: Path, overwrite: bool) -> Path:
    """Where ``--save-hint`` writes: ``NAME-hint.png`` beside an output file, else ``PHOTO-depth.png`` in the
    output folder (this folder by default)."""
    path = output.with_name(output.stem + "-hint.png") if output is not None and output.suffix else \
        (output or Path(".")) / f"{photo.stem}-depth.png"
    if path.exists() and not overwrite:
        raise KandinskyError(f"{path} exists (--overwrite replaces it)")
    return path


@generating("generate", TextToImage, ImageToImage, Replay, size="512, or --init's",
            doc="Make images from a text prompt (and a starting picture with --init, a depth picture with --hint).")
def generate(values: Values) -> None:
    from kcli.cli.run import pick, run
    from kcli.pipelines import imagemeta as metadata

    replayed, prompt = None, values["prompt"]
    if values["from_image"] is not None:
        meta = metadata.read(values["from_image"])
        try:
            replayed = recorded(meta)
            for key in ("seed",) + (("prompt",) if prompt is None else ()):
                if key not in replayed:  # without them the image cannot be made again
                    raise KandinskyError(f"the metadata has no {key} (settings.{key})")
        except KandinskyError as e:
            raise KandinskyError(f"--from {values['from_image']}: {e}") from None
        prompt = prompt if prompt is not None else replayed["prompt"]
        if {"hint", "depth_from"} & values.given:  # a hint given replaces the recorded one
            replayed = {k: v for k, v in replayed.items() if k not in HINTS}
    init = values["init"] if "init" in values.given or not replayed else replayed.get("init")
    if init is None and "strength" in values.given:
        raise KandinskyError("--strength needs --init: it says how much of the starting picture to change")
    kind = TextToImage if init is None else ImageToImage
    if init is not None:
        replayed = {**(replayed or {}), "init": init}

    def build(text: str, settings: dict):
        extra = {}
        for name in ("hint", "depth_from"):  # a recorded hash (no flag sets one) checks the very file replayed
            if settings.get(name) is not None and str(settings[name]) == str((replayed or {}).get(name)):
                extra[f"{name}_sha256"] = replayed.get(f"{name}_sha256")
        if settings.get("save_hint") and settings.get("depth_from"):
            extra["hint_file"] = hint_file(settings["output"], Path(settings["depth_from"]), settings["overwrite"])
        return pick(kind, {**settings, "prompt": text}, **extra)

    run(values, (kind,), build, recorded=replayed, prompt=prompt)
