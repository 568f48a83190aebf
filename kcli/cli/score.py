"""``kandinsky score``: how well pictures match their prompts, by an open_clip model's cosine similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kcli.cli import app
from kcli.cli.errors import user_errors
from kcli.errors import KandinskyError
from kcli.pipelines.imagemeta import IMAGE_SUFFIXES

DEFAULT_CLIP_MODEL = "ViT-L-14/openai"  # the scorer's default (kcli.pipelines.scoring), named without torch


def default_clip_model() -> str:
    """The user config's ``clip_model``, else ViT-L/14 with OpenAI's weights."""
    from kcli.cli import config

    return config.layered(None)[0].get("clip_model") or DEFAULT_CLIP_MODEL


def expand(items: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its pictures, sorted by name."""
    found = []
    for item in items:
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise KandinskyError(f"{item} has no pictures (.png, .jpg, .webp)")
            found += inside
        else:
            found.append(item)
    return found


def recorded_prompt(path: Path) -> str:
    """The prompt an image carries: kandinsky's own metadata, else an AUTOMATIC1111-style ``parameters`` text."""
    from kcli.pipelines import imagemeta as metadata

    try:
        prompt = metadata.read(path).get("settings", {}).get("prompt")
    except KandinskyError as e:
        if "does not exist" in str(e) or "cannot be read" in str(e):
            raise
        prompt = None
        text = metadata.parameters(path)
        if text:
            lines = text.splitlines()
            if lines and "Steps: " in lines[-1]:
                lines = lines[:-1]
            cut = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), len(lines))
            prompt = "\n".join(lines[:cut]).strip() or None
    if not prompt:
        raise KandinskyError(f"{path} records no prompt: give --prompt or --prompts")
    return prompt


def usable(paths: list[Path], texts: list[str | None]) -> tuple[list[Path], list[str], int]:
    """The pictures that can be scored, with their prompts (a None prompt is read from the picture), and how
    many could not: each of those is reported in one line naming it (a folder named x.png, a picture above the
    pixel limit, one that is no picture or records no prompt); the others are still scored."""
    from kcli.cli import render
    from kcli.pipelines.files import load_image

    good, prompts, failed = [], [], 0
    for path, text in zip(paths, texts):
        try:
            load_image(path, header_only=True)
            prompts.append(text if text is not None else recorded_prompt(path))
            good.append(path)
        except KandinskyError as e:
            render.error(str(e))
            failed += 1
    return good, prompts, failed


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def prompts_for(images: list[Path], prompt: str | None, prompts_file: Path | None) -> list[str | None]:
    if prompt is not None and prompts_file is not None:
        raise KandinskyError("give either --prompt or --prompts, not both")
    if prompt is not None:
        if not prompt.strip():
            raise KandinskyError("the prompt is empty")
        return [prompt] * len(images)
    if prompts_file is not None:
        try:
            lines = [line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError):
            raise KandinskyError(f"cannot read prompts file {prompts_file}") from None
        lines = [line for line in lines if line]
        if len(lines) != len(images):
            raise KandinskyError(f"{prompts_file} has {len(lines)} prompt(s) for {len(images)} picture(s): "
                                 "one line per picture, in order")
        return lines
    return [None] * len(images)  # each picture's own, read by ``usable``


@app.command()
def score(
    images: Annotated[Optional[list[Path]], typer.Argument(help="Pictures, or folders of pictures.",
                                                           show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="The text every picture is scored "
                                                  "against (default: the prompt each picture records).")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="A text file, one prompt per "
                                                         "picture in order.")] = None,
    clip_model: Annotated[Optional[str], typer.Option("--clip-model", help="open_clip model: ARCH/TAG "
                                                      "(default ViT-L-14/openai), a hub id or a folder.")] = None,
    sort: Annotated[bool, typer.Option("--sort", help="Best first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per picture on stdout.")] = False,
    list_models: Annotated[bool, typer.Option("--list-models", help="List open_clip's ARCH/TAG names and "
                                              "exit.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the network.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp32, fp16 or bf16.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and results.")] = False,
) -> None:
    """CLIP score of each picture against its prompt: the cosine similarity of their open_clip embeddings.

    Needs the open_clip_torch package: pip install -e ".\\[score]" in the kandinsky checkout, or pip install
    open_clip_torch.
    """
    from kcli.cli import render
    from kcli.cli.display import Display, DownloadView

    with user_errors():
        if list_models:
            from kcli.pipelines import clip_model_names

            for name in clip_model_names():
                typer.echo(name)
            return
        if not images:
            raise KandinskyError("no pictures: give files or folders to score")
        paths = expand(images)
        texts = prompts_for(paths, prompt, prompts_file)
        from kcli.pipelines import Scorer

        # before the model loads, each picture's header and prompt: a bad one is reported, the others go on
        paths, texts, failed = usable(paths, texts)
        if not paths:
            raise typer.Exit(1)

        name = clip_model or default_clip_model()
        with DownloadView(quiet) as progress:
            scorer = Scorer.load(name, device=device, dtype=dtype, offline=offline, progress=progress)
        with Display(quiet or as_json) as view:
            scores = scorer.score(paths, texts, on_progress=view)
        rows = list(zip(paths, texts, scores))
        if sort:
            rows.sort(key=lambda r: -r[2])
        if as_json:
            for path, text, value in rows:
                typer.echo(render.json_text({"image": str(path), "prompt": text, "score": value,
                                             "model": scorer.name}))
            if failed:
                raise typer.Exit(1)
            return
        render.table(["score", "image", "prompt"], [[f"{v:.4f}", str(p), _clip(t, 60)] for p, t, v in rows],
                     title=f"CLIP score (cosine similarity), open_clip {scorer.name}")
        if failed:
            raise typer.Exit(1)
