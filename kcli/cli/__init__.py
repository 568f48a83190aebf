"""The ``kandinsky`` command line. Imports no torch at start-up: commands import the pipeline lazily."""

from __future__ import annotations

from typing import Annotated

import typer

from kcli import __version__

app = typer.Typer(
    name="kandinsky",
    help="Kandinsky 2.x text-to-image on your own GPU or CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kandinsky {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Kandinsky 2.x text-to-image on your own GPU or CPU."""


# Each module registers its commands; the order here is the order in --help.
from kcli.cli import generate  # noqa: E402,F401,I001
from kcli.cli import fuse, inpaint  # noqa: E402,F401
from kcli.cli import score  # noqa: E402,F401
from kcli.cli import serve  # noqa: E402,F401
from kcli.cli import info, models, prior  # noqa: E402,F401


def main() -> None:
    app()
