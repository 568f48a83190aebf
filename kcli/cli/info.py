"""``kandinsky info``, ``kandinsky config`` and ``kandinsky doctor``: answers without loading a model.

``info`` and ``config`` never import torch, so they answer at once.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Annotated

import typer

from kcli import __version__
from kcli.cli import app
from kcli.cli.errors import user_errors

config_app = typer.Typer(help="Where the user config lives and what it says.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command()
def info(
    image: Annotated[Path, typer.Argument(help="An image made by kandinsky.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full metadata as JSON.")] = False,
) -> None:
    """Show how an image was made (prompt, seed, settings, model), from its metadata."""
    from kcli.cli import metadata, render

    with user_errors():
        meta = metadata.read(image)
        if as_json:
            typer.echo(json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True))
            return
        render.metadata_table(image, meta)


@config_app.command("path")
def config_path() -> None:
    """Print the path of the user config file (it need not exist)."""
    from kcli.cli.config import config_path as path

    typer.echo(str(path()))


@config_app.command("show")
def config_show() -> None:
    """Print the user config's settings, and the presets there are."""
    from kcli.cli import config, render

    with user_errors():
        render.settings_table(str(config.config_path()), config.load_config(), config.preset_names())


@app.command()
def doctor() -> None:
    """Versions, devices, GPU memory, cache location and size, and the memory mode that would be used."""
    from kcli.cli import render

    with user_errors():
        import torch

        from kcli.loading.cache import home
        from kcli.pipelines.memory import plan

        rows = [("kandinsky", __version__), ("python", platform.python_version()), ("torch", torch.__version__)]
        for name in ("transformers", "safetensors", "huggingface_hub"):
            try:
                rows.append((name, __import__(name).__version__))
            except ImportError:
                rows.append((name, "missing"))
        from importlib.metadata import PackageNotFoundError, version

        try:  # the version from the package record: importing open_clip would take seconds
            rows.append(("open_clip", f"{version('open_clip_torch')} (kandinsky score, --scorer openclip)"))
        except PackageNotFoundError:
            rows.append(("open_clip", 'not installed: kandinsky score needs pip install "kandinsky-cli[score]"'))
        rows.append(("CPU", f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                            f"{torch.backends.cpu.get_cpu_capability()}"))
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                rows.append((f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of "
                                          f"{total / 2**30:.1f} GB free, bf16 {torch.cuda.is_bf16_supported()}"))
            device = torch.device("cuda")
        else:
            rows.append(("GPU", "none (CUDA not available): runs on the CPU"))
            device = torch.device("cpu")
        root = home()
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0
        rows.append(("cache", f"{root} ({size / 2**30:.2f} GB)"))
        rows.append(("memory mode", plan("auto", device).describe()))
        render.key_values("kandinsky doctor", rows)
