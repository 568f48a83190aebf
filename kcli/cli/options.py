"""The flags every generating command shares, declared once.

``@generation_options`` appends them to a command's signature (Typer reads the signature) and passes
them to the command as one ``opts: GenOptions``. Three groups, as in the help: sampling (per image),
model and device (load time), output (CLI only).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

SAMPLING, MODEL, DEVICE, OUTPUT = "Sampling", "Model", "Device", "Output"


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
    model: Optional[str] = None
    prior: Optional[str] = None
    decoder: Optional[str] = None
    offline: bool = False
    device: str = "auto"
    dtype: Optional[str] = None
    output: Optional[Path] = None
    overwrite: bool = False
    quiet: bool = False


FLAGS = {
    "negative": typer.Option("--negative", help="What to steer away from.", rich_help_panel=SAMPLING),
    "seed": typer.Option("--seed", min=0, help="Random seed; image i of -n uses seed+i. Drawn and printed if left out.",
                         rich_help_panel=SAMPLING),
    "width": typer.Option("--width", "-W", help="Width in pixels (default: 512, or the input image's).",
                          rich_help_panel=SAMPLING),
    "height": typer.Option("--height", "-H", help="Height in pixels (default: 512, or the input image's).",
                           rich_help_panel=SAMPLING),
    "steps": typer.Option("--steps", help="Decoder denoising steps.", rich_help_panel=SAMPLING),
    "prior_steps": typer.Option("--prior-steps", help="Prior denoising steps.", rich_help_panel=SAMPLING),
    "guidance": typer.Option("--guidance", help="Decoder classifier-free guidance (1 = off).", rich_help_panel=SAMPLING),
    "prior_guidance": typer.Option("--prior-guidance", help="Prior classifier-free guidance (1 = off).",
                                   rich_help_panel=SAMPLING),
    "num_images": typer.Option("--num-images", "-n", min=1, help="How many images.", rich_help_panel=SAMPLING),
    "model": typer.Option("--model", help="Model by name: 2.2 (default) or 2.1; see `kandinsky models list`. "
                          "--prior/--decoder replace its parts.", rich_help_panel=MODEL),
    "prior": typer.Option("--prior", help="Prior checkpoint: a folder (diffusers layout) or a hub id.",
                          rich_help_panel=MODEL),
    "decoder": typer.Option("--decoder", help="Decoder checkpoint: a folder (diffusers layout) or a hub id.",
                            rich_help_panel=MODEL),
    "offline": typer.Option("--offline", help="Never contact the network: use only the cache (as HF_HUB_OFFLINE=1).",
                            rich_help_panel=MODEL),
    "device": typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=DEVICE),
    "dtype": typer.Option("--dtype", help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).",
                          rich_help_panel=DEVICE),
    "output": typer.Option("--output", "-o", help="Output file, or folder (default: <prompt>-<seed>.png here).",
                           rich_help_panel=OUTPUT),
    "overwrite": typer.Option("--overwrite", help="Replace existing files.", rich_help_panel=OUTPUT),
    "quiet": typer.Option("--quiet", "-q", help="Only errors; saved paths still go to stdout.", rich_help_panel=OUTPUT),
}
TYPES = {"negative": Optional[str], "seed": Optional[int], "width": Optional[int], "height": Optional[int],
         "steps": int, "prior_steps": int, "guidance": float, "prior_guidance": float, "num_images": int,
         "model": Optional[str], "prior": Optional[str], "decoder": Optional[str], "offline": bool, "device": str,
         "dtype": Optional[str], "output": Optional[Path], "overwrite": bool, "quiet": bool}


def generation_options(command):
    """Append the shared flags to ``command``'s parameters; it receives them as ``opts``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                          annotation=Annotated[TYPES[f.name], FLAGS[f.name]])
        for f in fields(GenOptions)
    ]

    @functools.wraps(command)
    def wrapper(**kwargs):
        opts = GenOptions(**{f.name: kwargs.pop(f.name) for f in fields(GenOptions)})
        return command(**kwargs, opts=opts)

    wrapper.__signature__ = inspect.Signature([*own, *shared])
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    del wrapper.__wrapped__  # Typer must read the new signature, not the command's
    return wrapper
