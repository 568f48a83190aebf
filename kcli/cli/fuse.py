"""``kandinsky fuse`` and ``kandinsky vary``: mixes of texts and pictures, and variations of a picture."""

# no `from __future__ import annotations`: the settings dataclass below is read for its real field types
from dataclasses import dataclass
from pathlib import Path

from kcli.cli.flags import Values, generating
from kcli.cli.output import slug
from kcli.errors import KandinskyError
from kcli.pipelines.imagemeta import IMAGE_SUFFIXES
from kcli.pipelines.requests import Fuse, Vary
from kcli.pipelines.settings import INPUT, setting


@dataclass(frozen=True, kw_only=True)
class Kinds:
    """The command line's own settings: how ``fuse`` tells texts from pictures."""

    text: bool = setting(False, "Treat every item as text.", panel=INPUT, file=False)
    image: bool = setting(False, "Treat every item as an image file.", panel=INPUT, file=False)


def classify(item: str, force: str | None) -> str | Path:
    """A text (str) or a picture (Path). ``text:``/``image:`` prefixes win, then --text/--image, then: an
    existing file (or a name with an image suffix) is a picture, anything else a text."""
    for kind in ("text", "image"):
        if item.startswith(kind + ":"):
            value = item[len(kind) + 1:]
            return value if kind == "text" else Path(value)
    if force:
        return item if force == "text" else Path(item)
    path = Path(item).expanduser()
    if path.is_file() or (path.suffix.lower() in IMAGE_SUFFIXES and " " not in item):
        return path
    return item


@generating("fuse", Fuse, Kinds, doc="Draw a weighted mix of texts and pictures (their CLIP image embeddings).")
def fuse(values: Values) -> None:
    from kcli.cli.run import pick, run

    if values["text"] and values["image"]:
        raise KandinskyError("--text and --image exclude each other")
    force = "text" if values["text"] else "image" if values["image"] else None
    items = tuple(classify(i, force) for i in values["items"])
    title = "-".join(slug(v if isinstance(v, str) else v.stem, 24) for v in items)
    run(values, (Fuse,), lambda _, s: pick(Fuse, {**s, "items": items}, title=title), batchable=False)


@generating("vary", Vary, doc="Make variations of a picture (its CLIP image embedding, optionally mixed with a "
            "prompt).")
def vary(values: Values) -> None:
    from kcli.cli.run import pick, run

    run(values, (Vary,), lambda _, s: pick(Vary, s), batchable=False)
