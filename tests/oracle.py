"""diffusers as the test oracle: reference pipelines loaded from the tiny checkpoints on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FP32 = torch.float32


def pil_image_processor(folder: Path):
    """The CLIP image processor the reference pipelines had before transformers 5, which picks a torchvision-backed
    one (resizing slightly differently) whenever torchvision is installed; kcli always uses the PIL one."""
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor
    return CLIPImageProcessor.from_pretrained(folder)


def _prior_parts(prior: Path) -> dict:
    """The prior's components, as every combined pipeline takes them (``prior_*`` keyword arguments)."""
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    return {
        "prior_prior": PriorTransformer.from_pretrained(prior / "prior"),
        # fp32 on the CPU, as the tests run ours (transformers 5 would keep the stored fp16 of the 2.2 encoder)
        "prior_image_encoder": CLIPVisionModelWithProjection.from_pretrained(prior / "image_encoder", dtype=FP32),
        "prior_text_encoder": CLIPTextModelWithProjection.from_pretrained(prior / "text_encoder", dtype=FP32),
        "prior_tokenizer": CLIPTokenizer.from_pretrained(prior / "tokenizer"),
        "prior_scheduler": UnCLIPScheduler.from_pretrained(prior / "scheduler"),
        "prior_image_processor": pil_image_processor(prior / "image_processor"),
    }


def combined_22(prior: Path, decoder: Path, scheduler_cls=None, kind: str = "KandinskyV22CombinedPipeline"):
    """A combined (prior + decoder) pipeline of ``kind``: the text-to-image, Img2Img or Inpaint one."""
    import diffusers
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    prior, decoder = Path(prior), Path(decoder)
    scheduler_cls = scheduler_cls or DDPMScheduler
    pipe = getattr(diffusers, kind)(
        unet=UNet2DConditionModel.from_pretrained(decoder / "unet"),
        scheduler=scheduler_cls.from_pretrained(decoder / "scheduler"),
        movq=VQModel.from_pretrained(decoder / "movq"),
        **_prior_parts(prior),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def combined_21(prior: Path, decoder: Path, kind: str = "KandinskyCombinedPipeline"):
    """A Kandinsky 2.1 combined pipeline of ``kind`` (text-to-image, Img2Img or Inpaint), loaded from disk."""
    import diffusers
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP
    from transformers import XLMRobertaTokenizerFast

    prior, decoder = Path(prior), Path(decoder)
    pipe = getattr(diffusers, kind)(
        text_encoder=MultilingualCLIP.from_pretrained(decoder / "text_encoder"),
        tokenizer=XLMRobertaTokenizerFast.from_pretrained(decoder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(decoder / "unet"),
        scheduler=DDIMScheduler.from_pretrained(decoder / "scheduler"),
        movq=VQModel.from_pretrained(decoder / "movq"),
        **_prior_parts(prior),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_uint8(images) -> np.ndarray:
    """(B, H, W, 3) uint8 from diffusers' ``output_type="np"`` floats, rounded the way PIL output is."""
    return (np.asarray(images) * 255).round().astype(np.uint8)


def assert_images_match(ours: np.ndarray, ref: np.ndarray, *, mean_tol=0.5, within=2, share=0.995) -> None:
    """The bulk of the image must agree (shared/reference/README.md): random tiny weights amplify float noise."""
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    close = float((diff <= within).mean())
    assert diff.mean() <= mean_tol and close >= share, (
        f"mean |diff| {diff.mean():.3f}/255, {close:.4%} within {within}/255, max {diff.max()}"
    )


def assert_same_structure(ours, ref, params: int) -> None:
    """Our module and diffusers' (both built on the meta device) have the same tensors, names and shapes."""
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sorted(ours_shapes) == sorted(ref_shapes)
    assert ours_shapes == ref_shapes
    assert sum(p.numel() for p in ours.parameters()) == params
    assert not list(ours.buffers()), "buffers cannot be filled from a checkpoint on the meta device"
