"""What every generating command does around its mode: settings, jobs, loading, progress, saving.

Order matters for the user: every check that needs no model (inputs, flags, output names) runs before
the multi-gigabyte load; the models load once for a whole batch; each finished image is saved (whole,
with its metadata) before the next one starts; a failing job is reported and the others still run.
"""

from __future__ import annotations

import json
import secrets
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import typer

from kcli import __version__
from kcli.cli import batch, metadata, render
from kcli.cli import output as out
from kcli.cli.options import GenOptions
from kcli.loading.errors import KandinskyError

DEFAULT_SIZE = (512, 512)
SAMPLER_OF = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}  # the checkpoint's own, by our names
Mode = Callable[..., Iterator]  # (kandinsky, settings, on_progress) -> results


@dataclass
class Outcome:
    job: batch.Job
    status: str  # ok | skipped | failed
    paths: list[Path]
    seconds: float = 0.0
    error: str | None = None


def settings_for(opts: GenOptions, prompt: str, size: tuple[int, int] | None = None, overrides: dict | None = None,
                 seed: int | None = None):
    """Per-call settings from the resolved options, a job's overrides and its seed."""
    from kcli.pipelines.kandinsky import Settings

    o = {**overrides} if overrides else {}
    width, height = size or DEFAULT_SIZE
    settings = Settings(
        prompt, negative=o.get("negative", opts.negative), seed=o.get("seed", seed),
        width=o.get("width", opts.width or width), height=o.get("height", opts.height or height),
        steps=o.get("steps", opts.steps), prior_steps=o.get("prior_steps", opts.prior_steps),
        guidance=o.get("guidance", opts.guidance), prior_guidance=o.get("prior_guidance", opts.prior_guidance),
        num_images=o.get("num_images", opts.num_images), sampler=o.get("sampler", opts.sampler),
        tile=opts.tile, prior_mode=opts.prior_mode, linear_prior=opts.linear_prior, best_of=opts.best_of,
    )
    settings.check()
    return settings


def job_seed(opts: GenOptions, job: batch.Job, in_batch: bool) -> int:
    """--seed, else (in a batch) a seed derived from the prompt and its line so a rerun repeats, else random."""
    if opts.seed is not None:
        return opts.seed
    if in_batch:
        return zlib.crc32(f"{job.line}:{job.prompt}".encode()) & 0x7FFFFFFF
    return secrets.randbits(32)


def load_options(opts: GenOptions, inpainting: bool = False):
    """The checkpoint folders (fetched into the cache if they come from the hub, with a bar per file),
    device, dtype and the memory plan."""
    from kcli.loading.hub import resolve_checkpoints
    from kcli.pipelines.devices import resolve_device
    from kcli.pipelines.kandinsky import LoadOptions
    from kcli.pipelines.memory import plan

    device = resolve_device(opts.device)
    memory = plan(opts.memory, device)
    if device.type == "cuda" and not opts.quiet and opts.offload is None:
        render.info(memory.describe())
    with render.DownloadView(opts.quiet) as progress:
        prior, decoder = resolve_checkpoints(opts.model, opts.prior, opts.decoder, inpainting=inpainting,
                                             offline=opts.offline, progress=progress)
    return LoadOptions(prior, decoder, device=opts.device, dtype=opts.dtype, offload=opts.offload or memory.offload,
                       compile=opts.compile), (opts.tile if opts.tile is not None else memory.tile)


def scorer_choice(opts: GenOptions) -> str | None:
    """The open_clip model that ranks --best-of candidates, or None for the prior's own CLIP. --clip-model given
    on the command line implies --scorer openclip."""
    scorer = opts.scorer if "scorer" in opts.given or "clip_model" not in opts.given else "openclip"
    if scorer not in ("prior", "openclip"):
        raise KandinskyError(f"unknown scorer {scorer!r}: use prior or openclip")
    if scorer == "prior":
        return None
    from kcli.cli.score import default_clip_model

    return opts.clip_model or default_clip_model()


def load_scorer(opts: GenOptions, load):
    """The open_clip scorer for --best-of, fetched and built before the big models load (so a bad name fails
    at once); with offload it stays in CPU memory between uses."""
    name = scorer_choice(opts)
    if name is None or opts.best_of == 1:
        return None
    from kcli.pipelines.devices import resolve_device, resolve_dtype
    from kcli.pipelines.scoring import Scorer

    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    with render.DownloadView(opts.quiet) as progress:
        return Scorer.load(name, device=device if load.offload == "none" else "cpu", dtype=dtype,
                           offline=opts.offline, progress=progress)


def _meta(mode: str, settings, result, load, k, opts: GenOptions, inputs: dict) -> dict:
    import torch

    s = result.settings
    return {
        "mode": mode,
        "settings": {f: getattr(s, f) for f in ("prompt", "negative", "seed", "width", "height", "steps",
                                                "prior_steps", "guidance", "prior_guidance", "sampler",
                                                "prior_mode", "linear_prior")},
        "inputs": inputs,
        "model": opts.model or ("custom" if opts.prior or opts.decoder else "2.2"),
        "checkpoints": {"prior": opts.prior, "decoder": opts.decoder, "prior_path": str(load.prior),
                        "decoder_path": str(load.decoder), "version": k.decoder.version},
        "sampler": s.sampler or SAMPLER_OF.get(k.decoder.scheduler_config.get("_class_name"), "default"),
        "dtype": str(k.dtype).removeprefix("torch."), "device": str(k.device), "offload": load.offload,
        "versions": {"kandinsky": __version__, "torch": torch.__version__},
        "timings": {k2: round(v, 3) for k2, v in result.timings.items()},
        **({"score": {"clip": round(result.score, 5), "by": k.scored_by, "best_of": len(result.candidates),
                      "candidates": [[seed, round(sc, 5)] for seed, sc in result.candidates]}}
           if result.score is not None else {}),
    }


def done_before(folder: Path, mode: str, settings) -> list[Path]:
    """Images in ``folder`` whose metadata records this very job (for --resume)."""
    want = {"mode": mode, "prompt": settings.prompt, "seed": settings.seed, "steps": settings.steps,
            "width": settings.width, "height": settings.height, "negative": settings.negative}
    found = []
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.suffix.lower() not in out.IMAGE_SUFFIXES:
            continue
        try:
            meta = metadata.read(path)
        except KandinskyError:
            continue
        got = {"mode": meta.get("mode"), **{k: meta.get("settings", {}).get(k) for k in want if k != "mode"}}
        if got == want:
            found.append(path)
    return found


def _plan_job(opts: GenOptions, job: batch.Job, mode: str, size, in_batch: bool, hints: bool = False):
    """A job's settings and file names, before any model is loaded; None when --resume finds it done."""
    if job.error:
        raise KandinskyError(job.error)
    if "hint" in job.overrides:
        if not hints:
            raise KandinskyError(f"line {job.line}: a hint is for generate (with or without --init), not {mode}")
        from kcli.pipelines.hint import check_hint_file

        check_hint_file(job.overrides["hint"])
    seed = job.overrides.get("seed", job_seed(opts, job, in_batch))
    settings = settings_for(opts, job.prompt, size, job.overrides, seed=seed)
    folder = out.folder_of(opts.output)
    if opts.resume and (found := done_before(folder, mode, settings)):
        return settings, found, True
    target = opts.output if not (in_batch and opts.output and opts.output.suffix) else folder
    names = out.plan_outputs(target, job.overrides.get("name") or job.prompt,
                             [settings.seed + i * settings.best_of for i in range(settings.num_images)],
                             opts.overwrite, template=opts.name)  # with --best-of: the first candidate's seed
    return settings, names, False


def run(opts: GenOptions, *, mode: str, prompt: str | None, make: Callable[..., Iterator],
        size: tuple[int, int] | None = None, inpainting: bool = False, inputs: dict | None = None,
        load=None, hints: bool = False, hinted: bool = False) -> None:
    """Run one command's jobs (one, or a prompts file's) and save every image; exit 1 if any job failed.

    ``hints``: the mode takes a hint picture (a job's ``hint`` key, passed to ``make`` as ``hint=``);
    ``hinted``: the command gave one for every job."""
    in_batch = opts.prompts_file is not None
    if in_batch:
        if prompt and mode not in ("fuse", "vary"):
            raise KandinskyError("give either a prompt or --prompts-file, not both")
        jobs = batch.read_jobs(opts.prompts_file)
    elif prompt is None:
        raise KandinskyError("no prompt: give one, or --prompts-file FILE")
    else:
        jobs = [batch.Job(0, prompt)]

    # 1. everything that needs no model: settings, names, what --resume finds done
    outcomes: dict[int, Outcome] = {}
    todo = []
    for j, job in enumerate(jobs):
        try:
            settings, paths, done = _plan_job(opts, job, mode, size, in_batch, hints)
        except KandinskyError as e:
            if not in_batch:
                raise
            render.error(str(e))
            outcomes[j] = Outcome(job, "failed", [], 0.0, str(e))
            continue
        if done:
            outcomes[j] = Outcome(job, "skipped", paths)
        else:
            todo.append((j, job, settings, paths))
    if not in_batch and opts.seed is None and todo and not opts.quiet:
        render.info(f"seed: {todo[0][2].seed}")

    # 2. load once, then each job; a failing job is reported and the others go on
    if todo:
        load, tile = load or load_options(opts, inpainting)
        from kcli.pipelines.decoder import check_decoder_hint
        from kcli.pipelines.kandinsky import Kandinsky

        check_decoder_hint(load.decoder, hinted or any("hint" in job.overrides for _, job, _, _ in todo))

        scorer = load_scorer(opts, load)
        with render.ProgressView(opts.quiet or opts.json) as view:
            k = Kandinsky.load(load, on_progress=view)
            k.use_scorer(scorer)
            for j, job, settings, names in todo:
                started = time.perf_counter()
                view.job(j + 1, len(jobs), job.prompt)
                try:
                    settings = replace(settings, tile=tile)
                    note = k.plan(settings).note()
                    if note and not opts.quiet:
                        render.note(note)
                    saved = _make_and_save(k, make, settings, names, view, mode, load, opts, inputs or {}, job)
                    outcomes[j] = Outcome(job, "ok", saved, time.perf_counter() - started)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # e.g. out of GPU memory on one large job: the others may still fit
                    if not in_batch:
                        raise
                    msg = str(e) if isinstance(e, KandinskyError) else (
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    render.error(msg)
                    outcomes[j] = Outcome(job, "failed", [], time.perf_counter() - started, msg)
    ordered = [outcomes[j] for j in sorted(outcomes)]
    if in_batch and not opts.quiet:
        render.summary(ordered)
    if any(o.status == "failed" for o in ordered):
        raise typer.Exit(1)


def _make_and_save(k, make, settings, names, view, mode, load, opts, inputs, job) -> list[Path]:
    saved, extra = [], {}
    if "hint" in job.overrides:  # this job's own hint picture, recorded by name and sha256
        from kcli.pipelines.hint import hint_input

        extra["hint"], job_inputs = hint_input(job.overrides["hint"])
        inputs = {**inputs, **job_inputs}
    view.image(1, settings.num_images)
    for i, (result, path) in enumerate(zip(make(k, settings, view, **extra), names)):
        meta = _meta(mode, settings, result, load, k, opts, inputs)
        path = out.save_image(result.image, path, meta, overwrite=opts.overwrite)
        saved.append(path)
        if opts.json:
            typer.echo(json.dumps({"path": str(path), "seed": result.seed, "prompt": settings.prompt,
                                   "job": job.line, "width": result.image.width, "height": result.image.height,
                                   "timings": meta["timings"]}))
        else:
            typer.echo(str(path))
        view.image(i + 2, settings.num_images)
    return saved
