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
- load: ``Kandinsky.load`` against loading the same components with diffusers/transformers ``from_pretrained``.
- one step: the UNet with classifier-free guidance (batch 2) at --size, one prior step (batch 2) and one MoVQ
  decode, each the median of --repeat calls after one warm-up; ours as the pipeline loads them.
- offload (--device cuda only): seconds per image (the second of two) and peak VRAM per offload mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import sections  # benchmarks/sections.py: the parts of the report other scripts write

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ROOT / "tests" / "data" / "configs"  # the real checkpoints' configs
PROMPT = "a corgi gliding on the wave"
BUILD_VERSION = "1"  # bump when the build recipe changes: cached checkpoints are then rebuilt
MEASURES = ("first_image", "load", "unet", "prior", "movq", "offload")
OFFLOAD_MODES = {"none": "none", "model": "enable_model_cpu_offload", "sequential": "enable_sequential_cpu_offload"}
GiB = 2**30


# ---- checkpoints -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    checkpoint: str  # prior | decoder
    folder: str
    config: str  # file in tests/data/configs
    library: str  # diffusers | transformers
    cls: str
    weights: str
    dtype: str  # as stored on the hub


FULL_22 = (  # the components of the hub's kandinsky-2-2-prior and kandinsky-2-2-decoder
    Component("prior", "prior", "kandinsky-2-2-prior.prior.json", "diffusers", "PriorTransformer",
              "diffusion_pytorch_model.safetensors", "float32"),
    Component("prior", "text_encoder", "kandinsky-2-2-prior.text_encoder.json", "transformers",
              "CLIPTextModelWithProjection", "model.safetensors", "float32"),
    Component("prior", "image_encoder", "kandinsky-2-2-prior.image_encoder.json", "transformers",
              "CLIPVisionModelWithProjection", "model.safetensors", "float16"),
    Component("decoder", "unet", "kandinsky-2-2-decoder.unet.json", "diffusers", "UNet2DConditionModel",
              "diffusion_pytorch_model.safetensors", "float32"),
    Component("decoder", "movq", "movq.json", "diffusers", "VQModel", "diffusion_pytorch_model.safetensors",
              "float32"),
)


def checkpoint_dirs(root: Path) -> tuple[Path, Path]:
    return root / "kandinsky-2-2-prior", root / "kandinsky-2-2-decoder"


def _tiny_module():
    """tests/tiny.py, loaded by path (a top-level ``tests`` package elsewhere on sys.path cannot shadow it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kbench_tiny", ROOT / "tests" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_checkpoints(root: Path, tiny: bool) -> None:
    """Write the prior and decoder folders under ``root`` unless a finished build of this recipe is there.

    Full size: component by component, tensor by tensor (see ``write_random_weights``), so memory stays at
    one tensor whatever the model size; an interrupted build resumes at the first unfinished component.
    """
    stamp = root / "BUILD"
    recipe = f"{BUILD_VERSION} {'tiny' if tiny else 'full'}"
    if stamp.is_file() and stamp.read_text() == recipe:
        return
    if stamp.is_file():  # an older recipe: start over
        shutil.rmtree(root)
    prior, decoder = checkpoint_dirs(root)
    tiny_ckpt = _tiny_module()
    if tiny:
        for folder in (prior, decoder):
            shutil.rmtree(folder, ignore_errors=True)
        tiny_ckpt.make_prior_22(prior)
        tiny_ckpt.make_decoder_22(decoder)
    else:
        for c in FULL_22:
            folder = (prior if c.checkpoint == "prior" else decoder) / c.folder
            if (folder / c.weights).is_file() and (folder / "config.json").is_file():
                continue
            print(f"  building {c.checkpoint}/{c.folder} ...", file=sys.stderr, flush=True)
            write_random_component(c, folder)
        write_small_parts(prior, decoder, tiny_ckpt)
    stamp.write_text(recipe)


def write_small_parts(prior: Path, decoder: Path, tiny_ckpt) -> None:
    """Tokenizer, image processor, schedulers and model_index.json of the full-size checkpoints.

    The tokenizer is the tiny byte-level CLIP one of tests/tiny.py: its ids (< 514) fit the real vocabulary
    of 49408, and a prompt's token count, not its ids, is what costs time.
    """
    tiny_ckpt.write_clip_tokenizer(prior / "tokenizer")
    (prior / "image_processor").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / "image_processor.json", prior / "image_processor" / "preprocessor_config.json")
    (prior / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIGS / "prior.scheduler.json", prior / "scheduler" / "scheduler_config.json")
    (decoder / "scheduler").mkdir(parents=True, exist_ok=True)
    (decoder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(tiny_ckpt.ddpm_scheduler_config(clip_sample=True), indent=2))
    tiny_ckpt._model_index(prior, "KandinskyV22PriorPipeline", tiny_ckpt.PRIOR_PARTS)
    tiny_ckpt._model_index(decoder, "KandinskyV22Pipeline", tiny_ckpt.DECODER_22_PARTS)


def write_random_component(c: Component, folder: Path) -> None:
    """Build ``c`` on the meta device from its real config; write its config and random weights."""
    import diffusers
    import torch
    import transformers

    config = json.loads((CONFIGS / c.config).read_text())
    with torch.device("meta"):
        if c.library == "diffusers":
            model = getattr(diffusers, c.cls).from_config(config)
        else:
            cls = getattr(transformers, c.cls)
            model = cls(cls.config_class.from_dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    write_random_weights(model, folder / c.weights, getattr(torch, c.dtype))
    if c.library == "diffusers":
        model.save_config(folder)
    else:
        model.config.save_pretrained(folder)


def random_tensor(module, name: str, shape: tuple, generator):
    """A value for parameter ``name`` of ``module`` that keeps activations of order 1 through the network:
    norms are the identity, biases zero, linear/conv weights N(0, 1/fan_in) (variance-preserving), the
    prior's CLIP statistics the identity (std 1, mean 0), embeddings N(0, 0.02^2) as in CLIP's own init."""
    import torch
    from torch import nn

    leaf = name.rsplit(".", 1)[-1]
    norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm))
    if leaf == "bias" or leaf == "clip_mean":
        return torch.zeros(shape)
    if leaf == "clip_std" or (norm and leaf == "weight") or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape)
    x = torch.randn(shape, generator=generator)
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and leaf == "weight":
        return x.mul_(math.prod(shape[1:]) ** -0.5)  # fan_in = in_channels/groups * kernel area
    return x.mul_(0.02)


ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_random_weights(model, path: Path, dtype) -> None:
    """Stream a safetensors file of ``model``'s state dict (meta tensors: names and shapes only), making
    each tensor just before it is written, so memory holds one tensor at a time."""
    import torch

    state = model.state_dict()
    persistent_buffers = {n for n, _ in model.named_buffers()} & set(state)
    if persistent_buffers:  # buffers need real values (e.g. position ids), which this recipe does not know
        raise RuntimeError(f"{path.parent.name}: persistent buffers {sorted(persistent_buffers)[:3]}")
    header, offset = {}, 0
    for name, t in state.items():
        size = math.prod(t.shape) * dtype.itemsize
        header[name] = {"dtype": ST_DTYPES[str(dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does
    generator = torch.Generator().manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, t in state.items():
            owner = model.get_submodule(name.rpartition(".")[0])
            value = random_tensor(owner, name, tuple(t.shape), generator).to(dtype).contiguous()
            f.write(value.reshape(-1).view(torch.uint8).numpy().data)
            del value
    os.replace(tmp, path)


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


# ---- workers (run in the child; each returns a JSON-able dict) --------------------------------------------

def _torch_setup(spec: dict):
    """(device, dtype, sync) of a worker's spec; sync waits for queued GPU work (a no-op on the CPU)."""
    import torch

    device = torch.device(spec["device"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return device, dtype, sync


def _median_time(fn, repeat: int, sync) -> dict:
    """One warm-up call, then ``repeat`` timed ones."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "times": times}


def worker_build(spec: dict) -> dict:
    build_checkpoints(Path(spec["root"]), spec["tiny"])
    return {}


def worker_load(spec: dict) -> dict:
    _, _, sync = _torch_setup(spec)
    if spec["impl"] == "ours":
        from kcli.pipelines.kandinsky import Kandinsky, LoadOptions

        t0 = time.perf_counter()
        Kandinsky.load(LoadOptions(Path(spec["prior"]), Path(spec["decoder"]), device=spec["device"],
                                   dtype=spec["dtype"]))
    else:
        from diffusers_generate import load_pipeline

        t0 = time.perf_counter()
        load_pipeline(spec["prior"], spec["decoder"], spec["dtype"], spec["device"])
    sync()
    return {"seconds": time.perf_counter() - t0}


def worker_unet(spec: dict) -> dict:
    """One CFG step: batch 2 latents at size/8, image embeddings, one timestep."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    decoder = Path(spec["decoder"])
    movq_cfg = json.loads((decoder / "movq" / "config.json").read_text())
    unet_cfg = json.loads((decoder / "unet" / "config.json").read_text())
    side = spec["size"] // 2 ** (len(movq_cfg["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, movq_cfg["latent_channels"], side, side, generator=g).to(device, dtype)
    emb = torch.randn(2, unet_cfg["encoder_hid_dim"], generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.pipelines.decoder import DecoderStage
            from kcli.pipelines.offload import Placement

            unet = DecoderStage.load(decoder, dtype=dtype, placement=Placement("none", device)).unet
            return _median_time(lambda: unet(x, t, image_embeds=emb), spec["repeat"], sync)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(decoder / "unet", torch_dtype=dtype).to(device)
        return _median_time(lambda: unet(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb},
                                         return_dict=False), spec["repeat"], sync)


def worker_prior(spec: dict) -> dict:
    """One CFG prior step: batch 2, 77 text tokens (10 of them real), one timestep."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    folder = Path(spec["prior"]) / "prior"
    cfg = json.loads((folder / "config.json").read_text())
    d, tokens = cfg["embedding_dim"], cfg["num_embeddings"]
    g = torch.Generator().manual_seed(0)
    x, proj = (torch.randn(2, d, generator=g).to(device, dtype) for _ in range(2))
    hidden = torch.randn(2, tokens, d, generator=g).to(device, dtype)
    mask = (torch.arange(tokens) < 10).expand(2, tokens).to(device)
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.models.prior import load_prior

            prior = load_prior(folder, dtype=dtype, device=device)  # as PriorStage.load does
            return _median_time(lambda: prior(x, 500, proj, hidden, mask), spec["repeat"], sync)
        from diffusers import PriorTransformer

        prior = PriorTransformer.from_pretrained(folder, torch_dtype=dtype).to(device)
        return _median_time(lambda: prior(x, timestep=500, proj_embedding=proj, encoder_hidden_states=hidden,
                                          attention_mask=mask), spec["repeat"], sync)


def worker_movq(spec: dict) -> dict:
    """One MoVQ decode of a (1, 4, size/8, size/8) latent, in the dtype each pipeline decodes in."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    decoder = Path(spec["decoder"])
    cfg = json.loads((decoder / "movq" / "config.json").read_text())
    side = spec["size"] // 2 ** (len(cfg["block_out_channels"]) - 1)
    z = torch.randn(1, cfg["latent_channels"], side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.pipelines.decoder import DecoderStage
            from kcli.pipelines.offload import Placement

            movq = DecoderStage.load(decoder, dtype=dtype, placement=Placement("none", device)).movq
            z = z.to(device, movq.dtype)
            return _median_time(lambda: movq.decode(z), spec["repeat"], sync)
        from diffusers import VQModel

        movq = VQModel.from_pretrained(decoder / "movq", torch_dtype=dtype).to(device)
        z = z.to(device, dtype)
        return _median_time(lambda: movq.decode(z, force_not_quantize=True, return_dict=False), spec["repeat"], sync)


def worker_offload(spec: dict) -> dict:
    """CUDA only: seconds for one image (the second of two) and peak VRAM over the whole run, per offload mode."""
    import torch

    device, _, sync = _torch_setup(spec)
    mode, size = spec["mode"], spec["size"]
    if spec["impl"] == "ours":
        from kcli.pipelines.kandinsky import Kandinsky, LoadOptions, Settings

        k = Kandinsky.load(LoadOptions(Path(spec["prior"]), Path(spec["decoder"]), device=spec["device"],
                                       dtype=spec["dtype"], offload=mode))
        settings = Settings(PROMPT, seed=0, width=size, height=size, steps=spec["steps"],
                            prior_steps=spec["prior_steps"])

        def image():
            return next(k.generate(settings)).image
    else:
        from diffusers_generate import generate, load_pipeline

        pipe = load_pipeline(spec["prior"], spec["decoder"], spec["dtype"], device=None)
        if mode == "none":
            pipe.to(device)
        else:
            getattr(pipe, OFFLOAD_MODES[mode])(device=device)

        def image():
            return generate(pipe, PROMPT, steps=spec["steps"], prior_steps=spec["prior_steps"], width=size,
                            height=size, seed=0)
    image()  # warm-up: CUDA kernels chosen, our zero embedding cached, offload order learned
    sync()
    t0 = time.perf_counter()
    image()
    sync()
    return {"seconds": time.perf_counter() - t0, "peak_vram": torch.cuda.max_memory_allocated(device)}


WORKERS = {"build": worker_build, "load": worker_load, "unet": worker_unet, "prior": worker_prior,
           "movq": worker_movq, "offload": worker_offload}


# ---- the measurements (parent side) -------------------------------------------------------------------------

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

    def measure(self, names: list[str]) -> None:
        steps = {"first_image": self.first_image, "load": self.load, "unet": self.unet, "prior": self.prior_step,
                 "movq": self.movq, "offload": self.offload}
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
    args.out.write_text(sections.keep(args.out.read_text() if args.out.exists() else "", report))
    _say(f"wrote {args.out} (raw figures and logs: {bench.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
