"""`kandinsky serve` under load, on loopback: throughput, latency, server memory; and a script of
`kandinsky generate` calls with and without `--server`.

    python benchmarks/serve_load.py                      # tiny checkpoints, 8 clients x 48 jobs, 20 calls (~5 min)
    python benchmarks/serve_load.py --calls 5 --no-write
    python benchmarks/serve_load.py --prior P --decoder D --device cuda --size 512 --steps 30

1. A server subprocess (tests/serving.py) on the checkpoints; ``--clients`` threads send ``--jobs`` text-to-image
   requests in all (AUTOMATIC1111's txt2img), for ``--rounds`` rounds. It reports jobs per second, the p50 and
   p95 latency of a request (queueing included) and the server's resident memory (VmRSS) after warm-up and
   after each round: it should stay flat, as the models load once and every job releases what it made.
2. ``--calls`` runs of `kandinsky generate` as a shell script makes them: each a fresh process, loading the
   models every time; then the same calls with `--server`, which load nothing.

Prints the tables and puts them in docs/benchmarks.md as the section "serve" (the rest is kept).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]

import sections
from serving import Server  # tests/serving.py: a server subprocess on loopback

MiB = 2**20


def tiny_checkpoints(root: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location("kbench_tiny", ROOT / "tests" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    prior, decoder = root / "prior", root / "decoder"
    if not (prior / "model_index.json").exists() and not (prior / "prior").exists():
        tiny.make_prior_22(prior)
    if not (decoder / "unet").exists():
        tiny.make_decoder_22(decoder)
    return prior, decoder


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024 / MiB
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_round(server: Server, clients: int, jobs: int, body: dict) -> tuple[float, list[float], int]:
    """(seconds, latencies, failures) of ``jobs`` requests from ``clients`` threads."""
    latencies, failures, lock = [], [0], threading.Lock()
    todo = iter(range(jobs))

    def client():
        while True:
            with lock:
                j = next(todo, None)
            if j is None:
                return
            started = time.perf_counter()
            answer = server.post("/sdapi/v1/txt2img", {**body, "seed": j}, timeout=3600)
            with lock:
                latencies.append(time.perf_counter() - started)
                failures[0] += answer.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, failures[0]


def script(calls: int, args: list[str], env: dict, out: Path) -> float:
    """Seconds for ``calls`` `kandinsky generate` processes, one after another, as a shell script runs them."""
    started = time.perf_counter()
    for i in range(calls):
        proc = subprocess.run([sys.executable, "-m", "kcli", "generate", f"call {i}", "--seed", str(i), *args,
                               "-o", str(out / f"{i}.png"), "--overwrite", "-q"], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"kandinsky generate failed: {proc.stderr.strip()}")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior"), p.add_argument("--decoder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--jobs", type=int, default=48)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prior-steps", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kandinsky-serve-bench")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    tiny = not (a.prior and a.decoder)
    prior, decoder = tiny_checkpoints(a.workdir / "tiny") if tiny else (Path(a.prior), Path(a.decoder))
    env = {**os.environ, "KANDINSKY_HOME": str(a.workdir / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    body = {"prompt": "a corgi gliding on the wave", "steps": a.steps, "prior_steps": a.prior_steps,
            "width": a.size, "height": a.size}
    started = time.time()
    with Server("--prior", prior, "--decoder", decoder, "--queue", a.jobs, env=env, device=a.device) as server:
        load_round(server, 1, 2, body)  # warm-up: first-call costs are not the steady state
        memory = [("after warm-up", rss(server.proc.pid))]
        rounds = []
        for r in range(a.rounds):
            seconds, latencies, failed = load_round(server, a.clients, a.jobs, body)
            rounds.append((seconds, latencies, failed))
            memory.append((f"after round {r + 1}", rss(server.proc.pid)))
            print(f"round {r + 1}: {a.jobs / seconds:.2f} jobs/s, p50 {percentile(latencies, .5):.2f} s, "
                  f"p95 {percentile(latencies, .95):.2f} s, {failed} failed, RSS {memory[-1][1]:.0f} MiB")
        loads = server.status()["loads"]
        common = ["--steps", str(a.steps), "--prior-steps", str(a.prior_steps), "-W", str(a.size), "-H", str(a.size)]
        out = a.workdir / "out"
        out.mkdir(exist_ok=True)
        remote = script(a.calls, [*common, "--server", server.url], env, out) if a.calls else 0.0
    local = script(a.calls, [*common, "--prior", str(prior), "--decoder", str(decoder), "--device", a.device], env,
                   out) if a.calls else 0.0
    print(f"{a.calls} generate calls: {local:.1f} s alone, {remote:.1f} s with --server")
    doc = ROOT / "docs" / "benchmarks.md"
    text = report(a, tiny, rounds, memory, loads, local, remote, time.time() - started)
    print(text)
    if not a.no_write:
        doc.write_text(sections.put(doc.read_text() if doc.exists() else "", "serve", text))
        print(f"wrote the section \"serve\" of {doc}")


def report(a, tiny, rounds, memory, loads, local, remote, seconds) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    what = "tiny random checkpoints (tests/tiny.py)" if tiny else f"{a.prior} + {a.decoder}"
    lines = [
        "## `kandinsky serve` under load (loopback)",
        "",
        (f"Made by `python benchmarks/serve_load.py` on {datetime.date.today()} ({seconds / 60:.1f} min, kandinsky "
         f"commit {commit or '?'}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}) on {what}, "
         f"device {a.device}: {a.clients} clients send {a.jobs} txt2img requests per round ({a.size}x{a.size}, "
         f"{a.steps} decoder and {a.prior_steps} prior steps). Latency counts the wait in the queue. The models "
         f"loaded {loads['models']} time(s) for all of it."),
        "",
        "| round | jobs | failed | jobs/s | p50 latency s | p95 latency s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r, (secs, lat, failed) in enumerate(rounds, 1):
        lines.append(f"| {r} | {len(lat)} | {failed} | {len(lat) / secs:.2f} | {percentile(lat, .5):.2f} | "
                     f"{percentile(lat, .95):.2f} |")
    lines += ["", "| server memory (VmRSS) | MiB |", "|---|---:|"]
    lines += [f"| {name} | {value:.0f} |" for name, value in memory]
    growth = memory[-1][1] - memory[0][1]
    lines += ["", f"Growth from warm-up to the last round: {growth:+.0f} MiB.", ""]
    if a.calls:
        lines += [f"A script of {a.calls} `kandinsky generate` calls, one after another:", "",
                  "| | total s | s per call |", "|---|---:|---:|",
                  f"| each call loads the models | {local:.1f} | {local / a.calls:.2f} |",
                  f"| `--server` (loaded once) | {remote:.1f} | {remote / a.calls:.2f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
