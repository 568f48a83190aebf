"""``--ray``: a batch's prepared jobs run on a Ray cluster (``kcli.pipelines.raybatch``), saved by the workers
with this command line's own ``save_image`` and reported like a local batch's: each saved path, each failure,
the summary. Imported only when --ray is given, so Ray stays an optional extra."""

from __future__ import annotations

import functools
import time

from kcli.cli import output as out
from kcli.cli import render
from kcli.cli.display import Display
from kcli.pipelines.settings import check_ranges


def run_on_ray(output, load, todo: list, outcomes: dict) -> None:
    """Run ``todo`` ((index, job, request, file names) as ``run`` prepared them) and fill ``outcomes``."""
    from kcli.cli.run import Outcome
    from kcli.pipelines import raybatch

    check_ranges(output)  # --ray-workers
    jobs = {j: job for j, job, _, _ in todo}
    tasks = [raybatch.Task(j, request, names) for j, _, request, names in todo]
    save = functools.partial(out.save_image, overwrite=output.overwrite)
    started, finished_jobs, images = time.perf_counter(), 0, 0
    with Display(output.quiet, output.json) as display:

        def finished(done) -> None:
            nonlocal finished_jobs, images
            job = jobs[done.index]
            if done.error:
                render.error(done.error)
                outcomes[done.index] = Outcome(job, "failed", [], done.seconds, done.error)
            else:
                if done.attempt > 1:
                    display.note(f"line {job.line}: made on try {done.attempt}, after its worker died")
                for path, result in zip(done.paths, done.results):
                    display.saved(path, result, job.line)
                outcomes[done.index] = Outcome(job, "ok", done.paths, done.seconds)
                images += len(done.paths)
            finished_jobs += 1
            display.jobs(finished_jobs, len(todo), images, time.perf_counter() - started)

        raybatch.run(tasks, load, save, folder=out.folder_of(output.output), address=output.ray,
                     workers=output.ray_workers, inpainting=any(r.inpainting for _, _, r, _ in todo),
                     hinted=any(r.hinted for _, _, r, _ in todo), events=display, on_done=finished)
