"""The Kandinsky 2.2 depth ControlNet: a hint picture through the Python API against diffusers'
KandinskyV22Controlnet(Img2Img)Pipeline after the prior, one CPU generator through both."""

import dataclasses

import numpy as np
import oracle
import pytest
import torch
from PIL import Image

from kcli.errors import KandinskyError
from kcli.pipelines import Fuse, ImageToImage, Kandinsky, TextToImage
from kcli.pipelines.hint import hint_pixels

PROMPT = "a corgi gliding on the wave"


@pytest.fixture(scope="module")
def depth(prior22, controlnet22):
    return Kandinsky.open(prior=str(prior22), decoder=str(controlnet22), device="cpu")


def depth_map(width: int, height: int, seed: int = 0) -> Image.Image:
    """A grey 'depth' picture: a ramp (near at the bottom) with some noise on it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, height)[:, None] * np.ones((1, width))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 30, (height, width)), 0, 255).astype(np.uint8))


def as_diffusers_hint(picture: Image.Image) -> torch.Tensor:
    """As diffusers' docs build it: grey levels / 255, repeated over 3 channels, (1, 3, H, W)."""
    grey = torch.from_numpy(np.array(picture)).float() / 255.0
    return grey[None].repeat(3, 1, 1)[None]


def reference(prior_pipe, controlnet22, s: TextToImage, hint: torch.Tensor, init=None, strength=0.3) -> np.ndarray:
    import diffusers
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    kind = "KandinskyV22ControlnetImg2ImgPipeline" if init is not None else "KandinskyV22ControlnetPipeline"
    pipe = getattr(diffusers, kind)(unet=UNet2DConditionModel.from_pretrained(controlnet22 / "unet"),
                                    scheduler=DDPMScheduler.from_pretrained(controlnet22 / "scheduler"),
                                    movq=VQModel.from_pretrained(controlnet22 / "movq"))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator("cpu").manual_seed(s.seed)
    emb, neg = prior_pipe(s.prompt, negative_prompt=s.negative, num_inference_steps=s.prior_steps, generator=g,
                          guidance_scale=s.prior_guidance, output_type="pt", return_dict=False)
    args = {"image_embeds": emb, "negative_image_embeds": neg, "hint": hint, "width": s.width, "height": s.height,
            "num_inference_steps": s.steps, "guidance_scale": s.guidance, "generator": g, "output_type": "np"}
    if init is not None:
        # diffusers >= 0.34 passes (width, height) where preprocess takes (height, width) (reference notes, §5.3):
        # undo the swap, or a non-square picture comes out transposed
        preprocess = pipe.image_processor.preprocess
        pipe.image_processor.preprocess = lambda image, h, w: preprocess(image, height=w, width=h)
        args.update(image=init, strength=strength)
    return oracle.as_uint8(pipe(**args).images)[0]


CASES = [
    TextToImage(PROMPT, seed=0, width=64, height=64, steps=4, prior_steps=3),
    TextToImage(PROMPT, negative="blurry", seed=1, width=128, height=64, steps=3, prior_steps=2, guidance=5.0),
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"seed{s.seed}-{s.width}x{s.height}")
def test_text_to_image_with_a_hint_equals_diffusers(depth, reference22, controlnet22, settings):
    hint = depth_map(settings.width, settings.height, settings.seed)
    (result,) = depth.run(dataclasses.replace(settings, hint=hint))
    assert result.image.size == (settings.width, settings.height)
    want = reference(reference22.prior_pipe, controlnet22, settings, as_diffusers_hint(hint))
    oracle.assert_images_match(np.asarray(result.image), want)


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"seed{s.seed}-{s.width}x{s.height}")
def test_image_to_image_with_a_hint_equals_diffusers(depth, reference22, controlnet22, pictures, settings):
    init = Image.open(pictures["picture" if settings.width == 128 else "square"]).convert("RGB")
    hint = depth_map(settings.width, settings.height, settings.seed + 7)
    sampling = {f.name: getattr(settings, f.name) for f in dataclasses.fields(TextToImage)}
    s = ImageToImage(**{**sampling, "steps": 6, "init": init, "strength": 0.5, "hint": hint})
    (result,) = depth.run(s)
    assert result.image.size == (s.width, s.height)
    want = reference(reference22.prior_pipe, controlnet22, s, as_diffusers_hint(hint), init=init, strength=0.5)
    oracle.assert_images_match(np.asarray(result.image), want)


def test_the_hint_changes_the_picture(depth):
    s = TextToImage(PROMPT, seed=3, width=64, height=64, steps=2, prior_steps=2)
    (a,) = depth.run(dataclasses.replace(s, hint=depth_map(64, 64, 0)))
    (b,) = depth.run(dataclasses.replace(s, hint=Image.fromarray(255 - np.asarray(depth_map(64, 64, 0)))))
    assert np.abs(np.asarray(a.image).astype(int) - np.asarray(b.image)).mean() > 2


def test_off_grid_hint_lines_up_with_the_center_crop(depth, monkeypatch):
    """100x64 is made at 128x64 and center-cropped: the hint is resized to 100x64, its edges extended."""
    seen, sample = {}, depth.decoder.sample

    def spy(*args, **kwargs):
        seen["hint"] = kwargs["hint"]
        return sample(*args, **kwargs)

    monkeypatch.setattr(depth.decoder, "sample", spy)
    hint = depth_map(100, 64, 5)
    (r,) = depth.run(TextToImage(PROMPT, seed=0, width=100, height=64, steps=1, prior_steps=2, hint=hint))
    assert r.image.size == (100, 64)
    got = seen["hint"]
    assert got.shape == (1, 3, 64, 128)
    assert torch.equal(got[..., 14:114], hint_pixels(hint, 100, 64))
    assert torch.equal(got[..., :14], got[..., 14:15].expand(-1, -1, -1, 14))


def test_hint_pictures_grey_rgb_16_bit_and_resized():
    grey = depth_map(64, 32)
    x = hint_pixels(grey, 64, 32)
    assert x.shape == (1, 3, 32, 64) and torch.equal(x, as_diffusers_hint(grey))
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey])
    y = hint_pixels(rgb, 64, 32)
    assert torch.equal(y[0, 0], x[0, 0]) and not torch.equal(y[0, 1], x[0, 1])
    wide = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 16-bit, white 65535
    assert wide.mode.startswith("I") and torch.allclose(hint_pixels(wide, 64, 32), x, atol=1e-6)
    z = hint_pixels(grey, 128, 64)
    assert z.shape == (1, 3, 64, 128) and 0 <= z.min() and z.max() <= 1


def test_a_controlnet_decoder_needs_a_hint_and_others_take_none(depth, prior22, decoder22):
    s = TextToImage(PROMPT, seed=0, width=64, height=64, steps=1, prior_steps=2)
    with pytest.raises(KandinskyError, match="needs a hint picture"):
        list(depth.run(s))
    with pytest.raises(KandinskyError, match="needs a hint picture"):
        list(depth.run(Fuse(items=("a cat",), weights=(1.0,), seed=0, width=64, height=64, steps=1, prior_steps=2)))
    plain = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")
    with pytest.raises(KandinskyError, match="a hint needs a depth ControlNet decoder"):
        list(plain.run(dataclasses.replace(s, hint=depth_map(64, 64))))


def test_open_checks_the_decoder_against_the_hints_before_loading(prior22, decoder22, controlnet22, monkeypatch):
    """``hinted=``: a hint needs a ControlNet decoder and a ControlNet decoder a hint, said before any weights load."""
    from kcli.pipelines import kandinsky

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded weights before checking")

    monkeypatch.setattr(kandinsky.PriorStage, "load", no_loading)
    with pytest.raises(KandinskyError, match="a hint needs a depth ControlNet decoder"):
        Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu", hinted=True)
    with pytest.raises(KandinskyError, match="it needs a hint picture"):
        Kandinsky.open(prior=str(prior22), decoder=str(controlnet22), device="cpu", hinted=False)
