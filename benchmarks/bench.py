"""kandinsky against diffusers on the same checkpoint files; writes docs/benchmarks.md.

    python benchmarks/bench.py                          # full-size 2.2, CPU, bf16, 256 px (the real figures)
    python benchmarks/bench.py --dtype fp32 --only unet,prior
    python benchmarks/bench.py --device cuda            # adds the offload rows (seconds/image, peak VRAM)
    python benchmarks/bench.py --tiny --workdir /tmp/kbench-tiny   # checks the whole script in minutes

No network is needed: the checkpoints are built here once (cached in --workdir) from the real
Kandinsky 2.2 configs with random weights, in the diffusers on-disk layout, fp32
safetensors as on the hub (the CLIP image encoder fp16, as on the hub). Timing does not depend on the
weight values; the values are only scaled so activations stay normal numbers.

Every measurement runs in a fresh subprocess (this process never imports torch), so memory never
accumulates and each peak RSS is that process's own (from wait4):
- first image: wall time from process start to the finished PNG, ``kandinsky generate`` against
  benchmarks/diffusers_generate.py. Cold: an empty KANDINSKY_HOME (our zero-embedding cache is computed);
  warm: the same again. The checkpoint files are read once beforehand, so both start with them in the page cache.
- load: ``Kandinsky.open`` against loading the same components with diffusers/transformers ``from_pretrained``.
- one step: the UNet with classifier-free guidance (batch 2) at --size, one prior step (batch 2) and one MoVQ
  decode, each the median of --repeat calls after one warm-up; ours as the pipeline loads them.
- offload (--device cuda only): seconds per image (the second of two) and peak VRAM per offload mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import sections  # benchmarks/sections.py: the parts of the report other scripts write
from common import HERE, MEASURES, OFFLOAD_MODES, PROMPT, ROOT, GiB  # noqa: F401
from fixtures import checkpoint_dirs
from report import Row, _fmt, machine, markdown, print_table, versions
from workers import WORKERS

# ---- child processes ---------------------------------------------------------------------------------------

@dataclass
class Run:
    rc: int
    started: float  # time.time() at spawn
    seconds: float  # spawn to exit
    max_rss: int  # bytes, the child's own peak (wait4)
    log: Path
    result: dict = field(default_factory=dict)  # what a worker reported

    def error(self) -> str | None:
        if self.rc == 0:
            return None
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        why = "killed (out of memory?)" if self.rc in (-9, 137) else f"exit {self.rc}"
        return f"{why}: {lines[-1][:160] if lines else ''} (log: {self.log})"


def run_child(cmd: list[str], log: Path, env: dict) -> Run:
    """Run ``cmd`` with its output in ``log``; wall time and the child's own peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, started, time.perf_counter() - t0, usage.ru_maxrss * 1024, log)


def child_env(home: Path | None = None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false")
    if home is not None:
        env["KANDINSKY_HOME"] = str(home)
    return env


def run_worker(name: str, spec: dict, log: Path, home: Path | None = None) -> Run:
    """Run ``worker_<name>(spec)`` in a fresh interpreter; its returned dict lands in ``Run.result``."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", json.dumps(spec),
           "--result", str(result)]
    run = run_child(cmd, log, child_env(home))
    if run.rc == 0:
        run.result = json.loads(result.read_text())
    return run


def kandinsky_command() -> list[str]:
    """The installed console script when it sits next to this interpreter (what a user runs), else -m."""
    script = Path(sys.executable).parent / "kandinsky"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kcli"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args, prior: Path, decoder: Path, workdir: Path):
        self.args, self.prior, self.decoder = args, prior, decoder
        self.runs = workdir / "runs" / f"{'tiny' if args.tiny else 'full'}-{args.device}-{args.dtype}-{args.size}"
        shutil.rmtree(self.runs, ignore_errors=True)
        self.runs.mkdir(parents=True)
        self.rows: list[Row] = []
        self.raw: dict = {}  # every worker result and error, for results.json
        self.notes: list[str] = []  # sentences for the report
        self.batch_table: str | None = None  # the section "batched", when measured

    def spec(self, impl: str, **extra) -> dict:
        a = self.args
        return {"impl": impl, "prior": str(self.prior), "decoder": str(self.decoder), "device": a.device,
                "dtype": a.dtype, "size": a.size, "repeat": a.repeat, "steps": a.steps,
                "prior_steps": a.prior_steps, **extra}

    def worker(self, kind: str, impl: str, tag: str = "", **extra) -> Run:
        label = f"{kind}{'-' + tag if tag else ''}-{impl}"
        _say(f"  {label} ...")
        run = run_worker(kind, self.spec(impl, **extra), self.runs / f"{label}.log", self.runs / f"home-{label}")
        self.raw[label] = {"rc": run.rc, "wall": run.seconds, "max_rss": run.max_rss, **run.result,
                           "error": run.error()}
        _say(f"    {run.error() or _fmt(run.result.get('seconds'), 's')}")
        return run

    # -- first image

    def first_image(self) -> None:
        """cold then warm, ours then diffusers within each, both reading files already in the page cache."""
        warm_page_cache(self.prior, self.decoder)
        a = self.args
        common = ["--steps", str(a.steps), "--prior-steps", str(a.prior_steps), "-W", str(a.size), "-H", str(a.size),
                  "--dtype", a.dtype, "--device", a.device, "--seed", "0"]
        commands = {
            "ours": [*kandinsky_command(), "generate", PROMPT, "--prior", str(self.prior), "--decoder",
                     str(self.decoder), "--offline", "--quiet", "--overwrite", *common],
            "diffusers": [sys.executable, str(HERE / "diffusers_generate.py"), PROMPT, "--prior", str(self.prior),
                          "--decoder", str(self.decoder), *common],
        }
        home = self.runs / "home-first-image"  # fresh (runs/ was cleared): the cold run fills it
        seconds: dict = {}  # (when, impl) -> seconds to the PNG, or why there is none
        rss: dict = {}  # (when, impl) -> GiB
        for when in ("cold", "warm"):
            for impl, cmd in commands.items():
                label = f"first-image-{when}-{impl}"
                png = self.runs / f"{label}.png"
                _say(f"  {label} ...")
                run = run_child([*cmd, "-o", str(png)], self.runs / f"{label}.log", child_env(home))
                error = run.error() or (None if png.is_file() else f"no image written (log: {run.log})")
                # the PNG's mtime is when its last byte was written: interpreter teardown is not counted
                seconds[when, impl] = error or png.stat().st_mtime - run.started
                rss[when, impl] = error or run.max_rss / GiB
                self.raw[label] = {"rc": run.rc, "wall": run.seconds, "max_rss": run.max_rss,
                                   "to_png": seconds[when, impl], "error": error}
                _say(f"    {error or _fmt(seconds[when, impl], 's')}")
        pngs = [self.runs / f"first-image-warm-{impl}.png" for impl in commands]
        if all(p.is_file() for p in pngs):
            self.notes.append(f"The two warm images differ by {image_difference(*pngs)} (same seed, same files: "
                              "both did the same work).")
        for when in ("cold", "warm"):
            self.rows.append(Row(f"time to first image, {when}", "s", seconds[when, "ours"],
                                 seconds[when, "diffusers"], 0.5))
            self.rows.append(Row(f"peak RSS, first image {when}", "GiB", rss[when, "ours"], rss[when, "diffusers"]))

    # -- load and steps

    def _pair(self, kind: str, name: str, target: float | None = None, **extra) -> tuple[Run, Run]:
        """Worker ``kind`` for ours, then diffusers; a row of the seconds they report."""
        ours, ref = self.worker(kind, "ours", **extra), self.worker(kind, "diffusers", **extra)
        self.rows.append(Row(name, "s", *(r.error() or float(r.result["seconds"]) for r in (ours, ref)), target))
        return ours, ref

    def load(self) -> None:
        ours, ref = self._pair("load", "load (prior + decoder)")
        self.rows.append(Row("peak RSS, load", "GiB", ours.error() or ours.max_rss / GiB,
                             ref.error() or ref.max_rss / GiB))

    def unet(self) -> None:
        self._pair("unet", f"UNet step, CFG batch 2, {self.args.size}x{self.args.size}", target=0.8)

    def prior_step(self) -> None:
        self._pair("prior", "prior step, CFG batch 2", target=0.8)

    def movq(self) -> None:
        self._pair("movq", f"MoVQ decode, {self.args.size}x{self.args.size}")

    def offload(self) -> None:
        for mode, theirs in OFFLOAD_MODES.items():
            label = f"offload {mode}" + ("" if mode == "none" else f" (diffusers {theirs})")
            target = 0.5 if mode == "sequential" else None  # at least 2x diffusers' speed ...
            ours, ref = self._pair("offload", f"{label}: s/image", target=target, tag=mode, mode=mode)
            vram = [r.error() or r.result["peak_vram"] / GiB for r in (ours, ref)]
            self.rows.append(Row(f"{label}: peak VRAM", "GiB", *vram,
                                 1.0 if mode == "sequential" else None))  # ... at no more memory

    def batched(self) -> None:
        """Images per minute for -n 4: one UNet call for the 4 (--batch 4) against one at a time (--batch 1)."""
        run = self.worker("batched", "ours")
        if run.error():
            self.notes.append(f"Batched images: not measured ({run.error()}).")
            return
        s = {"4": run.result["batched"], "1": run.result["single"]}
        per_min = {b: 4 * 60 / s[b] for b in ("4", "1")}
        a = self.args
        self.batch_table = (
            f"`-n 4` at {a.size}x{a.size}, {a.dtype}, {a.steps} decoder and {a.prior_steps} prior steps "
            f"({'tiny' if a.tiny else 'full-size'} checkpoints, {a.device}), median of {a.repeat}, alternating:\n\n"
            "| how | seconds for 4 images | images per minute |\n|---|---:|---:|\n"
            f"| 4 images per UNet call (`--batch 4`) | {s['4']:.2f} | {per_min['4']:.1f} |\n"
            f"| one at a time, as 4 single runs (`--batch 1`) | {s['1']:.2f} | {per_min['1']:.1f} |\n\n"
            f"Batched/single: {s['4'] / s['1']:.2f}x the time.")

    def measure(self, names: list[str]) -> None:
        steps = {"first_image": self.first_image, "load": self.load, "unet": self.unet, "prior": self.prior_step,
                 "movq": self.movq, "offload": self.offload, "batched": self.batched}
        for name in names:
            _say(f"[{name}]")
            steps[name]()


def image_difference(a: Path, b: Path) -> str:
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    if x.shape != y.shape:
        return f"their size ({x.shape[1]}x{x.shape[0]} against {y.shape[1]}x{y.shape[0]})"
    d = np.abs(x - y)
    return f"{d.mean():.2f}/255 on average (largest {d.max()})"


def warm_page_cache(*folders: Path) -> None:
    """Read every checkpoint file once, so no run pays (or is spared) the first read from disk."""
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(64 << 20):
                        pass


# ---- report -------------------------------------------------------------------------------------------------


# ---- main ---------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("KBENCH_DIR") or Path.home() / ".cache" / "kandinsky-bench"),
                   help="where checkpoints (built once), logs and images go (default: $KBENCH_DIR or "
                        "~/.cache/kandinsky-bench)")
    p.add_argument("--tiny", action="store_true", help="the tiny checkpoints of tests/tiny.py (checks the script)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; cuda adds the offload rows")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp16"))
    p.add_argument("--size", type=int, default=256, help="image side in pixels, a multiple of 64 (default 256)")
    p.add_argument("--steps", type=int, default=25, help="decoder steps of the first-image runs (default 25)")
    p.add_argument("--prior-steps", type=int, default=10, help="prior steps of the first-image runs (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per single-step median (default 3)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASURES)}")
    p.add_argument("--build-only", action="store_true", help="build the checkpoints and stop")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the report to write")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    cuda = args.device.startswith("cuda")
    if args.dtype == "fp16" and not cuda:
        p.error("fp16 has no fast kernels on the CPU: use bf16 or fp32")
    if args.size < 64 or args.size % 64:
        p.error("--size must be a positive multiple of 64")
    if min(args.steps, args.prior_steps, args.repeat) < 1:
        p.error("--steps, --prior-steps and --repeat must be at least 1")
    names = [n.strip().replace("-", "_") for n in args.only.split(",")] if args.only else list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        p.error(f"unknown --only name(s) {', '.join(unknown)}: use {', '.join(MEASURES)}")
    if "offload" in names and not cuda:
        if args.only:
            _say("offload is measured only with --device cuda: skipped")
        names.remove("offload")
        if not names:
            p.error("nothing to measure: offload needs --device cuda")
    args.names = names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:  # inside a child process
        sys.path[:0] = [str(HERE), str(ROOT)]  # diffusers_generate; kcli from this working tree
        result = WORKERS[args.worker](json.loads(args.spec))
        args.result.write_text(json.dumps(result))
        return 0

    t_start, info = time.perf_counter(), machine()
    if info["load"] > 0.5 * (info["cores"] or 1):
        _say(f"warning: the machine is busy (load average {info['load']:.1f} on {info['cores']} cores); with every "
             "core in use the timings here can be several times too slow")
    workdir = args.workdir.expanduser().resolve()
    root = workdir / ("tiny" if args.tiny else "full")
    _say(f"[build] checkpoints in {root}")
    build = run_worker("build", {"root": str(root), "tiny": args.tiny}, workdir / "build.log")
    if build.rc:
        _say(f"building the checkpoints failed: {build.error()}")
        return 1
    if args.build_only:
        return 0
    prior, decoder = checkpoint_dirs(root)
    bench = Bench(args, prior, decoder, workdir)
    bench.measure(args.names)

    vers = versions()
    title = (f"kandinsky vs diffusers: {'tiny' if args.tiny else 'Kandinsky 2.2'}, {args.device}, {args.dtype}, "
             f"{args.size}x{args.size}")
    print_table(bench.rows, title)
    seconds = time.perf_counter() - t_start
    (bench.runs / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "machine": info, "versions": vers,
         "runs": bench.raw, "rows": [r.__dict__ for r in bench.rows]}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = markdown(bench.rows, bench.notes, args, info, vers, bench.raw, seconds)
    page = sections.keep(args.out.read_text() if args.out.exists() else "", report)  # others' parts
    if bench.batch_table:
        page = sections.put(page, "batched", "## Batched images\n\n" + bench.batch_table)
    args.out.write_text(page)
    _say(f"wrote {args.out} (raw figures and logs: {bench.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
