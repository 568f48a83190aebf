"""``kandinsky info``, ``kandinsky config`` and ``kandinsky doctor``: answers without loading a model.

``info`` and ``config`` never import torch, so they answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors

config_app = typer.Typer(help="Where the user config lives and what it says.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command()
def info(
    image: Annotated[Path, typer.Argument(help="An image made by kandinsky.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full metadata as JSON.")] = False,
) -> None:
    """Show how an image was made (prompt, seed, settings, model), from its metadata."""
    from kcli.cli import render
    from kcli.pipelines import imagemeta as metadata

    with user_errors():
        meta = metadata.read(image)
        if as_json:
            typer.echo(render.json_text(meta, indent=2, sort_keys=True))
            return
        render.metadata_table(image, meta)


@config_app.command("path")
def config_path() -> None:
    """Print the path of the user config file (it need not exist)."""
    from kcli.cli.config import config_path as path

    typer.echo(str(path()))


@config_app.command("show")
def config_show() -> None:
    """Print the user config's settings, and the presets there are."""
    from kcli.cli import config, render

    with user_errors():
        render.settings_table(str(config.config_path()), config.load_config(), config.preset_names())


@app.command()
def doctor() -> None:
    """Versions, devices, GPU memory, the cache and the hub, and the memory level --memory auto picks."""
    from kcli.cli import render

    with user_errors():
        from kcli.pipelines import system_report

        render.key_values("kandinsky doctor", system_report())
