"""Every setting, declared once: a dataclass field with its type, default and help, and where it applies.

    steps: int = setting(100, "Decoder denoising steps.", min=1, job=True, recorded=True)

Three groups, as stable-diffusion.cpp keeps them: ``Loading`` (what is loaded once: model, device, memory),
``Sampling`` (what each request makes: seed, size, steps; the requests of ``kcli.pipelines.requests``
extend it with their own inputs) and ``Output`` (what a front end does with the images). Everything else
is derived from these declarations by the functions at the bottom:

- the command line's flags (``kcli/cli/flags.py`` turns each field into an option, in its help panel);
- the keys of presets and the user config (``file_keys``), with their types;
- the keys of a batch's JSON lines (``job_keys``);
- the ``settings`` and ``inputs`` written into each image, and what ``--from`` reads back (``record``,
  ``read_back``);
- a server's request bodies (the same ``job_keys`` and ``record``).

This module imports nothing heavy: the command line reads it to draw ``--help`` without torch.
(No ``from __future__ import annotations`` here: the field types are read as real types.)
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kcli.errors import KandinskyError

# Where a setting applies: the help panels of the command line, and the three groups above.
SAMPLING, MODEL, DEVICE, BATCH, OUTPUT, INPUT = "Sampling", "Model", "Device", "Batch", "Output", "Input"


@dataclass(frozen=True)
class Spec:
    """What the one declaration of a setting says besides its name, type and default."""

    help: str
    panel: str = SAMPLING
    short: str | None = None  # a one-letter flag, e.g. "-W"
    flag: str | None = None  # the long flag, when it is not --the-name (e.g. --no-paste-back)
    min: float | None = None  # bounds of a number (each number of a tuple), checked wherever it comes from
    max: float | None = None
    file: bool = True  # a key of presets and the user config
    job: bool = False  # a key of a batch's JSON lines (and a server's request body)
    recorded: bool = False  # written into each image and read back by --from
    argument: bool = False  # a positional argument on the command line
    commands: frozenset | None = None  # the commands that offer it (None: every command of its group; RECORDED_ONLY:
                                       # none, a value the pipeline fills in and images record, e.g. a file's hash)


def setting(default, help: str, **spec):
    """A dataclass field that is a setting: ``help`` and the keywords of ``Spec`` describe it."""
    factory = {"default_factory": default} if callable(default) and not isinstance(default, type) else {
        "default": default}
    return field(metadata={"setting": Spec(help, **spec)}, **factory)


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("setting")


def settings_of(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are settings, in declaration order (base classes first)."""
    return [f for f in dataclasses.fields(cls) if spec_of(f) is not None]


def base_type(kind) -> type:
    """``int | None`` -> int; ``list[str]`` -> list."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_origin(kind) or kind


# ---- the groups -----------------------------------------------------------------------------------------

MAX_SIDE = 4096  # pixels: the models were trained at up to 1024; beyond this no plan fits a GPU

GENERATING = frozenset({"generate", "fuse", "vary", "inpaint", "outpaint"})
FROM_A_PROMPT_LIST = frozenset({"generate", "inpaint", "outpaint"})  # fuse and vary take their items as arguments
RECORDED_ONLY = frozenset()  # offered by no command


@dataclass(frozen=True, kw_only=True)
class Loading:
    """What is loaded once and serves every request: checkpoints, device, precision, memory, the scorer."""

    model: str | None = setting(None, "Model by name: 2.2 (default), 2.1 or 2.2-depth; see `kandinsky models list`. "
                                "--prior/--decoder replace its parts.", panel=MODEL, recorded=True)
    prior: str | None = setting(None, "Prior checkpoint: a folder (diffusers layout) or a hub id.", panel=MODEL,
                                recorded=True)
    decoder: str | None = setting(None, "Decoder checkpoint: a folder (diffusers layout) or a hub id.",
                                  panel=MODEL, recorded=True)
    offline: bool = setting(False, "Never contact the network: use only the cache (as HF_HUB_OFFLINE=1).",
                            panel=MODEL)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", panel=DEVICE)
    dtype: str | None = setting(None, "fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).", panel=DEVICE,
                                recorded=True)
    memory: str = setting("auto", "GPU memory use: auto (from free memory), high, balanced, low, min. Sets "
                          "offload and tiling.", panel=DEVICE)
    vram: str | None = setting(None, "Plan for a GPU with this much free memory (e.g. 8GiB, 8G, 8000MB), with or "
                               "without one here (with --dry-run on a CPU: the plan for a CUDA device).",
                               panel=DEVICE, commands=GENERATING)
    offload: str | None = setting(None, "none, model (one model on the GPU at a time) or sequential (weights "
                                  "streamed block by block). Overrides --memory.", panel=DEVICE)
    tile: bool | None = setting(None, "Decode in tiles (default: only large pictures).", panel=DEVICE)
    compile: bool = setting(False, "torch.compile the UNet (slow first image, faster steps).", panel=DEVICE)
    batch: int | None = setting(None, "Images per UNet call for -n, --best-of and a prompts file's jobs that differ "
                                "only in prompt and seed (default: 4 on CUDA without offload, else 1). Each image "
                                "stays the one its seed makes alone.", panel=DEVICE, min=1, max=64)
    scorer: str = setting("prior", "What ranks --best-of candidates: prior (its own CLIP) or openclip (an "
                          "open_clip model, --clip-model; needs the \\[score] extra).")
    clip_model: str | None = setting(None, "The open_clip model for --scorer openclip (implies it): ARCH/TAG "
                                     "(default ViT-L-14/openai), a hub id or a folder.")


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """What one request makes. Defaults are the reference combined pipeline's."""

    negative: str | None = setting(None, "What to steer away from.", job=True, recorded=True)
    seed: int | None = setting(None, "Random seed; image i of -n uses seed+i. Drawn and printed if left out (in "
                               "a batch: derived from each prompt, so reruns repeat).", min=0, max=2**63 - 1, file=False,
                               job=True, recorded=True)
    width: int | None = setting(None, "Width in pixels (default: {size}).", short="-W", min=1, max=MAX_SIDE,
                                job=True, recorded=True,
                                commands=GENERATING - {"outpaint"})  # outpaint's size comes from --expand
    height: int | None = setting(None, "Height in pixels (default: {size}).", short="-H", min=1, max=MAX_SIDE,
                                 job=True, recorded=True,
                                 commands=GENERATING - {"outpaint"})
    steps: int = setting(100, "Decoder denoising steps.", min=1, max=1000, job=True, recorded=True)
    prior_steps: int = setting(25, "Prior denoising steps.", min=1, max=1000, job=True, recorded=True)
    guidance: float = setting(4.0, "Decoder classifier-free guidance (1 = off).", min=0, max=100, job=True,
                              recorded=True)
    prior_guidance: float = setting(4.0, "Prior classifier-free guidance (1 = off).", min=0, max=100, job=True,
                                    recorded=True)
    num_images: int = setting(1, "How many images; image i uses seed+i.", short="-n", min=1, max=10_000,
                              job=True)
    best_of: int = setting(1, "Make N candidates per image and keep the one CLIP finds closest to the prompt "
                           "(--scorer).", min=1, max=100, job=True)
    sampler: str | None = setting(None, "Decoder sampler: default (the checkpoint's), ddpm, ddim, dpm++2m, "
                                  "dpm++2m-karras, euler, euler_a (Euler ancestral).", job=True, recorded=True)
    prior_mode: str = setting("diffusion", "diffusion (the prior), linear (a fitted map, --linear-prior) or none "
                              "(the CLIP text embedding as is: the paper's baseline).", recorded=True)
    linear_prior: str | None = setting(None, "A file made by `kandinsky prior fit`.", recorded=True)


@dataclass(frozen=True, kw_only=True)
class Output:
    """What a front end does with the images: where they go, how they are named, what it prints."""

    preset: str | None = setting(None, "Settings by name: default, fast, quality, lowvram (presets/).",
                                 file=False)
    prompts_file: str | None = setting(None, "One job per line (text, or JSON with overrides); - reads standard "
                                       "input.", panel=BATCH, file=False, commands=FROM_A_PROMPT_LIST)
    resume: bool = setting(False, "Skip jobs whose images are already in the output folder.", panel=BATCH,
                           file=False, commands=FROM_A_PROMPT_LIST)
    ray: str | None = setting(None, "Run the batch's jobs on a Ray cluster: local (a private one on "
                              "this machine), auto (the one `ray start` made) or its ADDRESS; -o must be a "
                              "folder every node shares. Needs the \\[ray] extra.", panel=BATCH, file=False,
                              commands=FROM_A_PROMPT_LIST)
    ray_workers: int | None = setting(None, "With --ray: at most N workers (default: one per GPU, or one per "
                                      "node when the cluster has none).", panel=BATCH, min=1, max=100_000,
                                      file=False, commands=FROM_A_PROMPT_LIST)
    output: Path | None = setting(None, "Output file, or folder (default: this folder).", short="-o",
                                  panel=OUTPUT)
    name: str = setting("{date}-{slug}-{seed}", "File name template in a folder: {fields}.", panel=OUTPUT,
                        job=True)
    overwrite: bool = setting(False, "Replace existing files.", panel=OUTPUT)
    json: bool = setting(False, "One JSON object per image on stdout (path, seed, timings); with --dry-run, the "
                         "plan's.", panel=OUTPUT, file=False)
    dry_run: bool = setting(False, "Plan without loading any weights: print the memory level, offload, tiling and "
                            "estimated peak GPU memory (cold and warm), then stop.", panel=OUTPUT, file=False,
                            commands=GENERATING)
    quiet: bool = setting(False, "Only errors; saved paths still go to stdout.", short="-q", panel=OUTPUT)
    server: str | None = setting(None, "Send the jobs to a running `kandinsky serve` at this URL (or "
                                 "KANDINSKY_SERVER; its key in KANDINSKY_API_KEY) instead of loading a model here.",
                                 panel=OUTPUT, file=False, commands=GENERATING)


GROUPS = (Loading, Sampling, Output)
CONFIG_ONLY = {"preset": str, "cache_dir": str}  # keys of the user config that are not settings


# ---- what is derived from the declarations --------------------------------------------------------------

def file_keys(*classes) -> dict[str, type]:
    """Keys of presets and the user config, with their types: every setting with ``file=True``."""
    keys = {f.name: base_type(f.type) for cls in (GROUPS + classes) for f in settings_of(cls) if spec_of(f).file}
    return {k: str if t is Path else t for k, t in keys.items()}  # TOML has no paths: they are strings


def job_keys(*classes) -> dict[str, type]:
    """Keys a batch's JSON line may set (besides ``prompt``), with their types."""
    keys = {"prompt": str}
    keys.update({f.name: base_type(f.type) for cls in (GROUPS + classes) for f in settings_of(cls)
                 if spec_of(f).job})
    return {k: str if t is Path else t for k, t in keys.items()}  # JSON has no paths: they are strings


def recorded_names(cls) -> list[str]:
    return [f.name for f in settings_of(cls) if spec_of(f).recorded]


def record(request) -> dict:
    """What an image says about the request that made it: ``settings`` (the sampling settings and the
    prompt) and ``inputs`` (the request's own fields, e.g. strength or the mask's path; those not given are
    left out)."""
    own = {f.name for f in settings_of(Sampling)} | {"prompt"}
    settings, inputs = {"prompt": request.label}, {}
    for f in settings_of(type(request)):
        if not spec_of(f).recorded:
            continue
        value = _plain(getattr(request, f.name))
        if f.name in own:
            settings[f.name] = value
        elif value is not None:
            inputs[f.name] = value
    return {"settings": settings, "inputs": inputs}


def read_back(meta: dict, *classes) -> dict:
    """The settings ``--from`` takes from an image's metadata, by name (``settings``, ``inputs``, ``load``).
    Each value must have its setting's type (a number where a number goes, finite: ``check_ranges`` follows),
    or one line names the field: the metadata is text anyone can edit."""
    types_ = {f.name: f.type for cls in (Loading, Sampling, *classes) for f in settings_of(cls)
              if spec_of(f).recorded}
    found = {}
    for section in ("load", "settings", "inputs"):
        values = meta.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise KandinskyError(f"the metadata's {section!r} must be an object, got {_shown(values)}")
        for k, v in values.items():
            if k in types_ and v is not None:
                found[k] = typed(f"the metadata's {k}", v, types_[k])
    return found


def typed(what: str, value, kind):
    """``value`` as the setting type ``kind`` (int, float, str, bool, Path, a tuple of them), from JSON: an int
    stands for a float, a string for a path, a list for a tuple; anything else is one line naming ``what``."""
    want = base_type(kind)
    if want is tuple:
        if not isinstance(value, (list, tuple)):
            raise KandinskyError(f"{what} must be a list, got {_shown(value)}")
        shape = next((a for a in (kind, *typing.get_args(kind)) if typing.get_origin(a) is tuple), None)
        inner = [a for a in typing.get_args(shape) if a is not Ellipsis]  # tuple[float, ...] -> [float]
        return tuple(typed(what, v, inner[0]) if inner else _scalar(what, v) for v in value)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is Path and isinstance(value, str):
        return value
    if want in (int, float, str, bool) and isinstance(value, want) and not (want is not bool and
                                                                          isinstance(value, bool)):
        return value
    name = {int: "a whole number", float: "a number", str: "text", bool: "true or false", Path: "a path"}.get(
        want, want.__name__)
    raise KandinskyError(f"{what} must be {name}, got {_shown(value)}")


def _scalar(what: str, value):
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    raise KandinskyError(f"{what} must be text or a number, got {_shown(value)}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value):
    """A JSON-friendly value: paths as absolute strings, tuples as lists; pictures are not recorded."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return None


def check_ranges(values) -> None:
    """Every number the settings of ``values`` (a settings dataclass) hold is finite and within its declared
    bounds, or one line names it. Flags, presets, batch lines, ``--from`` and request bodies all become
    requests, so this one check covers them all."""
    for f in settings_of(type(values)):
        spec, value = spec_of(f), getattr(values, f.name)
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            name = f.name.replace("_", "-")
            if not math.isfinite(v):
                raise KandinskyError(f"{name} must be a finite number, got {v}")
            if spec.min is not None and v < spec.min:
                bound = "not be negative" if spec.min == 0 else f"be at least {spec.min:g}"
                raise KandinskyError(f"{name} must {bound}, got {v}")
            if spec.max is not None and v > spec.max:
                raise KandinskyError(f"{name} must be at most {_number(spec.max)}, got {v}")


def _number(x) -> str:
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else f"{x:g}"
