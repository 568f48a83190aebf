"""``kandinsky generate``: text to image, image to image with ``--init``, and replay with ``--from``."""

from __future__ import annotations

from dataclasses import replace
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
    hint: Annotated[Optional[Path], typer.Option(
        "--hint", help="A depth picture (grey or RGB, near = white) whose layout the image keeps; uses the depth "
                       "ControlNet (model 2.2-depth).", rich_help_panel=SAMPLING)] = None,
    depth_from: Annotated[Optional[Path], typer.Option(
        "--depth-from", help="Estimate the --hint from this photo with a depth model (--depth-model).",
        rich_help_panel=SAMPLING)] = None,
    depth_model: Annotated[Optional[str], typer.Option(
        "--depth-model", help="The transformers depth model (DPT, Depth-Anything) of --depth-from: a hub id or a "
                              "folder (default: the model's, Intel/dpt-large).", rich_help_panel=SAMPLING)] = None,
    save_hint: Annotated[bool, typer.Option(
        "--save-hint", help="With --depth-from: also write the depth picture beside the output.",
        rich_help_panel=SAMPLING)] = False,
    opts: GenOptions = None,
) -> None:
    """Make images from a text prompt (and a starting picture with --init, a depth picture with --hint)."""
    from kcli.cli import metadata
    from kcli.cli.run import run

    with user_errors():
        recorded, hint_sha256 = None, None
        if from_image is not None:
            meta = metadata.read(from_image)
            recorded = recorded_settings(meta)
            prompt = prompt if prompt is not None else meta.get("settings", {}).get("prompt", "")
            inputs = meta.get("inputs", {})
            if init is None and inputs.get("init"):
                init = Path(inputs["init"])
            if strength is None and inputs.get("strength") is not None:
                strength = inputs["strength"]
            if hint is None and depth_from is None and inputs.get("depth_from"):
                depth_from, depth_model = Path(inputs["depth_from"]), depth_model or inputs.get("depth_model")
            elif hint is None and depth_from is None and inputs.get("hint"):
                hint, hint_sha256 = Path(inputs["hint"]), inputs.get("hint_sha256")
        opts = resolve(opts, recorded=recorded, keep_size=init is not None and "width" not in (recorded or {}))
        hint_image, hint_inputs = _hint(opts, hint, depth_from, depth_model, save_hint, hint_sha256)
        if hint_image is not None and "model" not in opts.given and not opts.decoder:
            from kcli.loading.hub import DEPTH_MODEL

            opts = replace(opts, model=DEPTH_MODEL)  # a hint picks the depth ControlNet
        hinted = {"hints": True, "hinted": hint_image is not None}
        if init is None:
            run(opts, mode="generate", prompt=prompt, inputs=hint_inputs, **hinted,
                make=lambda k, s, p, hint=hint_image: k.generate(s, on_progress=p, hint=hint))
            return
        from kcli.pipelines.images import load_image
        from kcli.pipelines.kandinsky import check_strength

        strength = 0.3 if strength is None else strength
        check_strength(strength)
        picture = load_image(init, "--init image")
        run(opts, mode="image-to-image", prompt=prompt, size=picture.size, **hinted,
            make=lambda k, s, p, hint=hint_image: k.image_to_image(picture, s, strength=strength, on_progress=p,
                                                                   hint=hint),
            inputs={"init": str(init.resolve()), "strength": strength, **hint_inputs})


def _hint(opts: GenOptions, hint: Path | None, depth_from: Path | None, depth_model: str | None, save: bool,
          expected_sha256: str | None) -> tuple:
    """The hint picture of --hint or --depth-from (None without either), and what the metadata records."""
    from kcli.loading.errors import KandinskyError

    if hint is not None and depth_from is not None:
        raise KandinskyError("give --hint or --depth-from, not both")
    if (save or depth_model) and depth_from is None:
        raise KandinskyError(f"{'--save-hint' if save else '--depth-model'} goes with --depth-from PHOTO")
    if hint is not None:
        from kcli.pipelines.hint import hint_input

        return hint_input(hint, expected_sha256)
    if depth_from is None:
        return None, {}
    from kcli.cli import render
    from kcli.loading.hub import depth_model_of
    from kcli.pipelines.depth import depth_hint, hint_path_beside

    with render.DownloadView(opts.quiet) as progress:
        return depth_hint(depth_from, depth_model or depth_model_of(opts.model), device=opts.device,
                          offline=opts.offline, progress=progress,
                          save_to=hint_path_beside(opts.output, depth_from) if save else None,
                          overwrite=opts.overwrite)
