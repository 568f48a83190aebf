"""Jobs per minute of a batch on Ray (1 and 2 CPU workers) against the local batch, on tiny checkpoints.

    python benchmarks/ray_batch.py                    # 16 jobs, 64 px, 4 steps; writes the section "ray"
    python benchmarks/ray_batch.py --jobs 8 --no-write

Every run makes the same jobs (text to image, one image each, seeds 0..N-1) with the same code the command
line uses: the local batch opens the model once and runs the jobs one after the other
(``Kandinsky.open`` / ``run``, saved with ``kcli.cli.output.save_image``); the Ray runs hand them to
``kcli.pipelines.raybatch.run`` on a private local cluster (``--ray local``) of one CPU per worker. Tiny
checkpoints make a job cost little, so the figures show the overhead Ray adds per job and how two workers
share the machine's cores, not a GPU's speed. It prints the table and puts it in docs/benchmarks.md as the
section "ray" (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # kcli from this working tree; tiny.py

import sections


def checkpoints(folder: Path) -> tuple[Path, Path]:
    import tiny

    prior, decoder = folder / "prior", folder / "decoder"
    if not (prior / "model_index.json").exists() and not (prior / "prior").exists():
        tiny.make_prior_22(prior)
    if not (decoder / "unet").exists():
        tiny.make_decoder_22(decoder)
    return prior, decoder


def tasks(jobs: int, folder: Path, *, size: int, steps: int):
    from kcli.pipelines import TextToImage, raybatch

    return [raybatch.Task(i, TextToImage(prompt=f"a lighthouse, take {i}", seed=i, steps=steps, prior_steps=2,
                                         width=size, height=size), [folder / f"job-{i:03d}.png"])
            for i in range(jobs)]


def local(load, todo, threads: int | None) -> tuple[float, list[float]]:
    """(seconds in all, each job's seconds) of a local batch; ``threads``: torch's (None: its default)."""
    import dataclasses

    import torch

    from kcli.cli.output import save_image
    from kcli.pipelines import Kandinsky

    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        t0, each = time.perf_counter(), []
        k = Kandinsky.open(**dataclasses.asdict(load))
        for task in todo:
            started = time.perf_counter()
            for result, path in zip(k.run(task.request), task.paths):
                save_image(result.image, path, result.metadata)
            each.append(time.perf_counter() - started)
        return time.perf_counter() - t0, each
    finally:
        torch.set_num_threads(default)


def on_ray(load, todo, workers: int) -> tuple[float, list[float], float]:
    """(seconds in all, each job's seconds on its worker, seconds to start the cluster) of the same jobs on a
    private cluster of ``workers`` CPUs: a worker each, one CPU (so one torch thread) each."""
    from kcli.cli.output import save_image
    from kcli.pipelines import raybatch

    t0 = time.perf_counter()
    ray = raybatch.start_local(num_cpus=workers)  # what --ray local starts
    started = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        done = raybatch.run(todo, load, partial(save_image), folder=todo[0].paths[0].parent, address="local",
                            workers=workers)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    failed = [d.error for d in done if d.error]
    if failed:
        raise SystemExit(f"a job failed on Ray: {failed[0]}")
    return seconds, [d.seconds for d in done], started


def row(name: str, how: str, workers: int, seconds: float, each: list[float], started: float | None) -> str:
    working = sum(each) / workers  # the workers' time on jobs, side by side
    return (f"| {name} | {how} | {seconds:.1f} | {per_minute(len(each), seconds)} | "
            f"{sum(each) / len(each):.2f} | {per_minute(len(each), working)} | "
            f"{'-' if started is None else f'{started:.1f}'} |")


def per_minute(jobs: int, seconds: float) -> str:
    return f"{jobs * 60 / seconds:.0f}" if seconds > 0 else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kandinsky-ray-bench")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    os.environ.setdefault("KANDINSKY_HOME", str(args.workdir / "home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    prior, decoder = checkpoints(args.workdir / "checkpoints")

    import torch

    from kcli.pipelines import Loading

    load = Loading(prior=str(prior), decoder=str(decoder), device="cpu")
    load_avg = os.getloadavg()[0]
    lines = ["| run | workers | seconds | jobs/min | s/job | jobs/min working | cluster start s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        jobs = partial(tasks, args.jobs, size=args.size, steps=args.steps)
        local(load, jobs(Path(scratch) / "warm"), 1)  # caches the zero-image embedding before the timed runs
        for threads in (None, 1):
            seconds, each = local(load, jobs(Path(scratch) / f"local-{threads}"), threads)
            how = f"1 process, {threads or torch.get_num_threads()} torch thread{'s' if threads != 1 else ''}"
            lines.append(row("local batch", how, 1, seconds, each, None))
            print(lines[-1], flush=True)
        for workers in (1, 2):
            seconds, each, started = on_ray(load, jobs(Path(scratch) / f"ray-{workers}"), workers)
            how = f"{workers} CPU worker{'s' if workers > 1 else ''}, 1 thread each"
            name = f"Ray, {workers} worker{'s' if workers > 1 else ''}"
            lines.append(row(name, how, workers, seconds, each, started))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    if not args.no_write:
        old = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(sections.put(old, "ray", report(lines, args, load_avg)))
        print(f"wrote {args.out}")


def report(lines: list[str], args, load_avg: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return "\n".join([
        "## A batch on Ray (tiny checkpoints, CPU)",
        "",
        (f"Made by `python benchmarks/ray_batch.py` on {datetime.date.today()} (kandinsky commit "
         f"{commit or '?'}, {os.cpu_count()} cores, load average {load_avg:.1f} at the start): {args.jobs} "
         f"text-to-image jobs of one {args.size}x{args.size} image each ({args.steps} decoder steps, 2 prior "
         "steps) on the tiny test checkpoints. *Seconds* run from the call to the last job done, model "
         "loads included (each Ray worker opens its own; the private cluster's start, `--ray local`, is in "
         "its own column). *s/job* is one job's time where it ran (from its request to its file saved), "
         "*jobs/min working* the rate that gives with the workers side by side: what a long batch tends to. "
         "Each Ray worker is given one CPU, so one torch thread; the local batch runs with torch's default "
         "threads and with one."),
        "",
        *lines,
        "",
        ("Reading it: a tiny job takes a fraction of a second, so what is measured is Ray's overhead per job "
         "(a dataset block, one actor call and its answer per job) and each worker's start (importing torch, "
         "opening the model), against one process that opens the model once. Two one-thread workers against "
         "one one-thread process show how the work spreads over two cores; on a busy machine, torch's own "
         "threads wait on each other at every op, which the one-thread rows avoid. What Ray is for is a "
         "worker per GPU over many GPUs, where a job takes seconds and this overhead vanishes."),
    ]) + "\n"


if __name__ == "__main__":
    main()
