"""``kandinsky inpaint`` and ``kandinsky outpaint``: repaint part of a picture, or grow it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.cli.options import SAMPLING, GenOptions, generation_options, resolve
from kcli.errors import KandinskyError

PASTE_HELP = "Do not paste the original's pixels back outside the repainted area."


@app.command()
@generation_options
def inpaint(
    prompt: Annotated[Optional[str], typer.Argument(help="What to paint into the masked area.")] = None,
    image: Annotated[Path, typer.Option("--image", help="The picture to change.", rich_help_panel=SAMPLING)] = None,
    mask: Annotated[Path, typer.Option("--mask", help="White = repaint, black = keep (or transparent = repaint "
                                       "in a mask with alpha). Resized to the image.", rich_help_panel=SAMPLING)] = None,
    invert_mask: Annotated[bool, typer.Option("--invert-mask", help="Repaint the black part instead.",
                                              rich_help_panel=SAMPLING)] = False,
    no_paste_back: Annotated[bool, typer.Option("--no-paste-back", help=PASTE_HELP, rich_help_panel=SAMPLING)] = False,
    opts: GenOptions = None,
) -> None:
    """Repaint the white part of a mask; the black part is kept exactly."""
    from kcli.cli.run import run
    from kcli.pipelines.images import load_image, repaint_mask

    with user_errors():
        if image is None or mask is None:
            raise KandinskyError("inpaint needs --image and --mask")
        opts = resolve(opts, keep_size=True)
        picture = load_image(image, "image")
        mask_picture = load_image(mask, "mask")
        width, height = opts.width or picture.width, opts.height or picture.height
        repaint = repaint_mask(mask_picture, width, height, invert=invert_mask)
        run(opts, mode="inpaint", prompt=prompt, size=picture.size, inpainting=True,
            make=lambda k, s, p: k.inpaint(picture, repaint, s, paste_back=not no_paste_back, on_progress=p),
            inputs={"image": str(image.resolve()), "mask": str(mask.resolve()), "invert_mask": invert_mask,
                    "paste_back": not no_paste_back})


@app.command()
@generation_options
def outpaint(
    prompt: Annotated[Optional[str], typer.Argument(help="What to paint into the new area.")] = None,
    image: Annotated[Path, typer.Option("--image", help="The picture to grow.", rich_help_panel=SAMPLING)] = None,
    expand: Annotated[str, typer.Option("--expand", help="How far to grow each side: top=128,left=64, all=96, "
                                        "or percentages (right=50%).", rich_help_panel=SAMPLING)] = None,
    no_paste_back: Annotated[bool, typer.Option("--no-paste-back", help=PASTE_HELP, rich_help_panel=SAMPLING)] = False,
    opts: GenOptions = None,
) -> None:
    """Grow a picture beyond its borders; only the new area is painted."""
    from dataclasses import replace

    from kcli.cli import render
    from kcli.cli.run import load_options, run
    from kcli.pipelines import canvas
    from kcli.pipelines.decoder import decoder_grid_step
    from kcli.pipelines.images import load_image

    with user_errors():
        if image is None or expand is None:
            raise KandinskyError("outpaint needs --image and --expand")
        if opts.width or opts.height:
            raise KandinskyError("outpaint takes its size from --expand, not --width/--height")
        opts = resolve(opts, keep_size=True)
        picture = load_image(image, "image")
        grow = canvas.parse_expand(expand, *picture.size)
        load = load_options(opts, inpainting=True)
        plan = canvas.plan_canvas(*picture.size, grow, decoder_grid_step(load[0].decoder))
        render.info(plan.describe())
        board, repaint = canvas.build(picture, plan)
        run(replace(opts, width=plan.width, height=plan.height), mode="outpaint", prompt=prompt, load=load,
            make=lambda k, s, p: k.inpaint(board, repaint, s, paste_back=not no_paste_back, on_progress=p),
            inputs={"image": str(image.resolve()), "expand": expand, "paste_back": not no_paste_back})
