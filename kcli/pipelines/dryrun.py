"""``--dry-run``: the memory plan of a run, from the checkpoints' configs alone (no weights are read).

    choice = plan_run(Loading(memory="auto", vram="8GiB"), [TextToImage("x", width=1024, height=768)])
    choice.level, choice.reason, choice.plan.offload, choice.plan.tile, choice.plan.peak.cold, choice.plan.as_json()

The configs come from local folders, or from the cache's snapshot of a hub repository (a model never pulled
ends in one line). The sizes are the requests' own, on the model's grid: as asked, else the input picture's
(read from its header), an outpaint's canvas, or 512. ``vram`` plans for a CUDA device with that much free
memory, with or without one here; without it, for the device the run would use (on the CPU: no GPU plan,
the peak is the tracker's estimate of what the device would hold).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.requests import DEFAULT_SIZE, Outpaint, Request
from kcli.pipelines.settings import Loading


def plan_run(load: Loading, requests: list[Request]):
    """The ``memory.MemoryChoice`` (with its ``memplan.Plan``) a run of ``requests`` with ``load`` would make;
    a plan that fits nowhere ends in one line (needed against available), as the run itself would."""
    from kcli.loading.hub import DEPTH_MODEL, config_folders
    from kcli.pipelines import memplan
    from kcli.pipelines.configured import Configs
    from kcli.pipelines.decoder import grid_step
    from kcli.pipelines.memory import choose_memory, too_big

    model = load.model
    if model is None and load.decoder is None and any(r.hinted for r in requests):
        model = DEPTH_MODEL
    prior_dir, decoder_dir = config_folders(model, load.prior, load.decoder,
                                            inpainting=any(r.inpainting for r in requests))
    try:
        configs = Configs.from_checkpoints(prior_dir, decoder_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the configs to plan from: {getattr(e, 'filename', None) or e}") from None
    device = torch.device("cuda") if load.vram is not None else resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    step = grid_step(len(configs.movq.get("block_out_channels", [0])), len(configs.unet.get("block_out_channels", [0])))
    sizes = [planned_size(r, step) for r in requests] or [(DEFAULT_SIZE, DEFAULT_SIZE)]
    planner = memplan.planner(lambda: configs, sizes=sizes, dtype=dtype)
    choice = choose_memory(load.memory, device, planner=planner, vram=load.vram, offload=load.offload, tile=load.tile,
                           compile=load.compile)
    if not choice.plan.fits:
        raise KandinskyError(too_big(choice))
    return choice


def planned_size(request: Request, step: int = 1) -> tuple[int, int]:
    """(width, height) a request generates, on the grid of ``step`` pixels, without a model (the planner
    rounds to the model's grid itself)."""
    from kcli.pipelines.sizes import grid_size

    width, height = request.width, request.height
    if isinstance(request, Outpaint):
        from kcli.pipelines import canvas

        w, h = _picture_size(request.image)
        board = canvas.fit_canvas(w, h, canvas.parse_expand(request.expand, w, h), step)
        width, height = board.width, board.height
    elif request.sized_by_input and not (width and height):
        picture = getattr(request, "init", None) or getattr(request, "image", None)
        w, h = _picture_size(picture) if picture is not None else (DEFAULT_SIZE, DEFAULT_SIZE)
        width, height = width or w, height or h
    size = grid_size(width or DEFAULT_SIZE, height or DEFAULT_SIZE, step)
    return size.gen_width, size.gen_height


def _picture_size(picture) -> tuple[int, int]:
    """A picture's size from its header (EXIF rotation counted), or a PIL image's own."""
    if hasattr(picture, "size") and not isinstance(picture, (str, Path)):
        return picture.size
    from PIL import Image

    from kcli.pipelines.files import load_image

    load_image(Path(picture), "image", header_only=True)  # a picture PIL reads, under the pixel limit
    with Image.open(picture) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
