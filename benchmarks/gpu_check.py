"""A GPU check to run on a bare CUDA machine (no checkpoints, no network): python benchmarks/gpu_check.py

For each dtype (fp16, bf16) and size (512, 1024) it builds full-size Kandinsky 2.2 models with random weights
(variance-preserving, see bench.random_tensor) directly on the GPU from the real configs, and runs every memory
level through the real pipeline (``Kandinsky`` over the stages of ``kcli.pipelines.configured``, with the real
``Placement``): a cold image (the zero embedding computed), a warm one, and a batch of 4. Then once more at
``high`` with ``--compile`` (the UNet under torch.compile). It checks that every image is finite and that the
levels agree with each other (and compiled with eager), and compares peak allocated and reserved VRAM with the
tracker's estimates (``kcli.pipelines.memsim``). It prints a table, and with ``--write`` puts it in
docs/benchmarks.md (section "gpu"). Exit status 1 when a check fails.

    python benchmarks/gpu_check.py                      # the full check (~5 min on an H100-class GPU)
    python benchmarks/gpu_check.py --sizes 512 --dtypes fp16 --no-compile
    python benchmarks/gpu_check.py --device cpu --configs-from PRIOR DECODER --sizes 64 --dtypes fp32  # logic only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # kcli from this working tree
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np
import torch
from torch import nn

from kcli.loading.weights import _rebuild_id_buffers
from kcli.pipelines.configured import Configs, ConfiguredDecoder, ConfiguredPrior
from kcli.pipelines.kandinsky import Kandinsky
from kcli.pipelines.memsim import LEVELS, measure
from kcli.pipelines.memtrack import GiB
from kcli.pipelines.placement import Placement
from kcli.pipelines.requests import TextToImage
from kcli.pipelines.settings import Loading

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
AGREE = 3.0  # mean absolute difference (of 255) two levels' images may have (tiles see their own group norms)


def random_maker(device: torch.device, weights_device: torch.device):
    """``make`` for the configured stages: random weights made on ``device``, then moved to ``weights_device``.
    Each model's values depend only on its class, so every level and dtype gets the same weights."""
    from fixtures import random_tensor

    def make(build, dtype: torch.dtype, channels_last: bool = False) -> nn.Module:
        with torch.device("meta"):
            module = build()
        _rebuild_id_buffers(module, device)  # transformers' position ids
        generator = torch.Generator(device).manual_seed(zlib.crc32(type(module).__name__.encode()))
        with torch.device(device):
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if not t.is_meta:
                    continue
                owner_name, _, leaf = name.rpartition(".")
                owner = module.get_submodule(owner_name)
                value = random_tensor(owner, name, tuple(t.shape), generator).to(dtype)
                if leaf in owner._parameters:
                    owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
                else:
                    owner._buffers[leaf] = value
        module = module.to(dtype).eval().requires_grad_(False)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module.to(weights_device)

    return make


def build(configs: Configs, level: str, dtype: torch.dtype, device: torch.device, compile: bool = False) -> Kandinsky:
    offload, _ = LEVELS[level]
    placement = Placement(offload, device)
    make = random_maker(device, placement.weights_device)
    prior = ConfiguredPrior(configs, dtype, placement, make, cold=True)
    decoder = ConfiguredDecoder(configs, dtype, placement, make)
    if compile:
        decoder.unet = torch.compile(decoder.unet)
    return Kandinsky(prior, decoder, placement, dtype, Loading(tile=LEVELS[level][1]))


@dataclass
class Run:
    level: str
    dtype: str
    size: int
    compiled: bool = False
    estimate: dict = field(default_factory=dict)  # cold/warm -> bytes (tracker)
    allocated: dict = field(default_factory=dict)  # cold/warm -> bytes (torch.cuda.max_memory_allocated)
    reserved: dict = field(default_factory=dict)
    seconds_per_image: float = 0.0  # warm, one image
    images_per_second: float = 0.0  # a call making 4
    finite: bool = True
    problems: list = field(default_factory=list)


def _peak_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> tuple[int | None, int | None]:
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def run_level(configs: Configs, level: str, dtype: str, size: int, device: torch.device, *, steps: int,
              prior_steps: int, compile: bool = False) -> tuple[Run, np.ndarray]:
    """One level: a cold image, a warm one and a batch of 4; returns the figures and the cold image."""
    run = Run(level, dtype, size, compile)
    for cold in (True, False):
        run.estimate["cold" if cold else "warm"] = measure(configs, level, size=size, dtype=DTYPES[dtype],
                                                           cold=cold).bytes
    settings = TextToImage("a corgi gliding on the wave", seed=0, width=size, height=size, steps=steps,
                           prior_steps=prior_steps)
    _peak_start(device)
    k = build(configs, level, DTYPES[dtype], device, compile)
    images = {}
    for phase in ("cold", "warm"):
        if phase == "warm":
            _peak_start(device)
        t0 = time.perf_counter()
        images[phase] = np.asarray(next(k.run(settings)).image)
        if phase == "warm":
            run.seconds_per_image = time.perf_counter() - t0
        run.allocated[phase], run.reserved[phase] = _peak(device)
        if phase == "cold":
            _check_pinned(k, run)
    t0 = time.perf_counter()
    batch = list(k.run(replace(settings, num_images=4)))
    run.images_per_second = len(batch) / (time.perf_counter() - t0)
    run.finite = k.decoder.finite
    if not run.finite:
        run.problems.append("an image is not finite")
    del k, batch
    return run, images["cold"]


def _check_pinned(k: Kandinsky, run: Run) -> None:
    """Streamed weights are pinned at their size, and only the models still streamed (the image encoder was let
    go after the zero embedding)."""
    if k.device.type != "cuda" or not k.placement.streamers:
        return
    streamed = sum(s.weights for s in k.placement.streamers)
    pinned = k.placement.pinned_bytes
    if not streamed <= pinned <= 1.1 * streamed:
        run.problems.append(f"{pinned / GiB:.2f} GiB pinned for {streamed / GiB:.2f} GiB of streamed weights")


def agreement(images: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean absolute difference (0-255) of each image from the first one (the reference)."""
    names = list(images)
    ref = images[names[0]].astype(np.float32)
    return {n: float(np.abs(images[n].astype(np.float32) - ref).mean()) for n in names[1:]}


def check(configs: Configs, *, device: torch.device, sizes, dtypes, levels=tuple(LEVELS), steps: int = 10,
          prior_steps: int = 5, compile: bool = True, log=print) -> list[Run]:
    runs = []
    for dtype in dtypes:
        for size in sizes:
            images, by_name = {}, {}
            todo = [(level, False) for level in levels]
            if compile and size == sizes[0] and dtype == dtypes[0]:
                todo.append(("high", True))
            for level, compiled in todo:
                name = level + (" +compile" if compiled else "")
                by_name[name], images[name] = run_level(configs, level, dtype, size, device, steps=steps,
                                                        prior_steps=prior_steps, compile=compiled)
                runs.append(by_name[name])
                log(row(by_name[name]))
            for name, diff in agreement(images).items():
                if diff > AGREE:
                    by_name[name].problems.append(f"differs from {levels[0]} by {diff:.2f}/255 on average")
    return runs


HEADER = ("| dtype | size | level | est. cold | alloc. cold | reserved cold | est. warm | alloc. warm | reserved warm "
          "| s/image | images/s (4) | ok |\n|---|---|---|" + "---:|" * 8 + "---|")


def _g(n) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f}"


def row(r: Run) -> str:
    level = r.level + (" +compile" if r.compiled else "")
    ok = "yes" if not r.problems else "NO: " + "; ".join(r.problems)
    return (f"| {r.dtype} | {r.size}² | {level} | {_g(r.estimate['cold'])} | {_g(r.allocated['cold'])} | "
            f"{_g(r.reserved['cold'])} | {_g(r.estimate['warm'])} | {_g(r.allocated['warm'])} | "
            f"{_g(r.reserved['warm'])} | {r.seconds_per_image:.2f} | {r.images_per_second:.2f} | {ok} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prior-steps", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--configs", type=Path, default=ROOT / "tests" / "data" / "configs")
    p.add_argument("--configs-from", nargs=2, type=Path, metavar=("PRIOR", "DECODER"),
                   help="read the configs of these checkpoint folders instead")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--write", action="store_true", help="put the table in docs/benchmarks.md")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: run it on a machine with one (or --device cpu with tiny configs)", file=sys.stderr)
        return 2
    configs = Configs.from_checkpoints(*args.configs_from) if args.configs_from else Configs.from_folder(args.configs)
    t0 = time.perf_counter()
    print(HEADER, flush=True)
    runs = check(configs, device=device, sizes=[int(s) for s in args.sizes.split(",")],
                 dtypes=args.dtypes.split(","), levels=args.levels.split(","), steps=args.steps,
                 prior_steps=args.prior_steps, compile=not args.no_compile, log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {seconds / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "seconds": seconds, "runs": [asdict(r) for r in runs]}))
    if args.write:
        import sections

        note = (f"`python benchmarks/gpu_check.py`, {seconds / 60:.1f} min, {args.steps} decoder and "
                f"{args.prior_steps} prior steps, random weights. GiB.")
        body = "\n".join([f"## GPU check ({name})", "", note, "", HEADER, *(row(r) for r in runs)])
        out = ROOT / "docs" / "benchmarks.md"
        out.write_text(sections.put(out.read_text() if out.exists() else "", "gpu", body))
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
