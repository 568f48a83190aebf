"""``kandinsky generate``: text to image, image to image with ``--init``, and replay with ``--from``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.cli.options import SAMPLING, GenOptions, generation_options, resolve

REPLAYED = ("negative", "seed", "width", "height", "steps", "prior_steps", "guidance", "prior_guidance", "sampler",
            "prior_mode", "linear_prior")


def recorded_settings(meta: dict) -> dict:
    """What ``--from IMAGE`` takes from an image's metadata: its settings, model and precision."""
    s = meta.get("settings", {})
    values = {k: s[k] for k in REPLAYED if s.get(k) is not None}
    ckpt = meta.get("checkpoints", {})
    if ckpt.get("prior") or ckpt.get("decoder"):
        values.update({k: ckpt[k] for k in ("prior", "decoder") if ckpt.get(k)})
    elif meta.get("model") not in (None, "custom"):
        values["model"] = meta["model"]
    if meta.get("dtype"):
        values["dtype"] = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(meta["dtype"], meta["dtype"])
    values["num_images"] = 1
    return values


@app.command()
@generation_options
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw (or use --prompts-file).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this picture (image to image).",
                                                 rich_help_panel=SAMPLING)] = None,
    strength: Annotated[Optional[float], typer.Option(
        "--strength", help="With --init: how much to change, in (0, 1]: the share of the schedule that is "
                           "re-noised. [default: 0.3]", rich_help_panel=SAMPLING)] = None,
    from_image: Annotated[Optional[Path], typer.Option(
        "--from", help="Make an image again from its metadata; flags given change what they name.",
        rich_help_panel=SAMPLING)] = None,
    opts: GenOptions = None,
) -> None:
    """Make images from a text prompt (and a starting picture with --init)."""
    from kcli.cli import metadata
    from kcli.cli.run import run

    with user_errors():
        recorded = None
        if from_image is not None:
            meta = metadata.read(from_image)
            recorded = recorded_settings(meta)
            prompt = prompt if prompt is not None else meta.get("settings", {}).get("prompt", "")
            inputs = meta.get("inputs", {})
            if init is None and inputs.get("init"):
                init = Path(inputs["init"])
            if strength is None and inputs.get("strength") is not None:
                strength = inputs["strength"]
        opts = resolve(opts, recorded=recorded, keep_size=init is not None and "width" not in (recorded or {}))
        if init is None:
            run(opts, mode="generate", prompt=prompt, make=lambda k, s, p: k.generate(s, on_progress=p))
            return
        from kcli.pipelines.images import load_image
        from kcli.pipelines.kandinsky import check_strength

        strength = 0.3 if strength is None else strength
        check_strength(strength)
        picture = load_image(init, "--init image")
        run(opts, mode="image-to-image", prompt=prompt, size=picture.size,
            make=lambda k, s, p: k.image_to_image(picture, s, strength=strength, on_progress=p),
            inputs={"init": str(init.resolve()), "strength": strength})
