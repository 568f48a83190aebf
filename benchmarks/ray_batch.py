"""Jobs per minute of a batch on Ray (1 and 2 CPU workers) against the local batch, on tiny checkpoints.

    python benchmarks/ray_batch.py                    # 16 jobs, 64 px, 4 steps; writes the section "ray"
    python benchmarks/ray_batch.py --jobs 8 --no-write

Every run makes the same jobs (text to image, one image each, seeds 0..N-1) with the same code the command
line uses: the local batch opens the model once and runs the jobs one after the other
(``Kandinsky.open`` / ``run``, saved with ``kcli.cli.output.save_image``); the Ray runs hand them to
``kcli.pipelines.raybatch.run`` on a private local cluster (``--ray local``) started once beforehand. Tiny
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


def tasks(jobs: int, folder: Path, size: int, steps: int):
    from kcli.pipelines import TextToImage, raybatch

    return [raybatch.Task(i, TextToImage(prompt=f"a lighthouse, take {i}", seed=i, steps=steps, prior_steps=2,
                                         width=size, height=size), [folder / f"job-{i:03d}.png"])
            for i in range(jobs)]


def local(load, todo) -> tuple[float, float]:
    """(seconds in all, seconds from the model open to the last job) of a local batch."""
    import dataclasses

    from kcli.cli.output import save_image
    from kcli.pipelines import Kandinsky

    t0 = time.perf_counter()
    k = Kandinsky.open(**dataclasses.asdict(load))
    t1 = time.perf_counter()
    for task in todo:
        for result, path in zip(k.run(task.request), task.paths):
            save_image(result.image, path, result.metadata)
    end = time.perf_counter()
    return end - t0, end - t1


def on_ray(load, todo, workers: int) -> tuple[float, float]:
    """(seconds in all, seconds from the first job done to the last) of the same jobs on Ray."""
    from kcli.cli.output import save_image
    from kcli.pipelines import raybatch

    stamps = []
    t0 = time.perf_counter()
    done = raybatch.run(todo, load, partial(save_image), folder=todo[0].paths[0].parent, address="local",
                        workers=workers, on_done=lambda d: stamps.append(time.perf_counter()))
    failed = [d.error for d in done if d.error]
    if failed:
        raise SystemExit(f"a job failed on Ray: {failed[0]}")
    return time.perf_counter() - t0, stamps[-1] - stamps[0]


def per_minute(jobs: int, seconds: float) -> str:
    return f"{jobs * 60 / seconds:.1f}" if seconds > 0 else "-"


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

    from kcli.pipelines import Loading, raybatch

    load = Loading(prior=str(prior), decoder=str(decoder), device="cpu")
    load_avg = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        seconds, steady = local(load, tasks(args.jobs, Path(scratch) / "local", args.size, args.steps))
        rows.append(("local batch", "1 process, torch's threads", seconds, steady))
        print(rows[-1], flush=True)
        t0 = time.perf_counter()
        ray = raybatch.start_local()  # what --ray local starts, once for both runs
        started = time.perf_counter() - t0
        for workers in (1, 2):
            todo = tasks(args.jobs, Path(scratch) / f"ray-{workers}", args.size, args.steps)
            seconds, steady = on_ray(load, todo, workers)
            each = "all CPUs" if workers == 1 else "1/2 of the CPUs each"
            rows.append((f"Ray, {workers} CPU worker{'s' if workers > 1 else ''}", each, seconds, steady))
            print(rows[-1], flush=True)
        ray.shutdown()
    lines = ["| run | workers | seconds | jobs/min | jobs/min after the first job |",
             "|---|---|---:|---:|---:|"]
    for name, how, seconds, steady in rows:
        lines.append(f"| {name} | {how} | {seconds:.1f} | {per_minute(args.jobs, seconds)} | "
                     f"{per_minute(args.jobs - 1 if name.startswith('Ray') else args.jobs, steady)} |")
    print("\n".join(lines))
    if not args.no_write:
        old = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(sections.put(old, "ray", report(lines, args, started, load_avg)))
        print(f"wrote {args.out}")


def report(lines: list[str], args, started: float, load_avg: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return "\n".join([
        "## A batch on Ray (tiny checkpoints, CPU)",
        "",
        (f"Made by `python benchmarks/ray_batch.py` on {datetime.date.today()} (kandinsky commit "
         f"{commit or '?'}, {os.cpu_count()} cores, load average {load_avg:.1f} at the start): {args.jobs} "
         f"text-to-image jobs of one {args.size}x{args.size} image each ({args.steps} decoder steps, 2 prior "
         "steps) on the tiny test checkpoints. *Seconds* run from the call to the last image saved, model "
         "loads included (each Ray worker opens its own); *after the first job* counts the jobs that follow "
         "the first one done, by the time they took. The private cluster (`--ray local`) took "
         f"{started:.1f} s to start, not counted above."),
        "",
        *lines,
        "",
        ("Reading it: a tiny job takes a fraction of a second, so what is measured is Ray's overhead per job "
         "(a dataset block, one actor call and its answer per job) and each worker's start (importing torch, "
         "opening the model), against one process that opens the model once. Two CPU workers share the cores "
         "that one process's torch threads already use. What Ray is for is a worker per GPU over many GPUs, "
         "where a job takes seconds and this overhead vanishes."),
    ]) + "\n"


if __name__ == "__main__":
    main()
