"""Everything the user sees: the only module that touches Rich.

Human output goes to stderr, so stdout stays free for what scripts read. On a terminal one live
display shows each stage with its bar, rate and ETA; elsewhere (pipes, CI logs) each stage prints
one plain line when it ends.
"""

from __future__ import annotations

import functools
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from kcli.loading.download import human_size

STAGES = {"load": "loading models", "prior": "prior", "decoder": "decoder", "decode": "MoVQ decode",
          "score": "CLIP score"}


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


class ProgressView:
    """Receives ``(stage, done, total)`` callbacks from the pipeline and draws them."""

    def __init__(self, quiet: bool = False):
        self.console = err_console()
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.prefix = ""
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[cyan]{task.fields[rate]:>10}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    job_prefix = ""

    def job(self, index: int, count: int, prompt: str) -> None:
        """Start a job of a batch: one bar for the batch, and the job's stages below it."""
        if count == 1 or self.quiet:
            return
        self.job_prefix = f"job {index}/{count} "
        if self._progress is None:
            self.console.print(f"job {index}/{count}: {escape(_short(prompt, 60))}", highlight=False)
            return
        if "batch" not in self._tasks:
            self._tasks["batch"] = self._progress.add_task("batch", total=count, rate="")
        self._progress.update(self._tasks["batch"], completed=index - 1)

    def image(self, index: int, count: int) -> None:
        """Start the stages of a new image (the previous image's bars make room)."""
        self.prefix = self.job_prefix + (f"[{index}/{count}] " if count > 1 else "")
        for stage in [k for k in self._tasks if k not in ("load", "batch")]:
            if self._progress is not None:
                self._progress.remove_task(self._tasks[stage])
            del self._tasks[stage]

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        label = STAGES.get(stage, stage) if stage == "load" else self.prefix + STAGES.get(stage, stage)
        if self._progress is None:
            if done == total:
                self.console.print(f"{label}: done", highlight=False)
            return
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(label, total=total, rate="")
        task = self._tasks[stage]
        self._progress.update(task, completed=done, total=total)
        speed = next(t.speed for t in self._progress.tasks if t.id == task)
        if speed:
            self._progress.update(task, rate=f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.2f} s/it")


def table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A borderless table on stdout (no colours when stdout is not a terminal)."""
    t = Table(*columns, title=escape(title) if title else None, box=None, pad_edge=False, header_style="bold",
              title_justify="left")
    for row in rows:
        t.add_row(*map(escape, row))
    out_console().print(t, highlight=False)


class DownloadView:
    """Receives a download's callbacks (``kcli.loading.download.Progress``) and draws them: the total before
    the first byte, then one bar per file with its size, speed and ETA. Off a terminal each file prints
    one line when it is done; ``quiet`` prints nothing."""

    def __init__(self, quiet: bool = False, verb: str = "downloading", lines: bool = True):
        self.console = err_console()
        self.quiet = quiet
        self.verb = verb
        self.lines = lines  # off a terminal, one line per finished file
        self.live = self.console.is_terminal and not quiet
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._drawn: dict[str, float] = {}

    def __enter__(self) -> DownloadView:
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}", style="cyan"), BarColumn(), DownloadColumn(binary_units=False),
                TransferSpeedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._progress.start()
        return self._progress

    def planned(self, what: str, files: int, todo: int, cached: int, folder) -> None:
        if self.quiet:
            return
        already = f", {human_size(cached)} already in the cache" if cached else ""
        self.console.print(escape(f"{self.verb} {what}: {human_size(todo)} ({files} files{already}) into {folder}"),
                           highlight=False, soft_wrap=True)

    def started(self, name: str, size: int, done: int) -> None:
        self._sizes[name] = size
        if self.live:
            self._tasks[name] = self._bars().add_task(_short(name), total=size, completed=done)

    def advanced(self, name: str, done: int) -> None:
        now = time.monotonic()
        if self.live and name in self._tasks and now - self._drawn.get(name, 0.0) >= 0.05:  # called per packet
            self._drawn[name] = now
            self._bars().update(self._tasks[name], completed=done)

    def finished(self, name: str) -> None:
        if self.quiet:
            return
        if self.live and name in self._tasks:
            self._bars().update(self._tasks[name], completed=self._sizes[name])
        elif not self.live and self.lines:
            self.console.print(f"{name}: {human_size(self._sizes.get(name, 0))}", highlight=False, soft_wrap=True)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def error(message: str) -> None:
    """A job's failure inside a batch (the batch goes on)."""
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def summary(outcomes) -> None:
    """The end of a batch: one row per job."""
    t = Table("line", "prompt", "status", "output", "s", title="batch", box=None, pad_edge=False,
              header_style="bold", title_justify="left")
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}
    for o in outcomes:
        where = ", ".join(p.name for p in o.paths) if o.paths else (o.error or "")
        t.add_row(str(o.job.line), escape(_short(o.job.prompt or "", 40)), f"[{colour[o.status]}]{o.status}[/]",
                  escape(_short(where, 60)), f"{o.seconds:.1f}")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    err_console().print(t)
    err_console().print(", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)


def key_values(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(show_header=False, title=escape(title), box=None, pad_edge=False, title_justify="left")
    for k, v in rows:
        t.add_row(f"[bold]{escape(str(k))}[/]", escape(str(v)))
    out_console().print(t)


def metadata_table(path, meta: dict) -> None:
    s = meta.get("settings", {})
    rows = [("prompt", s.get("prompt", "")), ("negative", s.get("negative") or "-"), ("mode", meta.get("mode")),
            ("seed", s.get("seed")), ("size", f"{s.get('width')}x{s.get('height')}"),
            ("decoder", f"{s.get('steps')} steps, guidance {s.get('guidance')}, sampler {meta.get('sampler')}"),
            ("prior", f"{s.get('prior_steps')} steps, guidance {s.get('prior_guidance')}"),
            ("model", f"{meta.get('model')} ({meta.get('checkpoints', {}).get('version', '?')})"),
            ("device", f"{meta.get('device')} {meta.get('dtype')}, offload {meta.get('offload')}")]
    rows += [(k, v) for k, v in meta.get("inputs", {}).items()]
    if meta.get("timings"):
        rows.append(("timings", ", ".join(f"{k} {v:.1f}s" for k, v in meta["timings"].items())))
    rows.append(("made by", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())))
    key_values(str(path), rows)


def settings_table(path: str, settings: dict, presets: list[str]) -> None:
    rows = [(k, repr(v)) for k, v in sorted(settings.items())] or [("(empty)", "built-in defaults apply")]
    rows.append(("presets", ", ".join(presets)))
    key_values(path, rows)
