"""``kandinsky generate``: text to image."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors

MODEL = "Model"
SAMPLING = "Sampling"
OUTPUT = "Output"
DEVICE = "Device"


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative: Annotated[str | None, typer.Option("--negative", help="What to steer away from.", rich_help_panel=SAMPLING)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed (image i of -n uses seed+i). Random and printed if left out.", rich_help_panel=SAMPLING)] = None,
    width: Annotated[int, typer.Option("--width", "-W", help="Image width in pixels.", rich_help_panel=SAMPLING)] = 512,
    height: Annotated[int, typer.Option("--height", "-H", help="Image height in pixels.", rich_help_panel=SAMPLING)] = 512,
    steps: Annotated[int, typer.Option("--steps", help="Decoder denoising steps.", rich_help_panel=SAMPLING)] = 100,
    prior_steps: Annotated[int, typer.Option("--prior-steps", help="Prior denoising steps.", rich_help_panel=SAMPLING)] = 25,
    guidance: Annotated[float, typer.Option("--guidance", help="Decoder classifier-free guidance (1 = off).", rich_help_panel=SAMPLING)] = 4.0,
    prior_guidance: Annotated[float, typer.Option("--prior-guidance", help="Prior classifier-free guidance (1 = off).", rich_help_panel=SAMPLING)] = 4.0,
    num_images: Annotated[int, typer.Option("--num-images", "-n", min=1, help="How many images.", rich_help_panel=SAMPLING)] = 1,
    prior: Annotated[str | None, typer.Option("--prior", help="Prior checkpoint: a folder (diffusers layout) or a hub id.", rich_help_panel=MODEL)] = None,
    decoder: Annotated[str | None, typer.Option("--decoder", help="Decoder checkpoint: a folder (diffusers layout) or a hub id.", rich_help_panel=MODEL)] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the network.", rich_help_panel=MODEL)] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=DEVICE)] = "auto",
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).", rich_help_panel=DEVICE)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file, or folder. Default: <prompt>-<seed>.png here.", rich_help_panel=OUTPUT)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; saved paths still go to stdout.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Make images from a text prompt."""
    from kcli.cli import output as out
    from kcli.cli import render

    with user_errors():
        base = seed if seed is not None else secrets.randbits(32)
        seeds = [base + i for i in range(num_images)]
        paths = out.plan_outputs(output, prompt, seeds, overwrite)
        if seed is None and not quiet:
            render.info(f"seed: {base}")

        from kcli.loading.hub import DEFAULT_DECODER, DEFAULT_PRIOR, resolve
        from kcli.pipelines.kandinsky import Kandinsky, LoadOptions, Settings

        settings = Settings(prompt, negative=negative, seed=base, width=width, height=height, steps=steps,
                            prior_steps=prior_steps, guidance=guidance, prior_guidance=prior_guidance,
                            num_images=num_images)
        settings.check()
        opts = LoadOptions(resolve(prior or DEFAULT_PRIOR, offline=offline),
                           resolve(decoder or DEFAULT_DECODER, offline=offline), device=device, dtype=dtype)
        with render.ProgressView(quiet) as view:
            k = Kandinsky.load(opts, on_progress=view)
            plan = k.plan(settings)
            if plan.note() and not quiet:
                render.note(plan.note())
            view.image(1, num_images)
            for i, (result, path) in enumerate(zip(k.generate(settings, on_progress=view), paths)):
                out.save_image(result.image, path)
                typer.echo(str(path))
                view.image(i + 2, num_images)
