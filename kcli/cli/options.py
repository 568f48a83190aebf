"""The flags every generating command shares, declared once, and how their values are decided.

``@generation_options`` appends them to a command's signature (Typer reads the signature) and passes
them to the command as one ``opts: GenOptions``, noting which flags were given on the command line.
``resolve`` then layers the values: built-in defaults < user config < preset < (an image's recorded
settings, with ``--from``) < flags given. Help panels: sampling (per image), model and device (load
time), batch and output (CLI only).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Optional

import typer

SAMPLING, MODEL, DEVICE, BATCH, OUTPUT = "Sampling", "Model", "Device", "Batch", "Output"


@dataclass(frozen=True)
class GenOptions:
    negative: Optional[str] = None
    seed: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    steps: int = 100
    prior_steps: int = 25
    guidance: float = 4.0
    prior_guidance: float = 4.0
    num_images: int = 1
    best_of: int = 1
    scorer: str = "prior"
    clip_model: Optional[str] = None
    sampler: Optional[str] = None
    prior_mode: str = "diffusion"
    linear_prior: Optional[str] = None
    preset: Optional[str] = None
    model: Optional[str] = None
    prior: Optional[str] = None
    decoder: Optional[str] = None
    offline: bool = False
    device: str = "auto"
    dtype: Optional[str] = None
    memory: str = "auto"
    offload: Optional[str] = None
    tile: Optional[bool] = None
    compile: bool = False
    prompts_file: Optional[str] = None
    resume: bool = False
    output: Optional[Path] = None
    name: str = "{date}-{slug}-{seed}"
    overwrite: bool = False
    json: bool = False
    quiet: bool = False
    given: frozenset = field(default=frozenset(), compare=False)  # flags set on the command line


def _opt(*names, panel, help, **kw):
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


FLAGS = {
    "negative": _opt("--negative", panel=SAMPLING, help="What to steer away from."),
    "seed": _opt("--seed", min=0, panel=SAMPLING,
                 help="Random seed; image i of -n uses seed+i. Drawn and printed if left out (in a batch: "
                      "derived from each prompt, so reruns repeat)."),
    "width": _opt("--width", "-W", panel=SAMPLING, help="Width in pixels (default: 512, or the input image's)."),
    "height": _opt("--height", "-H", panel=SAMPLING, help="Height in pixels (default: 512, or the input image's)."),
    "steps": _opt("--steps", panel=SAMPLING, help="Decoder denoising steps."),
    "prior_steps": _opt("--prior-steps", panel=SAMPLING, help="Prior denoising steps."),
    "guidance": _opt("--guidance", panel=SAMPLING, help="Decoder classifier-free guidance (1 = off)."),
    "prior_guidance": _opt("--prior-guidance", panel=SAMPLING, help="Prior classifier-free guidance (1 = off)."),
    "num_images": _opt("--num-images", "-n", min=1, panel=SAMPLING, help="Images per prompt."),
    "best_of": _opt("--best-of", min=1, panel=SAMPLING,
                    help="Make N candidates per image and keep the one CLIP finds closest to the prompt (--scorer)."),
    "scorer": _opt("--scorer", panel=SAMPLING, help="What ranks --best-of candidates: prior (its own CLIP) or "
                   "openclip (an open_clip model, --clip-model; needs the \\[score] extra)."),
    "clip_model": _opt("--clip-model", panel=SAMPLING, help="The open_clip model for --scorer openclip (implies it): "
                       "ARCH/TAG (default ViT-L-14/openai), a hub id or a folder."),
    "sampler": _opt("--sampler", panel=SAMPLING,
                    help="Decoder sampler: default (the checkpoint's), ddpm, ddim, dpm++2m, dpm++2m-karras."),
    "prior_mode": _opt("--prior-mode", panel=SAMPLING, help="diffusion (the prior), linear (a fitted map, "
                       "--linear-prior) or none (the CLIP text embedding as is: the paper's baseline)."),
    "linear_prior": _opt("--linear-prior", panel=SAMPLING, help="A file made by `kandinsky prior fit`."),
    "preset": _opt("--preset", panel=SAMPLING, help="Settings by name: default, fast, quality, lowvram (presets/)."),
    "model": _opt("--model", panel=MODEL, help="Model by name: 2.2 (default), 2.1 or 2.2-depth; see "
                  "`kandinsky models list`. "
                  "--prior/--decoder replace its parts."),
    "prior": _opt("--prior", panel=MODEL, help="Prior checkpoint: a folder (diffusers layout) or a hub id."),
    "decoder": _opt("--decoder", panel=MODEL, help="Decoder checkpoint: a folder (diffusers layout) or a hub id."),
    "offline": _opt("--offline", panel=MODEL, help="Never contact the network: use only the cache (as HF_HUB_OFFLINE=1)."),
    "device": _opt("--device", panel=DEVICE, help="auto, cpu, cuda or cuda:N."),
    "dtype": _opt("--dtype", panel=DEVICE, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)."),
    "memory": _opt("--memory", panel=DEVICE,
                   help="GPU memory use: auto (from free memory), high, balanced, low, min. Sets offload and tiling."),
    "offload": _opt("--offload", panel=DEVICE, help="none, model (one model on the GPU at a time) or sequential "
                    "(weights streamed block by block). Overrides --memory."),
    "tile": _opt("--tile/--no-tile", panel=DEVICE, help="Decode in tiles (default: only large pictures)."),
    "compile": _opt("--compile", panel=DEVICE, help="torch.compile the UNet (slow first image, faster steps)."),
    "prompts_file": _opt("--prompts-file", panel=BATCH,
                         help="One job per line (text, or JSON with overrides); - reads standard input."),
    "resume": _opt("--resume", panel=BATCH, help="Skip jobs whose images are already in the output folder."),
    "output": _opt("--output", "-o", panel=OUTPUT, help="Output file, or folder (default: this folder)."),
    "name": _opt("--name", panel=OUTPUT,
                 help="File name template in a folder: {date} {time} {slug} {seed} {index} {model}."),
    "overwrite": _opt("--overwrite", panel=OUTPUT, help="Replace existing files."),
    "json": _opt("--json", panel=OUTPUT, help="One JSON object per image on stdout (path, seed, timings)."),
    "quiet": _opt("--quiet", "-q", panel=OUTPUT, help="Only errors; saved paths still go to stdout."),
}
TYPES = {f.name: f.type for f in fields(GenOptions)}


def _annotation(name: str):
    kind = eval(TYPES[name], {"Optional": Optional, "Path": Path})  # the dataclass' own annotation
    return Annotated[kind, FLAGS[name]]


def generation_options(command):
    """Append the shared flags to ``command``'s parameters; it receives them as ``opts``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    names = [n for n in FLAGS]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=GenOptions.__dataclass_fields__[n].default,
                                annotation=_annotation(n)) for n in names]

    context = inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(command)
    def wrapper(**kwargs):
        ctx = kwargs.pop("typer_context")  # Typer passes its context: it knows where each value came from
        sources = {n: ctx.get_parameter_source(n) for n in names}
        given = frozenset(n for n, src in sources.items() if src is not None and src.name not in
                          ("DEFAULT", "DEFAULT_MAP"))
        opts = GenOptions(**{n: kwargs.pop(n) for n in names}, given=given)
        return command(**kwargs, opts=opts)

    shared.append(context)
    wrapper.__signature__ = inspect.Signature([*own, *shared])
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    del wrapper.__wrapped__  # Typer must read the new signature, not the command's
    return wrapper


def resolve(opts: GenOptions, *, recorded: dict | None = None, keep_size: bool = False) -> GenOptions:
    """Layer the values: defaults < user config < preset < ``recorded`` (``--from``) < flags given.

    ``keep_size``: modes that start from a picture take its size unless -W/-H are given, whatever a
    preset or the config says.
    """
    from kcli.cli import config

    layered, _ = config.layered(opts.preset)
    values = dict(layered)
    values.update(recorded or {})
    if keep_size:
        for key in ("width", "height"):
            values.pop(key, None)
    values.update({n: getattr(opts, n) for n in opts.given})
    if "output" in values and values["output"] is not None:
        values["output"] = Path(values["output"])
    known = {f.name for f in fields(GenOptions)} - {"given"}
    return replace(opts, **{k: v for k, v in values.items() if k in known})
