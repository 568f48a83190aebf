"""The benchmark's report: the machine and versions, a table on the terminal, docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from common import PROMPT, ROOT, GiB


@dataclass
class Row:
    """One figure for both implementations; a str instead of a number is why it is missing."""

    name: str
    unit: str  # s | GiB
    ours: float | str | None = None
    ref: float | str | None = None
    target: float | None = None  # the largest acceptable ours/diffusers

    @property
    def ratio(self) -> float | None:
        if isinstance(self.ours, float) and isinstance(self.ref, float) and self.ref > 0:
            return self.ours / self.ref
        return None

    @property
    def met(self) -> str:
        if self.target is None or self.ratio is None:
            return ""
        return "yes" if self.ratio <= self.target else "NO"


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return "failed"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "ram": None, "flags": [],
            "load": os.getloadavg()[0]}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["flags"] = sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram"] = int(line.split()[1]) * 1024 / GiB
    except OSError:
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "accelerate", "safetensors", "kandinsky-cli"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=False).stdout.strip()
        out["git"] = commit + (" (with uncommitted changes)" if dirty else "") if commit else "unknown"
    except OSError:
        out["git"] = "unknown"
    return out


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("measure", "left"), ("kandinsky", "right"), ("diffusers", "right"),
                         ("kandinsky/diffusers", "right"), ("target", "right"), ("met", "center")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r.name, _fmt(r.ours, r.unit), _fmt(r.ref, r.unit), f"{r.ratio:.2f}x" if r.ratio else "-",
                      f"<= {r.target}x" if r.target else "", r.met)
    Console(stderr=True, width=None if sys.stderr.isatty() else 140).print(table)


METHOD = """\
## How it is measured

- **Time to first image**: wall time from spawning the process to the PNG's last write: `kandinsky generate`
  against `benchmarks/diffusers_generate.py` (`KandinskyV22CombinedPipeline`, every component loaded with
  `from_pretrained` in the same dtype). *Cold*: an empty `KANDINSKY_HOME`, so kandinsky computes its zero-image
  embedding (it loads the CLIP image encoder); *warm*: the same command again, with the cache filled. Every
  checkpoint file is read once before, so both start from the page cache. Peak RSS is each process's own (`wait4`).
- **Load**: `Kandinsky.load` against loading every component with diffusers/transformers, in a fresh process
  each (imports not timed; peak RSS includes them). kandinsky loads the CLIP image encoder only when it has no
  cached zero embedding, diffusers always.
- **Steps**: one forward of each model on random inputs, in a fresh process per model: the UNet on a batch of 2
  (classifier-free guidance) at latent size/8, the prior on a batch of 2 with 77 text tokens, the MoVQ decoder
  on one latent.
- **Offload** (CUDA only): one image at the settings above, timed on the second of two; peak VRAM is
  `torch.cuda.max_memory_allocated` over the whole process. kandinsky's `none`/`model`/`sequential` against
  diffusers' plain `.to(cuda)`, `enable_model_cpu_offload()`, `enable_sequential_cpu_offload()`.
- **Targets** (from the project's issue): first image <= 0.5x diffusers, a denoising step <= 0.8x, sequential
  offload at least 2x diffusers' speed (time <= 0.5x) with no more peak VRAM.
"""


def markdown(rows: list[Row], notes: list[str], args, info: dict, vers: dict, raw: dict, seconds: float) -> str:
    a = args
    kind = ("tiny random checkpoints of tests/tiny.py (figures only check the script)" if a.tiny else
            "full-size Kandinsky 2.2 (real configs, random weights; fp32 safetensors, CLIP image encoder fp16)")
    flags = f" ({', '.join(info['flags'])})" if info["flags"] else ""
    gpu = gpu_name(a.device)
    lines = [
        "# Benchmarks: kandinsky against diffusers",
        "",
        (f"Made by `python benchmarks/bench.py {' '.join(sys.argv[1:])}` on {datetime.date.today().isoformat()} "
         f"({seconds / 60:.0f} min). Both read the same checkpoint files; lower is better, and a ratio below 1 "
         "means kandinsky is faster or smaller."),
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores{flags}",
        f"- RAM: {info['ram']:.1f} GiB" if info["ram"] else "- RAM: unknown",
        f"- load average (1 min) when the run started: {info['load']:.2f} (other work on the machine skews timings)",
        *([f"- GPU: {gpu}"] if gpu else []),
        "- " + ", ".join(f"{k} {v}" for k, v in vers.items() if k != "git"),
        f"- kandinsky commit: {vers['git']}",
        "",
        "## Settings",
        "",
        f"- checkpoints: {kind}",
        (f"- device {a.device}, dtype {a.dtype}, {a.size}x{a.size} px; first image: {a.steps} decoder steps (the "
         f"checkpoint's DDPM scheduler), {a.prior_steps} prior steps, guidance 4 for both, seed 0, "
         f'prompt "{PROMPT}"'),
        (f"- single steps: median of {a.repeat} after one warm-up; kandinsky's models as its pipeline loads them "
         "(UNet and MoVQ channels-last), diffusers' as `from_pretrained(torch_dtype=...)` gives them"),
        "",
        "## Results",
        "",
        "| measure | kandinsky | diffusers | kandinsky/diffusers | target | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        ratio, target = f"{r.ratio:.2f}x" if r.ratio else "-", f"<= {r.target}x" if r.target else ""
        lines.append(f"| {r.name} | {_fmt(r.ours, r.unit)} | {_fmt(r.ref, r.unit)} | {ratio} | {target} | {r.met} |")
    if notes:
        lines += ["", *notes]
    failures = [f"- {label}: {v['error']}" for label, v in raw.items() if v.get("error")]
    if failures:
        lines += ["", "Failed runs:", "", *failures]
    return "\n".join([*lines, "", METHOD])
