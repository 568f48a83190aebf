"""``kandinsky generate``: text to image, or image to image with ``--init``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.cli.options import SAMPLING, GenOptions, generation_options


@app.command()
@generation_options
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this picture (image to image).",
                                                 rich_help_panel=SAMPLING)] = None,
    strength: Annotated[float, typer.Option("--strength", help="With --init: how much to change, in (0, 1]: the "
                                            "share of the schedule that is re-noised.", rich_help_panel=SAMPLING)] = 0.3,
    opts: GenOptions = None,
) -> None:
    """Make images from a text prompt (and a starting picture with --init)."""
    from kcli.cli.run import generate_and_save, settings_for

    with user_errors():
        if init is None:
            settings = settings_for(opts, prompt)
            generate_and_save(opts, settings, prompt, lambda k, s, p: k.generate(s, on_progress=p))
            return
        from kcli.pipelines.images import load_image
        from kcli.pipelines.kandinsky import check_strength

        check_strength(strength)
        picture = load_image(init, "--init image")
        settings = settings_for(opts, prompt, picture.size)
        generate_and_save(opts, settings, prompt,
                          lambda k, s, p: k.image_to_image(picture, s, strength=strength, on_progress=p))
