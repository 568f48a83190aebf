"""``kandinsky prior fit``: a linear prior from a folder of captioned pictures (the paper's domain prior)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.errors import KandinskyError
from kcli.pipelines.imagemeta import IMAGE_SUFFIXES

prior_app = typer.Typer(help="The prior's own tools: fit a linear prior.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")


def find_pairs(folder: Path | None, pairs_file: Path | None) -> list[tuple[Path, str]]:
    """(image, caption) pairs: pictures with a same-named .txt in ``folder``, or lines of a JSONL file
    ``{"image": path, "caption": text}`` (paths relative to the file)."""
    if pairs_file is not None:
        try:
            lines = pairs_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            raise KandinskyError(f"cannot read pairs file {pairs_file}") from None
        pairs = []
        for n, line in enumerate((ln for ln in lines if ln.strip()), 1):
            try:
                item = json.loads(line)
                pairs.append(((pairs_file.parent / item["image"]), str(item["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise KandinskyError(f"{pairs_file} line {n}: expected {{\"image\": ..., \"caption\": ...}}") from None
        return pairs
    if folder is None or not folder.is_dir():
        raise KandinskyError(f"{folder} is not a folder of pictures")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise KandinskyError(f"{folder} has no pictures (.png, .jpg, .webp)")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise KandinskyError(f"{len(missing)} picture(s) have no caption (a .txt with the same name), "
                             f"e.g. {missing[0].name}")
    return [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in images]


@prior_app.command("fit")
def fit_command(
    folder: Annotated[Optional[Path], typer.Argument(help="Pictures, each with a same-named .txt caption.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the fitted prior (.safetensors).")] = None,
    pairs: Annotated[Optional[Path], typer.Option("--pairs", help="A JSONL file of {\"image\", \"caption\"} "
                                                  "pairs instead of a folder.")] = None,
    ridge: Annotated[float, typer.Option("--ridge", help="L2 penalty on the map (0: plain least squares).")] = 1e-3,
    model: Annotated[Optional[str], typer.Option("--model", help="Model by name (default 2.2).")] = None,
    prior: Annotated[Optional[str], typer.Option("--prior", help="Prior checkpoint folder or hub id.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the network.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32, fp16 or bf16.")] = None,
) -> None:
    """Fit a linear map from CLIP text to CLIP image embeddings; use it with --prior-mode linear."""
    from kcli.cli import render
    from kcli.cli.display import Display

    with user_errors():
        if out is None or out.suffix != ".safetensors":
            raise KandinskyError("--out must name a .safetensors file")
        found = find_pairs(folder, pairs)
        if len(found) < 2:
            raise KandinskyError("a linear prior needs at least 2 captioned pictures")
        from kcli.pipelines import fit_linear_prior

        with Display() as view:
            result = fit_linear_prior(found, model=model, prior=prior, offline=offline, device=device, dtype=dtype,
                                      ridge=ridge, events=view)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.save(out, pairs=len(found), ridge=ridge, prior=prior)
        render.info(f"fitted on {len(found)} pairs: {tuple(result.weight.shape)} map written")
        typer.echo(str(out))
