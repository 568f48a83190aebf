"""The reference side of the benchmark: one image with diffusers' ``KandinskyV22CombinedPipeline``.

    python benchmarks/diffusers_generate.py "a corgi" --prior P --decoder D --steps 25 --prior-steps 10 \
        -W 256 -H 256 --dtype bf16 --seed 0 -o out.png

Each component is loaded from the same local folders kandinsky reads, with ``from_pretrained`` in the
asked dtype, the way a diffusers user would; the decoder's scheduler is the checkpoint's own (DDPM).
``load_pipeline`` is also what ``bench.py`` times as diffusers' load.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def load_pipeline(prior: Path, decoder: Path, dtype: str, device: str | None = "cpu"):
    """The combined pipeline from the two checkpoint folders, every component in ``dtype``.

    ``device=None`` leaves it on the CPU for the caller to place (``.to`` or one of the offload modes).
    """
    import transformers
    from diffusers import (
        DDPMScheduler,
        KandinskyV22CombinedPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    prior, decoder, td = Path(prior), Path(decoder), torch_dtype(dtype)
    # transformers 4.56 renamed torch_dtype to dtype (the old name still works there, with a warning)
    tf = {"dtype": td} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": td}
    pipe = KandinskyV22CombinedPipeline(
        unet=UNet2DConditionModel.from_pretrained(decoder / "unet", torch_dtype=td),
        scheduler=DDPMScheduler.from_pretrained(decoder / "scheduler"),
        movq=VQModel.from_pretrained(decoder / "movq", torch_dtype=td),
        prior_prior=PriorTransformer.from_pretrained(prior / "prior", torch_dtype=td),
        prior_image_encoder=CLIPVisionModelWithProjection.from_pretrained(prior / "image_encoder", **tf),
        prior_text_encoder=CLIPTextModelWithProjection.from_pretrained(prior / "text_encoder", **tf),
        prior_tokenizer=CLIPTokenizer.from_pretrained(prior / "tokenizer"),
        prior_scheduler=UnCLIPScheduler.from_pretrained(prior / "scheduler"),
        prior_image_processor=CLIPImageProcessor.from_pretrained(prior / "image_processor"),
    )
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def generate(pipe, prompt: str, *, steps: int, prior_steps: int, width: int, height: int, seed: int):
    """One PIL image, with the noise drawn on the CPU as kandinsky does (so the same seed means the same noise)."""
    import torch

    return pipe(prompt, num_inference_steps=steps, prior_num_inference_steps=prior_steps, width=width,
                height=height, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prompt")
    p.add_argument("--prior", type=Path, required=True)
    p.add_argument("--decoder", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prior-steps", type=int, default=25)
    p.add_argument("-W", "--width", type=int, default=512)
    p.add_argument("-H", "--height", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pipe = load_pipeline(args.prior, args.decoder, args.dtype, args.device)
    image = generate(pipe, args.prompt, steps=args.steps, prior_steps=args.prior_steps, width=args.width,
                     height=args.height, seed=args.seed)
    image.save(args.output)
    print(args.output)


if __name__ == "__main__":
    main()
