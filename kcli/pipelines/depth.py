"""Depth pictures from photos (``--depth-from``), for the depth ControlNet's hint.

A depth model of ``transformers`` (DPT, Depth-Anything: anything ``AutoModelForDepthEstimation`` builds)
predicts relative depth; it is resized to the photo's size (bicubic) and stretched to 0..255, near = white,
as transformers' ``depth-estimation`` pipeline does, which is how the ControlNet's model card makes hints.

The model is a folder or a hub id, fetched into kandinsky's cache like the checkpoints (safetensors only,
verified, ``--offline`` reads the cache). The CLI's default is the registry model's ``depth`` part
(``Intel/dpt-large`` for 2.2-depth, pinned: the model that pipeline uses when none is named).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from kcli.loading.errors import CheckpointError

DEFAULT_DEPTH_MODEL = "Intel/dpt-large"


class DepthEstimator:
    def __init__(self, model, processor, name: str, device: torch.device):
        self.model, self.processor, self.name, self.device = model, processor, name, device

    @classmethod
    def load(cls, name: str | None = None, *, device: str | torch.device = "cpu", offline: bool = False,
             progress=None) -> DepthEstimator:
        """Fetch (unless ``offline``) and build the named depth model, in float32 (one forward pass a picture)."""
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
        return cls(model.eval().to(dev), processor, name, dev)

    @torch.inference_mode()
    def __call__(self, photo):
        """A PIL photo -> its depth picture: grey (mode L), the photo's size, near = white."""
        from PIL import Image

        from kcli.pipelines.images import rgb

        photo = rgb(photo)
        inputs = self.processor(images=photo, return_tensors="pt")
        depth = self.model(pixel_values=inputs["pixel_values"].to(self.device)).predicted_depth  # (1, h, w)
        depth = torch.nn.functional.interpolate(depth[:, None].float(), size=(photo.height, photo.width),
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
        span = float(depth.max() - depth.min())
        scaled = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
        return Image.fromarray((scaled * 255).astype(np.uint8))


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or load reports from transformers: kandinsky prints its own lines."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def hint_path_beside(output: Path | None, photo: Path) -> Path:
    """Where ``--save-hint`` writes: ``NAME-hint.png`` beside an output file, else ``PHOTO-depth.png`` in the
    output folder (this folder by default)."""
    if output is not None and output.suffix:
        return output.with_name(output.stem + "-hint.png")
    return (output or Path(".")) / f"{photo.stem}-depth.png"


def depth_hint(photo_path, model: str | None = None, *, device: str = "auto", offline: bool = False, progress=None,
               save_to: Path | None = None, overwrite: bool = False) -> tuple:
    """(depth picture, what the metadata records) for ``--depth-from PHOTO``; ``save_to`` also writes the
    picture there (``--save-hint``), so ``--hint`` can reuse it."""
    from kcli.loading.errors import KandinskyError
    from kcli.pipelines.hint import file_sha256
    from kcli.pipelines.images import load_image

    photo = load_image(photo_path, "--depth-from photo")
    if save_to is not None and save_to.exists() and not overwrite:
        raise KandinskyError(f"{save_to} exists (--overwrite replaces it)")
    estimator = DepthEstimator.load(model, device=device, offline=offline, progress=progress)
    depth = estimator(photo)
    inputs = {"depth_from": str(Path(photo_path).resolve()), "depth_from_sha256": file_sha256(photo_path),
              "depth_model": estimator.name}
    del estimator
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        depth.save(save_to)
        inputs.update(hint=str(save_to.resolve()), hint_sha256=file_sha256(save_to))
    return depth, inputs
