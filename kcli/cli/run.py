"""What every generating command does: layer the settings, build the requests, open the model, save.

Order matters for the user: every check that needs no model (inputs, flags, output names) runs before
the multi-gigabyte load; the model opens once for a whole batch; each finished image is saved (whole,
with its metadata) before the next one starts; a failing job is reported and the others still run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from kcli.cli import config, render
from kcli.cli import output as out
from kcli.cli.display import Display
from kcli.cli.flags import Values
from kcli.errors import KandinskyError
from kcli.pipelines import Loading, Output, Request, batch, resume
from kcli.pipelines.settings import settings_of

Build = Callable[[str, dict], Request]  # (a job's prompt, its settings by name) -> the request


@dataclass
class Outcome:
    job: batch.Job
    status: str  # ok | skipped | failed
    paths: list[Path]
    seconds: float = 0.0
    error: str | None = None


def layered(values: Values, classes, recorded: dict | None = None) -> dict:
    """Defaults < user config < preset < ``recorded`` (``--from``) < flags given. A mode sized by its input
    picture keeps the picture's size unless -W/-H are given, whatever a preset or the config says."""
    files, _ = config.layered(values.get("preset"))
    resolved = dict(values.values)
    sized = any(c.sized_by_input for c in classes)
    for source in (files, recorded or {}):
        for key, value in source.items():
            if key in resolved and not (sized and key in ("width", "height") and source is files):
                resolved[key] = value
    resolved.update({n: values[n] for n in values.given})
    if resolved.get("output") is not None:
        resolved["output"] = Path(resolved["output"])
    if "clip_model" in values.given and "scorer" not in values.given:  # --clip-model implies --scorer openclip
        resolved["scorer"] = "openclip"
    return resolved


def pick(cls, values: dict, **extra):
    """An instance of the settings dataclass ``cls`` from the values of its fields."""
    names = {f.name for f in dataclasses.fields(cls)} if cls in (Loading, Output) else \
        {f.name for f in settings_of(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **extra)


def run(values: Values, classes: tuple, build: Build, *, recorded: dict | None = None,
        prompt: str | None = None, batchable: bool = True) -> None:
    """Run a command's jobs (one, or a prompts file's) and save every image; exit 1 if any job failed."""
    resolved = layered(values, classes, recorded)
    output = pick(Output, resolved)
    in_batch = batchable and output.prompts_file is not None
    if output.ray_workers is not None and not output.ray:
        raise KandinskyError("--ray-workers goes with --ray")
    if output.ray and not in_batch:
        raise KandinskyError("--ray runs the jobs of a --prompts-file")
    if output.ray and output.server:
        raise KandinskyError("give --ray or --server, not both")
    if in_batch:
        if prompt:
            raise KandinskyError("give either a prompt or --prompts-file, not both")
        jobs = batch.read_jobs(output.prompts_file, *classes)
    elif batchable and not prompt:
        raise KandinskyError("no prompt: give one, or --prompts-file FILE")
    else:
        jobs = [batch.Job(0, prompt or "")]

    # 1. everything that needs no model: requests, checks, names, what --resume finds done
    outcomes: dict[int, Outcome] = {}
    todo = []
    index = None
    if output.resume:  # read once, from the pictures' metadata only
        index = resume.Index(out.folder_of(output.output))
    for j, job in enumerate(jobs):
        try:
            request, paths, done = _prepare(resolved, output, job, build, in_batch, index)
        except KandinskyError as e:
            if not in_batch:
                raise
            render.error(str(e))
            outcomes[j] = Outcome(job, "failed", [], 0.0, str(e))
            continue
        outcomes[j] = Outcome(job, "skipped", paths) if done else None
        if not done:
            todo.append((j, job, request, paths))
    if output.dry_run:
        return _dry_run(pick(Loading, resolved), [r for _, _, r, _ in todo], output)
    if not in_batch and resolved.get("seed") is None and todo and not output.quiet:
        render.info(f"seed: {todo[0][2].seed}")

    # 2. open once, then each job; a failing job is reported and the others go on
    if todo and output.ray:  # the same jobs, names and saving on every GPU of a cluster
        from kcli.cli.cluster import run_on_ray

        run_on_ray(output, loading(resolved, todo), todo, outcomes)
    elif todo:
        load = loading(resolved, todo)
        with Display(output.quiet, output.json) as display:
            server = output.server or os.environ.get("KANDINSKY_SERVER")
            if server:  # the server's models do the work; files and metadata are written here as usual
                from kcli.serve.client import Remote

                k = Remote(server, api_key=os.environ.get("KANDINSKY_API_KEY"), events=display)
            else:
                from kcli.pipelines import Kandinsky, planned_size

                k = Kandinsky.open(**dataclasses.asdict(load), events=display,
                                   inpainting=any(r.inpainting for _, _, r, _ in todo),
                                   hinted=any(r.hinted for _, _, r, _ in todo),
                                   sizes=[planned_size(r) for _, _, r, _ in todo],
                                   zero_embed=any(r.negative is None for _, _, r, _ in todo))
            _make(k, todo, len(jobs), outcomes, output, display, in_batch)
    ordered = [outcomes[j] for j in sorted(outcomes)]
    if in_batch and not output.quiet:
        render.summary(ordered)
    if any(o.status == "failed" for o in ordered):
        raise typer.Exit(1)


def _dry_run(load: Loading, requests: list[Request], output: Output) -> None:
    """Print the memory plan (one JSON object with --json) without loading any weights."""
    import json

    from kcli.pipelines import plan_run

    choice = plan_run(load, requests)
    plan = choice.plan
    if output.json:
        typer.echo(json.dumps(plan.as_json()))
        return
    gib = 2**30
    tiles = "yes (MoVQ decode and encode in tiles)" if plan.tile else "no (whole MoVQ decode)"
    needs = f"{plan.peak.needs() / gib:.2f} GiB free (cold peak + margin)"
    rows = {"memory": f"{plan.memory} ({choice.reason})", "offload": plan.offload, "tile": tiles, "dtype": plan.dtype,
            "size": f"{plan.width}x{plan.height} (the largest planned)",
            "peak": f"{plan.peak.cold / gib:.2f} GiB cold (first run: the zero-image embedding computed), "
                    f"{plan.peak.warm / gib:.2f} GiB warm",
            "needs": needs + (f" of {plan.free / gib:.2f} GiB" if plan.free is not None else "")}
    for name, value in rows.items():
        typer.echo(f"{name + ':':9} {value}")


def loading(resolved: dict, todo: list) -> Loading:
    """What the jobs' model is opened with."""
    load = pick(Loading, resolved)
    if all(r.best_of == 1 for _, _, r, _ in todo):
        load = dataclasses.replace(load, scorer="prior")  # nothing to rank: load no scorer
    return load


def _make(k, todo: list, count: int, outcomes: dict, output: Output, display, in_batch: bool) -> None:
    """Every job's images, each saved as soon as it is made; jobs that differ only in prompt and seed share
    UNet calls (``Kandinsky.run_many``). In a batch a failing job is reported and the others go on."""
    saved: dict[int, list[Path]] = {t: [] for t in range(len(todo))}
    started: dict[int, float] = {}

    def begin(t: int) -> None:
        if t < len(todo) and t not in started:
            started[t] = time.perf_counter()
            display.job(todo[t][0] + 1, count, todo[t][1].prompt)

    def fail(t: int, e: Exception) -> None:
        if not in_batch:
            raise e
        msg = str(e) if isinstance(e, KandinskyError) else (
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        render.error(msg)
        j, job = todo[t][0], todo[t][1]
        outcomes[j] = Outcome(job, "failed", [], time.perf_counter() - started.get(t, time.perf_counter()), msg)

    begin(0)
    for t, got in k.run_many([request for _, _, request, _ in todo], keep_going=in_batch):
        j, job, _, names = todo[t]
        begin(t)
        if outcomes.get(j) is not None:  # failed already: its other images are dropped
            continue
        if isinstance(got, Exception):  # e.g. out of GPU memory on one large job: the others may still fit
            fail(t, got)
        else:
            try:
                saved[t].append(out.save_image(got.image, names[len(saved[t])], got.metadata,
                                               overwrite=output.overwrite))
                display.saved(saved[t][-1], got, job.line)
            except KandinskyError as e:
                fail(t, e)
                continue
            if len(saved[t]) == len(names):
                outcomes[j] = Outcome(job, "ok", saved[t], time.perf_counter() - started[t])
        if outcomes.get(j) is not None:
            begin(t + 1)


def _prepare(resolved: dict, output: Output, job: batch.Job, build: Build, in_batch: bool, index=None):
    """A job's request and file names, before any model is loaded; ``done`` when --resume finds it made."""
    if job.error:
        raise KandinskyError(job.error)
    values = {**resolved, **job.overrides}
    request = build(job.prompt, values)
    if values.get("seed") is None and in_batch:
        request = request.seeded(batch.job_seed(job))
    request = request.seeded()
    request.check()
    folder = out.folder_of(output.output)
    found = index.find(request, values) if index is not None else []
    if found and all(found):
        return request, found, True
    target = output.output if not (in_batch and output.output and output.output.suffix) else folder
    names = out.output_paths(target, job.overrides.get("name") or request.label, request.image_seeds(),
                             output.overwrite or any(found), template=values.get("name") or output.name)
    if any(found):  # some of its images are there: make the others, under the names the whole job gives them
        request, part = resume.remaining(request, found)
        names = names[part]
    return request, names, False
