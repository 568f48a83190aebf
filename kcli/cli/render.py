"""Everything the user sees: the only module that touches Rich.

Human output goes to stderr, so stdout stays free for what scripts read. On a terminal one live
display shows each stage with its bar, rate and ETA; elsewhere (pipes, CI logs) each stage prints
one plain line when it ends.
"""

from __future__ import annotations

import functools

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

STAGES = {"load": "loading models", "prior": "prior", "decoder": "decoder", "decode": "MoVQ decode"}


@functools.cache
def err_console() -> Console:
    return Console(stderr=True)


def note(message: str) -> None:
    err_console().print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    err_console().print(message, highlight=False, soft_wrap=True)


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

    def image(self, index: int, count: int) -> None:
        """Start the stages of a new image."""
        self.prefix = f"[{index}/{count}] " if count > 1 else ""
        self._tasks = {k: v for k, v in self._tasks.items() if k == "load"}

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
