"""The creative modes through the command line, against diffusers' pipelines on the same files."""

import numpy as np
import oracle
import pytest
import torch
from PIL import Image
from test_cli import PROMPT, run

STEPS = ["--steps", 4, "--prior-steps", 2, "--device", "cpu"]


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("seed,strength", [(3, 0.5), (4, 0.3)])
def test_image_to_image_equals_diffusers(prior22, decoder22, pictures, tmp_path, seed, strength):
    proc = run("generate", PROMPT, "--init", pictures["square"], "--strength", strength, "--seed", seed,
               "--prior", prior22, "--decoder", decoder22, *STEPS, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    ref = oracle.combined_22(prior22, decoder22, kind="KandinskyV22Img2ImgCombinedPipeline")
    want = ref(PROMPT, image=Image.open(pictures["square"]), strength=strength, width=64, height=64,
               num_inference_steps=4, prior_num_inference_steps=2, generator=gen(seed), output_type="np").images
    oracle.assert_images_match(png(tmp_path / "out.png"), oracle.as_uint8(want)[0])


def _interpolate_then_decode(reference22, items, weights, seed, width, height):
    """The reference for fuse/vary: the prior's interpolate, then the decoder, one generator through both."""
    from diffusers import KandinskyV22Pipeline

    decoder = KandinskyV22Pipeline(unet=reference22.unet, scheduler=reference22.scheduler, movq=reference22.movq)
    decoder.set_progress_bar_config(disable=True)
    g = gen(seed)
    mix = reference22.prior_pipe.interpolate(items, weights, num_inference_steps=2, generator=g)
    out = decoder(image_embeds=mix.image_embeds, negative_image_embeds=mix.negative_image_embeds, width=width,
                  height=height, num_inference_steps=4, generator=g, output_type="np").images
    return oracle.as_uint8(out)[0]


def test_fuse_of_a_text_and_an_image_equals_diffusers(prior22, decoder22, reference22, pictures, tmp_path):
    proc = run("fuse", "a red cat", pictures["picture"], "--weights", "1,3", "--seed", 5, "-W", 128, "-H", 64,
               "--prior", prior22, "--decoder", decoder22, *STEPS, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    assert "0.250" in proc.stderr and "0.750" in proc.stderr  # normalised weights are printed
    want = _interpolate_then_decode(reference22, ["a red cat", Image.open(pictures["picture"])], [0.25, 0.75],
                                    5, 128, 64)
    oracle.assert_images_match(png(tmp_path / "out.png"), want)


def test_vary_equals_diffusers(prior22, decoder22, reference22, pictures, tmp_path):
    proc = run("vary", pictures["square"], "--seed", 6, "--prior", prior22, "--decoder", decoder22, *STEPS,
               "-W", 64, "-H", 64, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    want = _interpolate_then_decode(reference22, [Image.open(pictures["square"])], [1.0], 6, 64, 64)
    oracle.assert_images_match(png(tmp_path / "out.png"), want)


def test_inpaint_equals_diffusers_and_keeps_the_unmasked_pixels(prior22, inpaint22, pictures, tmp_path):
    common = ("inpaint", "a hat", "--image", pictures["picture"], "--mask", pictures["mask"], "--seed", 7,
              "--prior", prior22, "--decoder", inpaint22, *STEPS)
    proc = run(*common, "--no-paste-back", "-o", tmp_path / "raw.png")
    assert proc.returncode == 0, proc.stderr
    ref = oracle.combined_22(prior22, inpaint22, kind="KandinskyV22InpaintCombinedPipeline")
    want = ref("a hat", image=Image.open(pictures["picture"]), mask_image=Image.open(pictures["mask"]), width=128,
               height=64, num_inference_steps=4, prior_num_inference_steps=2, generator=gen(7), output_type="np")
    oracle.assert_images_match(png(tmp_path / "raw.png"), oracle.as_uint8(want.images)[0])

    proc = run(*common, "-o", tmp_path / "pasted.png")
    assert proc.returncode == 0, proc.stderr
    keep = np.asarray(Image.open(pictures["mask"])) < 128
    pasted, original = png(tmp_path / "pasted.png"), png(pictures["picture"])
    assert np.array_equal(pasted[keep], original[keep])
    assert not np.array_equal(pasted[~keep], original[~keep])


def test_outpaint_grows_the_canvas_and_keeps_the_original(prior22, inpaint22, pictures, tmp_path):
    proc = run("outpaint", "sky", "--image", pictures["picture"], "--expand", "top=30,left=10%", "--seed", 8,
               "--prior", prior22, "--decoder", inpaint22, *STEPS, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    # top 30 -> 94 rows, rounded up to 128: the 34 extra rows go to the top; left 13 px -> 141 -> 192
    assert "canvas 192x128 (128x64 grown by top 64, left 64)" in proc.stderr
    out = png(tmp_path / "out.png")
    assert out.shape == (128, 192, 3)
    assert np.array_equal(out[64:, 64:], png(pictures["picture"]))
