"""Depth pictures from photos (``--depth-from``), for the depth ControlNet's hint.

A depth model of ``transformers`` (DPT, Depth-Anything: anything ``AutoModelForDepthEstimation`` builds)
predicts relative depth; it is resized to the photo's size (bicubic) and stretched to 0..255, near = white,
as transformers' ``depth-estimation`` pipeline does, which is how the ControlNet's model card makes hints.

The model is a folder or a hub id, fetched into kandinsky's cache like the checkpoints (safetensors only,
verified, offline the cache alone). Unless the request names one, it is the registry model's ``depth`` part
(``Intel/dpt-large`` for 2.2-depth, pinned: the model that pipeline uses when none is named). It runs where
the pipeline's placement says, once per photo: the picture is kept for the next request, the model let go.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch

from kcli.errors import CheckpointError
from kcli.pipelines.files import file_sha256, load_image
from kcli.pipelines.pixels import rgb

DEFAULT_DEPTH_MODEL = "Intel/dpt-large"


class DepthEstimator:
    def __init__(self, model, processor, name: str):
        self.model, self.processor, self.name = model, processor, name

    @classmethod
    def load(cls, name: str | None = None, *, device: str | torch.device = "cpu", offline: bool = False,
             progress=None) -> DepthEstimator:
        """Fetch (unless ``offline``) and build the named depth model on ``device``, in float32 (one forward
        pass a picture)."""
        from kcli.loading.hub import resolve
        from kcli.pipelines.devices import resolve_device

        name = name or DEFAULT_DEPTH_MODEL
        folder = resolve(name, offline=offline, progress=progress)
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise CheckpointError(f"depth model {name} ({folder}) needs config.json and safetensors weights "
                                  "(kandinsky never loads pickled weights)")
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        with _quiet_transformers():
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            try:
                # the PIL-backed processor: the same resizing whether or not torchvision is installed
                processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
                model = AutoModelForDepthEstimation.from_pretrained(folder, use_safetensors=True,
                                                                    local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CheckpointError(f"depth model {name} cannot be loaded: {first}") from None
        return cls(model.eval().to(dev), processor, name)

    @torch.inference_mode()
    def __call__(self, photo):
        """A PIL photo -> its depth picture: grey (mode L), the photo's size, near = white. Runs wherever the
        model is."""
        from PIL import Image

        photo = rgb(photo)
        inputs = self.processor(images=photo, return_tensors="pt")
        device = next(self.model.parameters()).device
        depth = self.model(pixel_values=inputs["pixel_values"].to(device)).predicted_depth  # (1, h, w)
        depth = torch.nn.functional.interpolate(depth[:, None].float(), size=(photo.height, photo.width),
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
        span = float(depth.max() - depth.min())
        scaled = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
        return Image.fromarray((scaled * 255).astype(np.uint8))


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or load reports from transformers: kandinsky prints its own lines (and a torchvision
    that cannot be imported is hidden from it: ``kcli.models.vision``)."""
    from kcli.models.vision import hide_broken_torchvision

    hide_broken_torchvision()
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def estimate(k, request, events) -> tuple:
    """(the request as recorded, the depth picture) for ``request.depth_from`` on the loaded pipeline ``k``.
    With ``save_hint`` the picture is also written (to ``hint_file``, else ``PHOTO-depth.png`` here), and
    recorded as the request's hint, so ``hint=`` can reuse it."""
    from kcli.loading.hub import depth_model_of

    photo_path = Path(request.depth_from)
    name = request.depth_model or depth_model_of(k.load.model)
    photo_sha = file_sha256(photo_path)
    key = (photo_sha, name)
    if key not in k.depth_pictures:
        photo = load_image(photo_path, "--depth-from photo")
        estimator = DepthEstimator.load(name, device=k.placement.weights_device, offline=k.load.offline,
                                        progress=events)
        k.placement.attach(estimator.model, streamed=False)
        try:
            with k.placement.on(estimator.model):
                k.depth_pictures[key] = estimator(photo)
        finally:  # failed or not, it goes: a job after an out-of-memory error needs the space
            k.placement.release(estimator.model)
            del estimator
    depth = k.depth_pictures[key]
    made = {"depth_from": photo_path, "depth_from_sha256": photo_sha, "depth_model": name}
    if request.save_hint:
        target = Path(request.hint_file or f"{photo_path.stem}-depth.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        depth.save(target)
        made.update(hint=target, hint_sha256=file_sha256(target))
    return dataclasses.replace(request, **made), depth
