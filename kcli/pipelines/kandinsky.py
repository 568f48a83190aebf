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

import numpy as np
import torch
from PIL import Image

from kcli.loading.errors import KandinskyError
from kcli.pipelines.decoder import DecoderStage
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.hint import hint_pixels
from kcli.pipelines.images import SizePlan, center_crop, paste_original, plan_size, resize, rgb, to_pixels
from kcli.pipelines.offload import Placement
from kcli.pipelines.prior import PriorStage
from kcli.samplers import SAMPLER_NAMES
from kcli.samplers.noise import cpu_generator

Progress = Callable[[str, int, int], None]  # (stage, done, total); stages: load, prior, decoder, decode


@dataclass(frozen=True)
class LoadOptions:
    """What is loaded once: checkpoints, device, dtype."""

    prior: Path
    decoder: Path
    device: str = "auto"
    dtype: str | None = None  # fp32 | fp16 | bf16; None: fp16 on CUDA, fp32 on CPU
    offload: str = "none"  # none | model | sequential (see pipelines/offload.py)
    compile: bool = False  # torch.compile the UNet


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
    sampler: str | None = None  # None: the decoder checkpoint's own; or ddpm, ddim, dpm++2m, dpm++2m-karras
    tile: bool | None = None  # MoVQ decode in tiles; None: only for large pictures
    best_of: int = 1  # make this many candidates per image and keep the one CLIP finds closest to the prompt
                      # (the prior's CLIP, or the scorer given to Kandinsky.use_scorer)
    prior_mode: str = "diffusion"  # diffusion | linear (a fitted map, linear_prior) | none (CLIP text as is)
    linear_prior: str | None = None  # a file made by `kandinsky prior fit`

    def check(self) -> None:
        for name in ("steps", "prior_steps", "num_images", "best_of"):
            if getattr(self, name) < 1:
                raise KandinskyError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("guidance", "prior_guidance"):
            if getattr(self, name) < 0:
                raise KandinskyError(f"{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.steps > 1000 or self.prior_steps > 1000:
            raise KandinskyError("steps cannot exceed the 1000 training timesteps")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise KandinskyError(f"seed must be between 0 and 2^63-1, got {self.seed}")
        if self.prior_mode not in ("diffusion", "linear", "none"):
            raise KandinskyError(f"unknown prior mode {self.prior_mode!r}: use diffusion, linear or none")
        if self.prior_mode == "linear" and not self.linear_prior:
            raise KandinskyError("--prior-mode linear needs --linear-prior FILE (make one with `kandinsky prior fit`)")
        if self.sampler not in (None, *SAMPLER_NAMES):
            raise KandinskyError(f"unknown sampler {self.sampler!r}: use {', '.join(SAMPLER_NAMES)}")


@dataclass
class Result:
    image: Image.Image
    seed: int
    settings: Settings  # with the seed actually used
    size: SizePlan
    timings: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # CLIP similarity to the prompt, when chosen among candidates (best_of)
    candidates: list[tuple[int, float]] | None = None  # (seed, score) of every candidate, the kept one included


class Kandinsky:
    def __init__(self, prior: PriorStage, decoder: DecoderStage, device: torch.device, dtype: torch.dtype):
        if prior.prior.config.embedding_dim != decoder.embed_dim:
            raise KandinskyError(
                f"the prior makes {prior.prior.config.embedding_dim}-d embeddings but the decoder takes "
                f"{decoder.embed_dim}-d ones: they are not from the same Kandinsky version"
            )
        self.prior, self.decoder, self.device, self.dtype = prior, decoder, device, dtype
        self.placement = decoder.placement
        self._linear_priors: dict = {}
        self.scorer = None  # what ranks best_of candidates: None is the prior's own CLIP

    def use_scorer(self, scorer) -> None:
        """Rank best_of candidates with ``scorer`` (a ``kcli.pipelines.scoring.Scorer``) instead of the prior's
        CLIP. Under offload it waits in CPU memory and visits the GPU only to score (load it on the CPU)."""
        self.scorer = scorer

    @property
    def scored_by(self) -> str:
        return f"open_clip {self.scorer.name}" if self.scorer is not None else "the prior's CLIP"

    def _score(self, image, prompt: str) -> float:
        if self.scorer is None:
            return self.prior.clip_score(image, prompt)
        if self.placement.mode == "none":
            return self.scorer(image, prompt)
        with self.placement._model.on(self.scorer.clip.model):  # the scorer's own attention reads weights
            return self.scorer(image, prompt)                   # directly, so it is never streamed

    @classmethod
    def load(cls, opts: LoadOptions, on_progress: Progress | None = None) -> Kandinsky:
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.dtype, device)
        placement = Placement(opts.offload, device)
        if opts.compile and opts.offload == "sequential":  # the streamer's hooks swap weights under the graph
            raise KandinskyError("--compile does not combine with sequential offload")
        report = on_progress or (lambda *a: None)
        report("load", 0, 2)
        prior = PriorStage.load(Path(opts.prior), dtype=dtype, placement=placement)
        report("load", 1, 2)
        decoder = DecoderStage.load(Path(opts.decoder), dtype=dtype, placement=placement)
        if opts.compile:
            decoder.unet = torch.compile(decoder.unet)
        report("load", 2, 2)
        return cls(prior, decoder, device, dtype)

    def plan(self, settings: Settings) -> SizePlan:
        return plan_size(settings.width, settings.height, self.decoder.pixel_step)

    # ---- modes: each yields one Result per image, as soon as it is done ----------------------------------

    def generate(self, settings: Settings, on_progress: Progress | None = None, *,
                 hint: Image.Image | None = None) -> Iterator[Result]:
        """Text to image. Off-grid sizes are generated one step larger and center-cropped back.

        ``hint`` (a depth picture, see pipelines/hint.py) is for a depth ControlNet decoder, which needs one."""
        size = self._checked(settings)
        hint_px = self._hint(hint, size)

        def make(s: Settings, g: torch.Generator, report: Progress):
            emb, neg = self.prior.embed(s.prompt, s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                                        generator=g, on_step=lambda i, n: report("prior", i, n),
                                        mode=s.prior_mode, linear=self._linear(s))
            latents = self.decoder.sample(emb, neg, s.prompt, width=size.gen_width, height=size.gen_height,
                                          steps=s.steps, guidance=s.guidance, generator=g, sampler=s.sampler,
                                          on_step=lambda i, n: report("decoder", i, n), hint=hint_px)
            return latents, lambda px: center_crop(px, size.width, size.height)

        yield from self._run(settings, size, make, on_progress)

    def image_to_image(self, init: Image.Image, settings: Settings, strength: float = 0.3,
                       on_progress: Progress | None = None, *, hint: Image.Image | None = None) -> Iterator[Result]:
        """Redraw ``init`` guided by the prompt; ``strength`` in (0, 1] is the share of the schedule re-run.

        ``hint`` as in ``generate``."""
        check_strength(strength)
        size = self._checked(settings)
        hint_px = self._hint(hint, size, stretch=True)  # like the picture: stretched to the grid and back
        pixels = to_pixels(resize(rgb(init), size.gen_width, size.gen_height))

        def make(s: Settings, g: torch.Generator, report: Progress):
            emb, neg = self.prior.embed(s.prompt, s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                                        generator=g, on_step=lambda i, n: report("prior", i, n),
                                        mode=s.prior_mode, linear=self._linear(s))
            latents = self.decoder.refine(pixels, emb, neg, s.prompt, strength=strength, steps=s.steps,
                                          guidance=s.guidance, generator=g, sampler=s.sampler,
                                          on_step=lambda i, n: report("decoder", i, n), hint=hint_px)
            return latents, lambda px: _resize_array(px, size.width, size.height)

        yield from self._run(settings, size, make, on_progress)

    def fuse(self, items: list, weights: list[float], settings: Settings,
             on_progress: Progress | None = None) -> Iterator[Result]:
        """Mix texts (str) and pictures (PIL images) with ``weights`` (used as given) and draw the mix."""
        if not items or len(items) != len(weights):
            raise KandinskyError(f"{len(weights)} weight(s) for {len(items)} item(s)")
        self.decoder.check_hint(False)
        size = self._checked(settings)
        pictures = [rgb(i) if not isinstance(i, str) else i for i in items]

        def make(s: Settings, g: torch.Generator, report: Progress):
            emb, neg = self.prior.mix(pictures, weights, s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                                      generator=g, on_step=lambda i, n: report("prior", i, n))
            # a 2.1 decoder also reads a text: for a mix, the empty one (as the reference's examples do)
            latents = self.decoder.sample(emb, neg, "", width=size.gen_width, height=size.gen_height,
                                          steps=s.steps, guidance=s.guidance, generator=g, sampler=s.sampler,
                                          on_step=lambda i, n: report("decoder", i, n))
            return latents, lambda px: center_crop(px, size.width, size.height)

        yield from self._run(settings, size, make, on_progress)

    def inpaint(self, image: Image.Image, repaint: np.ndarray, settings: Settings, paste_back: bool = True,
                on_progress: Progress | None = None) -> Iterator[Result]:
        """Repaint where ``repaint`` ((height, width) bool, at the settings' size) is True.

        With ``paste_back`` every pixel outside the repaint area is the original's, exactly.
        """
        size = self._checked(settings)
        if repaint.shape != (size.height, size.width):
            raise KandinskyError(f"the mask is {repaint.shape[1]}x{repaint.shape[0]}, the image {size.width}x{size.height}")
        original = resize(rgb(image), size.width, size.height)
        pixels = to_pixels(resize(original, size.gen_width, size.gen_height))
        gen_repaint = _resize_array(repaint.astype(np.uint8) * 255, size.gen_width, size.gen_height) >= 128
        feather = max(2.0, min(size.width, size.height) / 64)

        def finish(px: np.ndarray) -> np.ndarray:
            px = _resize_array(px, size.width, size.height)
            return paste_original(np.asarray(original), px, repaint, feather) if paste_back else px

        def make(s: Settings, g: torch.Generator, report: Progress):
            emb, neg = self.prior.embed(s.prompt, s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                                        generator=g, on_step=lambda i, n: report("prior", i, n),
                                        mode=s.prior_mode, linear=self._linear(s))
            latents = self.decoder.inpaint(pixels, gen_repaint, emb, neg, s.prompt, steps=s.steps,
                                           guidance=s.guidance, generator=g, sampler=s.sampler,
                                           on_step=lambda i, n: report("decoder", i, n))
            return latents, finish

        yield from self._run(settings, size, make, on_progress)

    # ---- shared -------------------------------------------------------------------------------------------

    def _linear(self, s: Settings):
        """The fitted linear prior a call names, read once and kept."""
        if s.prior_mode != "linear":
            return None
        if s.linear_prior not in self._linear_priors:
            from kcli.pipelines.linear_prior import LinearPrior

            self._linear_priors[s.linear_prior] = LinearPrior.load(Path(s.linear_prior))
        return self._linear_priors[s.linear_prior]

    def _hint(self, hint: Image.Image | None, size: SizePlan, stretch: bool = False):
        """The hint at the size generated, checked against the decoder before anything runs.

        Off the grid, text-to-image crops the center of a larger picture: the hint is resized to the size
        asked for and its edges extended over the margin, so it lines up with what is kept."""
        self.decoder.check_hint(hint is not None)
        if hint is None:
            return None
        if stretch or not size.cropped:
            return hint_pixels(hint, size.gen_width, size.gen_height)
        top, left = (size.gen_height - size.height) // 2, (size.gen_width - size.width) // 2
        pad = (left, size.gen_width - size.width - left, top, size.gen_height - size.height - top)
        return torch.nn.functional.pad(hint_pixels(hint, size.width, size.height), pad, mode="replicate")

    def _checked(self, settings: Settings) -> SizePlan:
        settings.check()
        return self.plan(settings)

    def _run(self, settings: Settings, size: SizePlan, make, on_progress: Progress | None) -> Iterator[Result]:
        """Per image i: seed S+i (with best_of N: candidates S+iN .. S+iN+N-1, the best kept)."""
        report = on_progress or (lambda *a: None)
        base = settings.seed if settings.seed is not None else secrets.randbits(32)
        n = settings.best_of
        for i in range(settings.num_images):
            if n == 1:
                yield self._image(replace(settings, seed=base + i, num_images=1), size, make, report)
                continue
            tries = [self._image(replace(settings, seed=base + i * n + j, num_images=1, best_of=1), size, make,
                                 report) for j in range(n)]
            scores = [self._score(r.image, settings.prompt) for r in tries]
            best = tries[max(range(n), key=scores.__getitem__)]
            best.score, best.candidates = max(scores), [(r.seed, sc) for r, sc in zip(tries, scores)]
            yield best

    def _image(self, s: Settings, size: SizePlan, make, report: Progress) -> Result:
        """One image: a fresh CPU generator from its seed, ``make`` (prior + decoder), decode, ``finish``."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            latents, finish = make(s, cpu_generator(s.seed), report)
            t1 = time.perf_counter()
            report("decode", 0, 1)
            pixels = finish(self.decoder.decode(latents, tile=s.tile)[0])
            report("decode", 1, 1)
        timings = {"sample": t1 - t0, "decode": time.perf_counter() - t1}
        del latents
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the next image (or the next program) the memory back
        return Result(Image.fromarray(pixels), s.seed, s, size, timings)


def check_strength(strength: float) -> None:
    if not 0 < strength <= 1:
        raise KandinskyError(f"strength must be in (0, 1] (the share of the schedule re-run), got {strength}")


def _resize_array(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(resize(Image.fromarray(pixels), width, height))
