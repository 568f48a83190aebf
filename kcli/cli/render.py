"""What the user reads: messages, tables and records. With ``display.py``, the only modules that touch Rich.

Human output goes to stderr, so stdout stays free for what scripts read (paths, JSON, tables asked for).
"""

from __future__ import annotations

import functools
import unicodedata

from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.table import Table

from kcli.pipelines.store import human_size  # noqa: F401 (sizes are shown by several commands)

BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # text direction overrides


def json_text(value, **dumps) -> str:
    """``value`` as JSON that keeps non-ASCII text readable yet is safe on a terminal: the control characters
    JSON leaves raw (DEL, the C1 codes such as U+009B, a terminal's CSI) and text direction overrides become
    ``\\uXXXX`` escapes, which every JSON reader turns back into the same text."""
    import json

    text = json.dumps(value, ensure_ascii=False, **dumps)
    if text.isprintable():
        return text
    return "".join(f"\\u{ord(c):04x}" if c not in "\n" and (unicodedata.category(c) == "Cc" or c in BIDI) else c
                   for c in text)


def printable(text) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage returns, bells, C1 codes)
    and text direction overrides shown as ``\\x1b``-style escapes; newlines and tabs kept. Everything printed
    that comes from outside (prompts, metadata of images, hub listings, file names) goes through here."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c in "\n\t" or (unicodedata.category(c) != "Cc" and c not in BIDI):
            out.append(c)
        else:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return "".join(out)


def escape(text) -> str:
    """Text for Rich: control characters made visible (``printable``), then markup escaped."""
    return _markup_escape(printable(text))


@functools.cache
def err_console() -> Console:
    return Console(stderr=True)


@functools.cache
def out_console() -> Console:
    """Standard output: what a command produces (tables, paths), for people and scripts alike."""
    return Console(soft_wrap=True)


def note(message: str) -> None:
    err_console().print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    err_console().print(escape(message), highlight=False, soft_wrap=True)


def table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A borderless table on stdout (no colours when stdout is not a terminal)."""
    t = Table(*columns, title=escape(title) if title else None, box=None, pad_edge=False, header_style="bold",
              title_justify="left")
    for row in rows:
        t.add_row(*map(escape, row))
    out_console().print(t, highlight=False)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def error(message: str) -> None:
    """A job's failure inside a batch (the batch goes on)."""
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def summary(outcomes) -> None:
    """The end of a batch: one row per job."""
    t = Table("line", "prompt", "status", "s", "output", title="batch", box=None, pad_edge=False,
              header_style="bold", title_justify="left")
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}
    t.columns[4].overflow = "fold"  # the last column: an error is printed whole, wrapped, never cut
    for o in outcomes:
        where = _short(", ".join(p.name for p in o.paths), 60) if o.paths else (o.error or "")
        t.add_row(str(o.job.line), escape(_short(o.job.prompt or "", 40)), f"[{colour[o.status]}]{o.status}[/]",
                  f"{o.seconds:.1f}", escape(where))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    err_console().print(t)
    err_console().print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)


def key_values(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(show_header=False, title=escape(title), box=None, pad_edge=False, title_justify="left")
    for k, v in rows:
        t.add_row(f"[bold]{escape(str(k))}[/]", escape(str(v)))
    out_console().print(t)


def metadata_table(path, meta: dict) -> None:
    """How an image was made. The metadata is text anyone can edit: a section or value of another type is
    shown as it is, never trusted to be what kandinsky writes."""
    def section(name) -> dict:
        value = meta.get(name)
        return value if isinstance(value, dict) else {}

    s = section("settings")
    rows = [("prompt", s.get("prompt", "")), ("negative", s.get("negative") or "-"), ("mode", meta.get("mode")),
            ("seed", s.get("seed")), ("size", f"{s.get('width')}x{s.get('height')}"),
            ("decoder", f"{s.get('steps')} steps, guidance {s.get('guidance')}, sampler {meta.get('sampler')}"),
            ("prior", f"{s.get('prior_steps')} steps, guidance {s.get('prior_guidance')}"),
            ("model", f"{meta.get('model')} ({section('checkpoints').get('version', '?')})"),
            ("device", f"{meta.get('device')} {meta.get('dtype')}, offload {meta.get('offload')}")]
    rows += [(k, v) for k, v in section("inputs").items()]
    if section("timings"):
        rows.append(("timings", ", ".join(f"{k} {v:.1f}s" if isinstance(v, (int, float)) else f"{k} {v}"
                                          for k, v in section("timings").items())))
    rows.append(("made by", ", ".join(f"{k} {v}" for k, v in section("versions").items())))
    key_values(str(path), rows)


def settings_table(path: str, settings: dict, presets: list[str]) -> None:
    rows = [(k, repr(v)) for k, v in sorted(settings.items())] or [("(empty)", "built-in defaults apply")]
    rows.append(("presets", ", ".join(presets)))
    key_values(path, rows)
