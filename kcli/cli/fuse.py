"""``kandinsky fuse`` and ``kandinsky vary``: mixes of texts and pictures, and variations of a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.cli.options import SAMPLING, GenOptions, generation_options, resolve
from kcli.cli.output import IMAGE_SUFFIXES, slug
from kcli.errors import KandinskyError


def classify(item: str, force: str | None) -> tuple[str, str]:
    """("text" | "image", value). ``text:``/``image:`` prefixes win, then --text/--image, then: an existing
    file (or a name with an image suffix) is an image, anything else a text."""
    for kind in ("text", "image"):
        if item.startswith(kind + ":"):
            return kind, item[len(kind) + 1:]
    if force:
        return force, item
    path = Path(item).expanduser()
    if path.is_file() or (path.suffix.lower() in IMAGE_SUFFIXES and " " not in item):
        return "image", item
    return "text", item


def parse_weights(spec: str | None, count: int) -> list[float]:
    """Comma-separated weights, normalised to sum 1 (equal when not given)."""
    if spec is None:
        return [1.0 / count] * count
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise KandinskyError(f"--weights {spec!r}: give numbers separated by commas, e.g. 0.3,0.7") from None
    if len(weights) != count:
        raise KandinskyError(f"--weights has {len(weights)} value(s) for {count} item(s)")
    if any(w < 0 for w in weights):
        raise KandinskyError(f"--weights must not be negative: {spec}")
    total = sum(weights)
    if total <= 0:
        raise KandinskyError("--weights add up to 0: give at least one item a positive weight")
    return [w / total for w in weights]


def _mix(items: list[tuple[str, str]], weights: list[float], opts: GenOptions, name: str, mode: str) -> None:
    from kcli.cli import render
    from kcli.cli.run import run
    from kcli.pipelines.images import load_image

    if opts.prompts_file:
        raise KandinskyError(f"{mode} takes its items as arguments, not from --prompts-file")
    opts = resolve(opts)
    loaded = [value if kind == "text" else load_image(value) for kind, value in items]
    if not opts.quiet:
        render.info("weights: " + ", ".join(f"{kind} {value!r} {w:.3f}" for (kind, value), w in zip(items, weights)))
    inputs = {"items": [f"{k}:{Path(v).resolve() if k == 'image' else v}" for k, v in items], "weights": weights}
    run(opts, mode=mode, prompt=name, make=lambda k, s, p: k.fuse(loaded, weights, s, on_progress=p), inputs=inputs)


@app.command()
@generation_options
def fuse(
    items: Annotated[list[str], typer.Argument(help="Texts and image files to mix (prefix text: or image: to force).")],
    weights: Annotated[Optional[str], typer.Option("--weights", help="Comma-separated weights, one per item; "
                                                   "normalised to sum 1. Default: equal.", rich_help_panel=SAMPLING)] = None,
    text: Annotated[bool, typer.Option("--text", help="Treat every item as text.", rich_help_panel=SAMPLING)] = False,
    image: Annotated[bool, typer.Option("--image", help="Treat every item as an image file.",
                                        rich_help_panel=SAMPLING)] = False,
    opts: GenOptions = None,
) -> None:
    """Draw a weighted mix of texts and pictures (their CLIP image embeddings)."""
    with user_errors():
        if text and image:
            raise KandinskyError("--text and --image exclude each other")
        parsed = [classify(i, "text" if text else "image" if image else None) for i in items]
        w = parse_weights(weights, len(parsed))
        name = "-".join(slug(v if k == "text" else Path(v).stem, 24) for k, v in parsed)
        _mix(parsed, w, opts, name, "fuse")


@app.command()
@generation_options
def vary(
    image: Annotated[Path, typer.Argument(help="The picture to make variations of.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Nudge the variations towards a text.",
                                                  rich_help_panel=SAMPLING)] = None,
    prompt_weight: Annotated[float, typer.Option("--prompt-weight", help="With --prompt: the text's share, "
                                                 "in [0, 1].", rich_help_panel=SAMPLING)] = 0.25,
    opts: GenOptions = None,
) -> None:
    """Make variations of a picture (its CLIP image embedding, optionally mixed with a prompt)."""
    with user_errors():
        items = [("image", str(image))]
        weights = [1.0]
        if prompt:
            if not 0 <= prompt_weight <= 1:
                raise KandinskyError(f"--prompt-weight must be in [0, 1], got {prompt_weight}")
            items.append(("text", prompt))
            weights = [1.0 - prompt_weight, prompt_weight]
        _mix(items, weights, opts, f"{slug(image.stem, 32)}-variation", "vary")
