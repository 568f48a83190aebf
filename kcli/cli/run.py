"""What every generating command does around its mode: seeds, output paths, loading, progress, saving.

Order matters for the user: every check that needs no model (inputs, flags, output names) runs
before the multi-gigabyte load, and each finished image is saved before the next one starts.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import typer

from kcli.cli import output as out
from kcli.cli import render
from kcli.cli.errors import EXIT_INTERRUPTED, fail
from kcli.cli.options import GenOptions

DEFAULT_SIZE = (512, 512)


def settings_for(opts: GenOptions, prompt: str, size: tuple[int, int] = DEFAULT_SIZE):
    """The per-call settings; the seed is fixed here so file names are known before any work."""
    from kcli.pipelines.kandinsky import Settings

    base = opts.seed if opts.seed is not None else secrets.randbits(32)
    settings = Settings(prompt, negative=opts.negative, seed=base, width=opts.width or size[0],
                        height=opts.height or size[1], steps=opts.steps, prior_steps=opts.prior_steps,
                        guidance=opts.guidance, prior_guidance=opts.prior_guidance, num_images=opts.num_images)
    settings.check()
    return settings


def load_options(opts: GenOptions, inpainting: bool = False):
    """The checkpoint folders (fetched into the cache if they come from the hub, with a bar per file),
    device and dtype."""
    from kcli.loading.hub import resolve_checkpoints
    from kcli.pipelines.kandinsky import LoadOptions

    try:
        with render.DownloadView(opts.quiet) as progress:
            prior, decoder = resolve_checkpoints(opts.model, opts.prior, opts.decoder, inpainting=inpainting,
                                                 offline=opts.offline, progress=progress)
    except KeyboardInterrupt:
        raise fail("interrupted: the partial download is kept and resumes next time", EXIT_INTERRUPTED) from None
    return LoadOptions(prior, decoder, device=opts.device, dtype=opts.dtype)


def generate_and_save(opts: GenOptions, settings, name: str, mode: Callable[..., Iterator],
                      load=None) -> None:
    """Load the models, run ``mode(kandinsky, settings, on_progress)`` and save each image as it comes."""
    from kcli.pipelines.kandinsky import Kandinsky

    seeds = [settings.seed + i for i in range(settings.num_images)]
    paths = out.plan_outputs(opts.output, name, seeds, opts.overwrite)
    if opts.seed is None and not opts.quiet:
        render.info(f"seed: {settings.seed}")
    load = load or load_options(opts)
    with render.ProgressView(opts.quiet) as view:
        k = Kandinsky.load(load, on_progress=view)
        note = k.plan(settings).note()
        if note and not opts.quiet:
            render.note(note)
        view.image(1, settings.num_images)
        for i, (result, path) in enumerate(zip(mode(k, settings, view), paths)):
            out.save_image(result.image, path)
            typer.echo(str(path))
            view.image(i + 2, settings.num_images)
