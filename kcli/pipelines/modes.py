"""Each request as a recipe: the size it makes, how one image's latents are drawn (prior, then decoder, from
one generator; a depth ControlNet decoder also follows the hint picture, see ``hint``), and how its pixels are
finished (cropped, resized, pasted back).

``Kandinsky.run`` draws every image the same way (seeds, best-of, decode, timings); only these differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kcli.pipelines import canvas, hint
from kcli.pipelines.masks import paste_original
from kcli.pipelines.pixels import resize, resize_array, rgb, to_pixels
from kcli.pipelines.requests import (
    DEFAULT_SIZE,
    Fuse,
    ImageToImage,
    Inpaint,
    Outpaint,
    Request,
    TextToImage,
    Vary,
    _picture,
    normalise,
)
from kcli.pipelines.sizes import Size, center_crop, grid_size

# (requests, generator, report) -> latents: one row per request, all of one recipe, differing only in prompt
# and seed; the generator is the image's own, or a PerImage holding each image's (kcli.samplers.noise)
Make = Callable[[list[Request], object, Callable], torch.Tensor]


@dataclass
class Recipe:
    request: Request  # with its final width and height
    size: Size
    make: Make
    finish: Callable[[np.ndarray], np.ndarray]
    batchable: bool = True  # several images per UNet call (a mix of fuse/vary makes one at a time)


picture = _picture  # a PIL image as is, a path read from disk


def recipe(k, request: Request, events) -> Recipe:
    """The recipe for ``request`` on the loaded pipeline ``k``."""
    if isinstance(request, Vary):
        return _fuse(k, request.as_fuse(), events, request)
    if isinstance(request, Fuse):
        return _fuse(k, request, events, request)
    if isinstance(request, Outpaint):
        return _outpaint(k, request, events)
    if isinstance(request, Inpaint):
        return _inpaint(k, request)
    if isinstance(request, ImageToImage):
        return _image_to_image(k, request, events)
    if isinstance(request, TextToImage):
        return _text_to_image(k, request, events)
    raise TypeError(f"not a request: {type(request).__name__}")


def _sized(request: Request, source: tuple[int, int] | None = None) -> Request:
    """Width and height made concrete: as asked, else the input picture's (for modes sized by it), else 512."""
    from dataclasses import replace

    width, height = source if source and request.sized_by_input else (DEFAULT_SIZE, DEFAULT_SIZE)
    return replace(request, width=request.width or width, height=request.height or height)


def _embed(k, ss: list[Request], g, report):
    s = ss[0]
    return k.prior.embed([r.prompt for r in ss], s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                         generator=g, on_step=lambda i, n: report("prior", i, n), mode=s.prior_mode,
                         linear=k.linear_prior(s))


def _prompts(ss: list[Request]) -> list[str]:
    return [s.prompt for s in ss]


def _text_to_image(k, request: TextToImage, events) -> Recipe:
    request = _sized(request)
    size = grid_size(request.width, request.height, k.decoder.pixel_step)
    request, depth = hint.prepare(k, request, events)
    hint_px = hint.fitted(depth, size)

    def make(ss, g, report):
        s, (emb, neg) = ss[0], _embed(k, ss, g, report)
        return k.decoder.sample(emb, neg, _prompts(ss), width=size.gen_width, height=size.gen_height, steps=s.steps,
                                guidance=s.guidance, generator=g, sampler=s.sampler,
                                on_step=lambda i, n: report("decoder", i, n), hint=hint_px)

    return Recipe(request, size, make, lambda px: center_crop(px, size.width, size.height))


def _image_to_image(k, request: ImageToImage, events) -> Recipe:
    init = picture(request.init, "--init image")
    request = _sized(request, init.size)
    size = grid_size(request.width, request.height, k.decoder.pixel_step)
    pixels = to_pixels(resize(rgb(init), size.gen_width, size.gen_height))
    request, depth = hint.prepare(k, request, events)
    hint_px = hint.fitted(depth, size, stretch=True)  # like the picture: stretched to the grid and back

    def make(ss, g, report):
        s, (emb, neg) = ss[0], _embed(k, ss, g, report)
        return k.decoder.refine(pixels, emb, neg, _prompts(ss), strength=s.strength, steps=s.steps,
                                guidance=s.guidance,
                                generator=g, sampler=s.sampler, on_step=lambda i, n: report("decoder", i, n),
                                hint=hint_px)

    return Recipe(request, size, make, lambda px: resize_array(px, size.width, size.height))


def _fuse(k, request: Fuse, events, shown: Request) -> Recipe:
    k.decoder.check_hint(False)  # a depth ControlNet decoder has no hint to follow here
    weights = normalise(request.weights, len(request.items))
    items = [item if isinstance(item, str) else rgb(picture(item, "image")) for item in request.items]
    events.note("weights: " + ", ".join(
        f"{'text' if isinstance(i, str) else 'image'} {str(i) if isinstance(i, (str, Path)) else 'picture'!r} {w:.3f}"
        for i, w in zip(request.items, weights)))
    shown = _sized(shown)
    size = grid_size(shown.width, shown.height, k.decoder.pixel_step)

    def make(ss, g, report):
        s = ss[0]  # one at a time (batchable=False)
        emb, neg = k.prior.mix(items, weights, s.negative, steps=s.prior_steps, guidance=s.prior_guidance,
                               generator=g, on_step=lambda i, n: report("prior", i, n))
        # a 2.1 decoder also reads a text: for a mix, the empty one (as the reference's examples do)
        return k.decoder.sample(emb, neg, "", width=size.gen_width, height=size.gen_height, steps=s.steps,
                                guidance=s.guidance, generator=g, sampler=s.sampler,
                                on_step=lambda i, n: report("decoder", i, n))

    return Recipe(shown, size, make, lambda px: center_crop(px, size.width, size.height), batchable=False)


def _inpaint(k, request: Inpaint) -> Recipe:
    image = picture(request.image, "image")
    request = _sized(request, image.size)
    return _repaint(k, request, image, request.repaint(image))


def _outpaint(k, request: Outpaint, events) -> Recipe:
    from dataclasses import replace

    image = picture(request.image, "image")
    grow = canvas.parse_expand(request.expand, *image.size)
    board = canvas.fit_canvas(*image.size, grow, k.decoder.pixel_step)
    events.note(board.describe())
    filled, repaint = canvas.build(image, board)
    return _repaint(k, replace(request, width=board.width, height=board.height), filled, repaint)


def _repaint(k, request, image: Image.Image, repaint: np.ndarray) -> Recipe:
    """Repaint where ``repaint`` ((height, width) bool, at the request's size) is True; with ``paste_back``
    every pixel outside it is the original's, exactly."""
    from kcli.errors import KandinskyError

    size = grid_size(request.width, request.height, k.decoder.pixel_step)
    if repaint.shape != (size.height, size.width):
        raise KandinskyError(f"the mask is {repaint.shape[1]}x{repaint.shape[0]}, the image {size.width}x{size.height}")
    original = resize(rgb(image), size.width, size.height)
    pixels = to_pixels(resize(original, size.gen_width, size.gen_height))
    gen_repaint = resize_array(repaint.astype(np.uint8) * 255, size.gen_width, size.gen_height) >= 128
    feather = max(2.0, min(size.width, size.height) / 64)

    def finish(px: np.ndarray) -> np.ndarray:
        px = resize_array(px, size.width, size.height)
        return paste_original(np.asarray(original), px, repaint, feather) if request.paste_back else px

    def make(ss, g, report):
        s, (emb, neg) = ss[0], _embed(k, ss, g, report)
        return k.decoder.inpaint(pixels, gen_repaint, emb, neg, _prompts(ss), steps=s.steps, guidance=s.guidance,
                                 generator=g, sampler=s.sampler, on_step=lambda i, n: report("decoder", i, n))

    return Recipe(request, size, make, finish)
