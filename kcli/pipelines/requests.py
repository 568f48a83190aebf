"""What to make: one small frozen dataclass per mode, handed to ``Kandinsky.run``.

    k.run(TextToImage("a corgi gliding on the wave", seed=7, num_images=2))
    k.run(Inpaint("a straw hat", image="photo.jpg", mask="mask.png"))

Each extends ``Sampling`` (seed, size, steps, guidance ...), so a request carries everything one call needs,
and declares its own inputs as settings (see ``kcli.pipelines.settings``): the command line offers them as
flags, images record them. Pictures are paths or PIL images. ``check`` finds every mistake that needs no
model. No torch here.
"""

import dataclasses
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from kcli.errors import KandinskyError
from kcli.pipelines.files import check_unchanged
from kcli.pipelines.settings import INPUT, RECORDED_ONLY, Sampling, check_ranges, setting

DEFAULT_SIZE = 512  # the reference's width and height
PRIOR_MODES = ("diffusion", "linear", "none")
# kcli.samplers.SAMPLER_NAMES, torch-free
SAMPLERS = ("default", "ddpm", "ddim", "dpm++2m", "dpm++2m-karras", "euler", "euler_a")


@dataclass(frozen=True, kw_only=True)
class Request(Sampling):
    mode: ClassVar[str]
    sized_by_input: ClassVar[bool] = False  # the output takes the input picture's size unless -W/-H say
    inpainting: ClassVar[bool] = False  # needs the inpainting decoder

    def check(self) -> None:
        check_ranges(self)
        if self.seed is not None and self.seed + self.num_images * self.best_of - 1 >= 2**63:
            raise KandinskyError(f"seed {self.seed} leaves no room for {self.num_images * self.best_of} images: the "
                                 "seeds S, S+1 ... must stay below 2^63")
        if self.prior_mode not in PRIOR_MODES:
            raise KandinskyError(f"unknown prior mode {self.prior_mode!r}: use diffusion, linear or none")
        if self.prior_mode == "linear" and not self.linear_prior:
            raise KandinskyError("--prior-mode linear needs --linear-prior FILE (make one with `kandinsky prior fit`)")
        if self.sampler not in (None, *SAMPLERS):
            raise KandinskyError(f"unknown sampler {self.sampler!r}: use {', '.join(SAMPLERS)}")

    def seeded(self, seed: int | None = None) -> "Request":
        """This request with a concrete seed: ``seed``, its own, or a random one."""
        chosen = seed if seed is not None else self.seed if self.seed is not None else secrets.randbits(32)
        return dataclasses.replace(self, seed=chosen)

    def image_seeds(self) -> list[int]:
        """The seed of each image (with best_of N, its first candidate's: S, S+N, S+2N ...)."""
        return [self.seed + i * self.best_of for i in range(self.num_images)]

    @property
    def label(self) -> str:
        """What the request is about, for file names and records (its prompt, for most)."""
        return getattr(self, "prompt", "") or ""

    @property
    def hinted(self) -> bool:
        """Whether it gives a hint picture: it then needs a depth ControlNet decoder, which needs one."""
        return False


@dataclass(frozen=True)
class Prompted(Request):
    prompt: str = setting("", "What to draw (or use --prompts-file).", argument=True, file=False, job=True,
                          recorded=True)


@dataclass(frozen=True)
class Drawn(Prompted):
    """Text to image and image to image, where a depth ControlNet decoder (model 2.2-depth) keeps the layout of
    a hint picture: a file or PIL picture (``hint``), or one estimated from a photo (``depth_from``). Images
    record the files by path and sha256; the pipeline fills in the hashes and the depth model used."""

    hint: Path | None = setting(None, "A depth picture (grey or RGB, near = white) whose layout the image keeps; "
                                "uses the depth ControlNet (model 2.2-depth).", panel=INPUT, file=False, job=True,
                                recorded=True)
    depth_from: Path | None = setting(None, "Estimate the --hint from this photo with a depth model "
                                      "(--depth-model).", panel=INPUT, file=False, recorded=True)
    depth_model: str | None = setting(None, "The transformers depth model (DPT, Depth-Anything) of --depth-from: a "
                                      "hub id or a folder (default: the model's, Intel/dpt-large).", panel=INPUT,
                                      file=False, recorded=True)
    save_hint: bool = setting(False, "With --depth-from: also write the depth picture beside the output.",
                              panel=INPUT, file=False)
    hint_sha256: str | None = setting(None, "The sha256 of the hint file (--from refuses a hint that changed).",
                                      file=False, recorded=True, commands=RECORDED_ONLY)
    depth_from_sha256: str | None = setting(None, "The sha256 of the --depth-from photo (as hint_sha256).",
                                            file=False, recorded=True, commands=RECORDED_ONLY)
    hint_file: Path | None = None  # where save_hint writes (default: PHOTO-depth.png in this folder)

    @property
    def hinted(self) -> bool:
        return self.hint is not None or self.depth_from is not None

    def check(self) -> None:
        super().check()
        if self.hint is not None and self.depth_from is not None:
            raise KandinskyError("give --hint or --depth-from, not both")
        if (self.save_hint or self.depth_model) and self.depth_from is None:
            raise KandinskyError(f"{'--save-hint' if self.save_hint else '--depth-model'} goes with --depth-from PHOTO")
        for value, recorded, what in ((self.hint, self.hint_sha256, "hint"),
                                      (self.depth_from, self.depth_from_sha256, "--depth-from photo")):
            if value is not None:
                _picture(value, what, header_only=True)
                if isinstance(value, (str, Path)):
                    check_unchanged(value, recorded, what)


@dataclass(frozen=True)
class TextToImage(Drawn):
    mode: ClassVar[str] = "generate"


@dataclass(frozen=True)
class ImageToImage(Drawn):
    mode: ClassVar[str] = "image-to-image"
    sized_by_input: ClassVar[bool] = True
    init: Path | None = setting(None, "Start from this picture (image to image).", panel=INPUT, file=False,
                                recorded=True)
    strength: float = setting(0.3, "With --init: how much to change, in (0, 1]: the share of the schedule that "
                              "is re-noised.", panel=INPUT, recorded=True)

    def check(self) -> None:
        super().check()
        if self.init is None:
            raise KandinskyError("image to image needs a picture to start from (--init)")
        check_strength(self.strength)
        _picture(self.init, "--init image")


@dataclass(frozen=True)
class Fuse(Request):
    """A weighted mix of texts (str) and pictures (paths or PIL images); weights are normalised to sum 1."""

    mode: ClassVar[str] = "fuse"
    items: tuple = setting((), "Texts and image files to mix (prefix text: or image: to force).", argument=True,
                           file=False, recorded=True)
    weights: tuple[float, ...] | None = setting(None, "Comma-separated weights, one per item; normalised to "
                                                "sum 1. Default: equal.", panel=INPUT, min=0, max=1e6, file=False)
    title: str = ""  # what the mix is called in file names and records

    def check(self) -> None:
        super().check()
        if not self.items:
            raise KandinskyError("nothing to fuse: give texts and pictures")
        normalise(self.weights, len(self.items))
        for item in self.items:
            if not isinstance(item, str):
                _picture(item, "image")

    @property
    def label(self) -> str:
        return self.title or "fuse"


@dataclass(frozen=True)
class Vary(Request):
    """Variations of a picture, optionally nudged towards a text."""

    mode: ClassVar[str] = "vary"
    image: Path | None = setting(None, "The picture to make variations of.", argument=True, file=False,
                                 recorded=True)
    prompt: str | None = setting(None, "Nudge the variations towards a text.", panel=INPUT, file=False,
                                 recorded=True)
    prompt_weight: float = setting(0.25, "With --prompt: the text's share, in [0, 1].", panel=INPUT,
                                   recorded=True)

    def check(self) -> None:
        super().check()
        if self.image is None:
            raise KandinskyError("vary needs a picture")
        _picture(self.image, "image")
        if self.prompt and not 0 <= self.prompt_weight <= 1:
            raise KandinskyError(f"--prompt-weight must be in [0, 1], got {self.prompt_weight}")

    def as_fuse(self) -> Fuse:
        items, weights = (self.image,), (1.0,)
        if self.prompt:
            items, weights = (self.image, self.prompt), (1.0 - self.prompt_weight, self.prompt_weight)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(Sampling)}
        return Fuse(items=items, weights=weights, title=self.label, **fields)

    @property
    def label(self) -> str:
        stem = Path(self.image).stem if isinstance(self.image, (str, Path)) else "picture"
        return f"{stem}-variation"


@dataclass(frozen=True)
class OnPicture(Prompted):
    """Repaint part of a picture: the inpainting decoder; the output has the picture's size."""

    sized_by_input: ClassVar[bool] = True
    inpainting: ClassVar[bool] = True
    image: Path | None = setting(None, "The picture to change.", panel=INPUT, file=False, recorded=True)
    paste_back: bool = setting(True, "Paste the original's pixels back outside the repainted area.",
                               flag="--paste-back/--no-paste-back", panel=INPUT, recorded=True)


@dataclass(frozen=True)
class Inpaint(OnPicture):
    mode: ClassVar[str] = "inpaint"
    mask: Path | None = setting(None, "White = repaint, black = keep (or transparent = repaint in a mask with "
                                "alpha). Resized to the image.", panel=INPUT, file=False, recorded=True)
    invert_mask: bool = setting(False, "Repaint the black part instead.", panel=INPUT, file=False, recorded=True)

    def check(self) -> None:
        super().check()
        if self.image is None or self.mask is None:
            raise KandinskyError("inpaint needs --image and --mask")
        self.repaint(_picture(self.image, "image"))

    def repaint(self, image):
        """(height, width) bool at the output's size, True = repaint; refuses a mask with nothing, or all, to do."""
        from kcli.pipelines.masks import repaint_mask

        width, height = self.width or image.width, self.height or image.height
        if not isinstance(self.mask, (str, Path)) and not hasattr(self.mask, "convert"):
            return self.mask  # already a (height, width) bool array
        return repaint_mask(_picture(self.mask, "mask"), width, height, invert=self.invert_mask)


@dataclass(frozen=True)
class Outpaint(OnPicture):
    mode: ClassVar[str] = "outpaint"
    expand: str | None = setting(None, "How far to grow each side: top=128,left=64, all=96, or percentages "
                                 "(right=50%).", panel=INPUT, file=False, recorded=True)

    def check(self) -> None:
        super().check()
        if self.image is None or self.expand is None:
            raise KandinskyError("outpaint needs --image and --expand")
        if self.width or self.height:
            raise KandinskyError("outpaint takes its size from --expand, not --width/--height")
        from kcli.pipelines.canvas import parse_expand

        parse_expand(self.expand, *_picture(self.image, "image").size)


REQUESTS = (TextToImage, ImageToImage, Fuse, Vary, Inpaint, Outpaint)


def _picture(value, what: str, header_only: bool = False):
    """A request's picture: a PIL image as is, a path read from disk (errors name the file)."""
    if hasattr(value, "convert"):
        return value
    from kcli.pipelines.files import load_image

    return load_image(Path(value), what, header_only=header_only)


def check_strength(strength: float) -> None:
    if not 0 < strength <= 1:
        raise KandinskyError(f"strength must be in (0, 1] (the share of the schedule re-run), got {strength}")


def normalise(weights, count: int) -> list[float]:
    """Weights scaled to sum 1 (equal when not given)."""
    if weights is None:
        return [1.0 / count] * count
    weights = list(weights)
    if len(weights) != count:
        raise KandinskyError(f"--weights has {len(weights)} value(s) for {count} item(s)")
    if any(w < 0 for w in weights):
        raise KandinskyError(f"--weights must not be negative: {','.join(f'{w:g}' for w in weights)}")
    if not all(math.isfinite(w) for w in weights):
        raise KandinskyError(f"--weights must be finite numbers: {','.join(f'{w:g}' for w in weights)}")
    total = sum(weights)
    if total <= 0:
        raise KandinskyError("--weights add up to 0: give at least one item a positive weight")
    return [w / total for w in weights]
