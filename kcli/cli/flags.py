"""Command-line flags derived from the settings' one declaration (``kcli.pipelines.settings``).

``@generating("generate", TextToImage, ImageToImage, size=...)`` makes a Typer command whose parameters are
the settings of those requests and of the ``Loading`` and ``Output`` groups that the command offers (a
setting's ``commands`` names them). The command itself is a plain function of one ``Values``: the flags'
values by setting name, and which of them were given on the command line. Typer reads the generated
function's signature; nothing is evaluated and no existing signature is rewritten.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.output import FIELDS
from kcli.pipelines.settings import GENERATING, Loading, Output, base_type, settings_of, spec_of

CLI_TYPES = {str: str, int: int, float: float, bool: bool, Path: Path, tuple: str, list: str}


@dataclass(frozen=True)
class Values:
    """The flags' values by setting name, and the names given on the command line."""

    values: dict
    given: frozenset = field(default_factory=frozenset)

    def __getitem__(self, name: str):
        return self.values[name]

    def get(self, name: str, default=None):
        return self.values.get(name, default)


def offered(command: str, *classes) -> list:
    """The settings a command offers: those of ``classes`` and of the load and output groups, each once."""
    seen, out = set(), []
    for cls in (*classes, Loading, Output):
        for f in settings_of(cls):
            spec = spec_of(f)
            if f.name in seen or (spec.commands is not None and command not in spec.commands):
                continue
            seen.add(f.name)
            out.append(f)
    return out


def _parameter(f, fill: dict) -> inspect.Parameter:
    spec = spec_of(f)
    kind = base_type(f.type)
    cli_type = CLI_TYPES.get(kind, str)
    optional = f.default is None or kind in (tuple, list)
    default = None if f.default is dataclasses.MISSING else f.default
    help_text = spec.help.format(**fill) if "{" in spec.help else spec.help
    if spec.argument:
        many, required = kind in (tuple, list), kind in (tuple, list, Path)  # a prompt may come from a file
        hint = list[str] if many else cli_type
        info = typer.Argument(help=help_text, show_default=False)
        return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=... if required else None,
                                 annotation=Annotated[hint if required else Optional[hint], info])
    decls = [spec.flag or ("--" + f.name.replace("_", "-") + (f"/--no-{f.name.replace('_', '-')}"
                                                              if kind is bool and default is None else ""))]
    if spec.short:
        decls.append(spec.short)
    # bounds are checked by the schema (settings.check_ranges), with one message for flags, files and requests
    info = typer.Option(*decls, help=help_text, rich_help_panel=spec.panel)
    hint = Optional[cli_type] if optional else cli_type
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])


def convert(f, value):
    """A flag's text to the setting's type: comma-separated numbers for a tuple of floats, lists as tuples."""
    kind = base_type(f.type)
    if value is None or kind not in (tuple, list):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    from kcli.errors import KandinskyError

    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise KandinskyError(f"--{f.name}: give numbers separated by commas, e.g. 0.3,0.7") from None


def generating(name: str, *classes, size: str = "512", doc: str, into: typer.Typer = app):
    """Register command ``name``, offering the settings of ``classes`` (see the module docstring)."""
    fields = offered(name, *classes)
    assert name in GENERATING or classes

    def register(run):
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        fill = {"size": size, "fields": " ".join(f"{{{n}}}" for n in FIELDS)}
        made = [_parameter(f, fill) for f in fields]
        params += [p for p in made if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        params += [p for p in made if p.kind is inspect.Parameter.KEYWORD_ONLY]

        def command(ctx: typer.Context, **flags):
            by_name = {f.name: f for f in fields}
            given = frozenset(n for n in flags if (src := ctx.get_parameter_source(n)) is not None
                              and src.name not in ("DEFAULT", "DEFAULT_MAP"))
            from kcli.cli.errors import user_errors

            with user_errors():
                values = {n: convert(by_name[n], v) for n, v in flags.items()}
                return run(Values(values, given))

        command.__signature__ = inspect.Signature(params)
        command.__doc__ = doc
        command.__name__ = run.__name__
        into.command(name)(command)
        return run

    return register
