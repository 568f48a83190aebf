"""Progress as people keep it: the only place that draws bars.

On a terminal: one bar per stage (downloads, loading, prior, decoder, MoVQ decode, CLIP score) with its rate
and time; the bars stay when the work ends, and a summary follows with every saved path, seed and time.
Off a terminal (pipes, CI logs): one line per stage when it ends, with its steps, it/s and seconds. Under
``--best-of`` every line and bar names the candidate it is on. ``Display`` is the listener that
``kcli.pipelines`` reports to (``kcli.pipelines.events``).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
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

from kcli.cli.render import _short, err_console, escape, human_size, note, out_console

STAGES = {"load": "loading models", "prior": "prior", "decoder": "decoder", "decode": "MoVQ decode",
          "score": "CLIP score", "embed": "embedding pairs"}


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
            self.console.print(f"{escape(name)}: {human_size(self._sizes.get(name, 0))}", highlight=False, soft_wrap=True)



class Display(DownloadView):
    """Draws a command's downloads, stages and saved images; see the module docstring. ``quiet`` draws nothing
    (saved paths still go to stdout); ``json`` prints one JSON object per image instead of its path."""

    def __init__(self, quiet: bool = False, json: bool = False):
        super().__init__(quiet or json)
        self.json = json
        self.stdout_live = self.live and out_console().is_terminal  # paths wait for the summary, not the bars
        self._bars_: Progress | None = None
        self._stages: dict[str, int] = {}
        self._began: dict[str, float] = {}
        self.prefix = ""  # the job, the image and the best-of candidate a stage belongs to
        self.job_prefix = ""
        self.image_prefix = ""
        self._last = time.perf_counter()  # the latest event: where the next stage's time starts
        self.saved_rows: list[tuple[str, str, str, str]] = []

    def _stage_bars(self) -> Progress:
        if self._bars_ is None:
            if self._progress is not None:  # the downloads are over: their bars stay, above the stages'
                self._progress.stop()
                self._progress = None
            self._bars_ = Progress(
                TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[cyan]{task.fields[rate]:>10}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False)
            self._bars_.start()
        return self._bars_

    def _bars(self) -> Progress:
        if self._bars_ is not None:  # a download once the work began (a depth model): the stages' bars stay
            self._bars_.stop()
            self._bars_, self._stages = None, {}
        return super()._bars()

    # ---- events from kcli.pipelines ------------------------------------------------------------------------

    def note(self, message: str) -> None:
        if not self.quiet:
            if self._bars_ is not None:
                self._bars_.console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)
            else:
                note(message)

    def image(self, index: int, count: int, seed: int, candidate: tuple[int, int] | None = None) -> None:
        """An image (or a best-of candidate) starts: its stages start over, labelled with it."""
        self.image_prefix = self.prefix = self.job_prefix + (f"[{index}/{count}] " if count > 1 else "")
        if candidate is not None:
            self.prefix += f"candidate {candidate[0]}/{candidate[1]} (seed {seed}) "
        self._last = time.perf_counter()

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        prefix = "" if stage == "load" else self.image_prefix if stage == "score" else self.prefix
        label = prefix + STAGES.get(stage, stage)
        now = time.perf_counter()
        if stage not in self._began:  # samplers report after each step: the stage began with the last event
            self._began[stage] = now if done == 0 else self._last
        self._last, elapsed = now, now - self._began[stage]
        if done == total:
            del self._began[stage]
        if not self.live:
            if done == total:
                self.console.print(self._line(stage, label, total, elapsed), highlight=False, soft_wrap=True)
            return
        bars = self._stage_bars()
        if stage not in self._stages:
            self._stages[stage] = bars.add_task(label, total=total, rate="")
        task = self._stages[stage]
        if done == 0 or label != bars.tasks[[t.id for t in bars.tasks].index(task)].description:
            bars.reset(task, total=total, description=label, rate="")
        bars.update(task, completed=done, total=total)
        if done and elapsed > 0:
            bars.update(task, rate=_rate(done, elapsed))

    __call__ = progress  # a plain (stage, done, total) callback too

    @staticmethod
    def _line(stage: str, label: str, total: int, seconds: float) -> str:
        if stage == "load":
            return f"{label}: done in {seconds:.1f} s"
        if stage == "decode":
            return f"{label}: {seconds:.1f} s"
        unit = {"prior": "steps", "decoder": "steps", "score": "candidates"}.get(stage, "done")
        return f"{label}: {total} {unit}, {_rate(total, seconds)}, {seconds:.1f} s"

    # ---- what the command line adds ------------------------------------------------------------------------

    def job(self, index: int, count: int, prompt: str) -> None:
        """A job of a batch starts."""
        if count == 1 or self.quiet:
            return
        self.job_prefix = f"job {index}/{count} "
        if not self.live:
            self.console.print(f"job {index}/{count}: {escape(_short(prompt, 60))}", highlight=False)

    def jobs(self, done: int, total: int, images: int, seconds: float) -> None:
        """A batch's jobs finishing elsewhere (on a cluster): jobs done of all, images per minute, time left."""
        if self.quiet:
            return
        rate = f"{images * 60 / seconds:.1f} img/min" if seconds > 0 else ""
        if self.live:
            bars = self._stage_bars()
            if "jobs" not in self._stages:
                self._stages["jobs"] = bars.add_task("jobs", total=total, rate="")
            bars.update(self._stages["jobs"], completed=done, rate=rate)
            return
        left = round((total - done) * seconds / done) if done else 0
        self.console.print(f"jobs {done}/{total}, {images} images, {rate}, ETA {left // 60}:{left % 60:02d}",
                           highlight=False)

    def saved(self, path: Path, result, job_line: int = 0) -> None:
        """An image is on disk: its path to stdout at once (or, on a terminal, in the summary)."""
        seconds = sum(result.timings.values())
        score = f"{result.score:.4f}" if result.score is not None else ""
        self.saved_rows.append((str(path), str(result.seed), f"{seconds:.1f}", score))
        if self.json:
            import json

            typer.echo(json.dumps({"path": str(path), "seed": result.seed, "prompt": result.request.label,
                                   "job": job_line, "width": result.image.width, "height": result.image.height,
                                   "timings": result.metadata.get("timings", {})}))
        elif not self.stdout_live:
            typer.echo(str(path))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self._bars_ is not None:
            self._bars_.stop()  # the bars stay on screen
            self._bars_ = None
        if self.live and self.saved_rows:
            self._summary()

    def _summary(self) -> None:
        t = Table("saved", "seed", "s", *(["score"] if any(r[3] for r in self.saved_rows) else []), box=None,
                  pad_edge=False, header_style="bold")
        for row in self.saved_rows:
            t.add_row(*map(escape, row[:3 if not any(r[3] for r in self.saved_rows) else 4]))
        (out_console() if self.stdout_live else self.console).print(t, highlight=False)


def _rate(done: int, seconds: float) -> str:
    speed = done / seconds if seconds > 0 else 0.0
    return f"{speed:.2f} it/s" if speed >= 1 or speed == 0 else f"{1 / speed:.2f} s/it"
