"""The Kandinsky object: loads a prior and a decoder once, then makes as many images as asked.

    from kcli.pipelines.kandinsky import Kandinsky, LoadOptions, Settings
    k = Kandinsky.load(LoadOptions(prior="ckpt/kandinsky-2-2-prior", decoder="ckpt/kandinsky-2-2-decoder"))
    for result in k.generate(Settings("a corgi gliding on the wave", seed=7, num_images=2)):
        result.image.save(f"corgi-{result.seed}.png")

Seeds: image i of a call uses seed S+i and is exactly the image a single call with that seed makes.
Each image draws from one CPU generator seeded with its seed, first in the prior and then in the
decoder, in the reference's order, so a seed gives the same picture on any device and equals
diffusers' ``KandinskyV22CombinedPipeline(generator=torch.Generator("cpu").manual_seed(S))``.
The library never prints: progress goes to the optional ``on_progress(stage, done, total)`` callback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from kcli.loading.errors import KandinskyError
from kcli.pipelines.decoder import DecoderStage
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.images import SizePlan, center_crop, plan_size
from kcli.pipelines.prior import PriorStage
from kcli.samplers.noise import cpu_generator

Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: load, prior, decoder, decode


@dataclass(frozen=True)
class LoadOptions:
    """What is loaded once: checkpoints, device, dtype."""

    prior: Path
    decoder: Path
    device: str = "auto"
    dtype: str | None = None  # fp32 | fp16 | bf16; None: fp16 on CUDA, fp32 on CPU


@dataclass(frozen=True)
class Settings:
    """What one call makes. Defaults are the reference combined pipeline's."""

    prompt: str
    negative: str | None = None
    seed: int | None = None  # None: a random seed, reported in each Result
    width: int = 512
    height: int = 512
    steps: int = 100
    prior_steps: int = 25
    guidance: float = 4.0
    prior_guidance: float = 4.0
    num_images: int = 1

    def check(self) -> None:
        for name in ("steps", "prior_steps", "num_images"):
            if getattr(self, name) < 1:
                raise KandinskyError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("guidance", "prior_guidance"):
            if getattr(self, name) < 0:
                raise KandinskyError(f"{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.steps > 1000 or self.prior_steps > 1000:
            raise KandinskyError("steps cannot exceed the 1000 training timesteps")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise KandinskyError(f"seed must be between 0 and 2^63-1, got {self.seed}")


@dataclass
class Result:
    image: Image.Image
    seed: int
    settings: Settings  # with the seed actually used
    size: SizePlan
    timings: dict[str, float] = field(default_factory=dict)


class Kandinsky:
    def __init__(self, prior: PriorStage, decoder: DecoderStage, device: torch.device, dtype: torch.dtype):
        if prior.prior.config.embedding_dim != decoder.embed_dim:
            raise KandinskyError(
                f"the prior makes {prior.prior.config.embedding_dim}-d embeddings but the decoder takes "
                f"{decoder.embed_dim}-d ones: they are not from the same Kandinsky version"
            )
        self.prior, self.decoder, self.device, self.dtype = prior, decoder, device, dtype

    @classmethod
    def load(cls, opts: LoadOptions, on_progress: Progress | None = None) -> Kandinsky:
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.dtype, device)
        report = on_progress or (lambda *a: None)
        report("load", 0, 2)
        prior = PriorStage.load(Path(opts.prior), dtype=dtype, device=device)
        report("load", 1, 2)
        decoder = DecoderStage.load(Path(opts.decoder), dtype=dtype, device=device)
        report("load", 2, 2)
        return cls(prior, decoder, device, dtype)

    def plan(self, settings: Settings) -> SizePlan:
        return plan_size(settings.width, settings.height, self.decoder.pixel_step)

    def generate(self, settings: Settings, on_progress: Progress | None = None) -> Iterator[Result]:
        """Yield each image as soon as it is done, so a caller can save it before the next one starts."""
        settings.check()
        size = self.plan(settings)
        base = settings.seed if settings.seed is not None else secrets.randbits(32)
        for i in range(settings.num_images):
            one = replace(settings, seed=base + i, num_images=1)
            yield self._one(one, size, on_progress or (lambda *a: None))

    def _one(self, s: Settings, size: SizePlan, report: Progress) -> Result:
        g = cpu_generator(s.seed)
        t0 = time.perf_counter()
        image_embeds, negative_embeds = self.prior.embed(
            s.prompt, s.negative, steps=s.prior_steps, guidance=s.prior_guidance, generator=g,
            on_step=lambda i, n: report("prior", i, n),
        )
        t1 = time.perf_counter()
        with torch.inference_mode():
            latents = self.decoder.sample(
                image_embeds, negative_embeds, width=size.gen_width, height=size.gen_height, steps=s.steps,
                guidance=s.guidance, generator=g, on_step=lambda i, n: report("decoder", i, n),
            )
            t2 = time.perf_counter()
            report("decode", 0, 1)
            pixels = self.decoder.decode(latents)[0]
            report("decode", 1, 1)
        t3 = time.perf_counter()
        if size.cropped:
            pixels = center_crop(pixels, size.width, size.height)
        timings = {"prior": t1 - t0, "decoder": t2 - t1, "decode": t3 - t2}
        return Result(Image.fromarray(pixels), s.seed, s, size, timings)
