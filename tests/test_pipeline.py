"""The Python API end to end against diffusers' KandinskyV22CombinedPipeline, and the CLIP encoders."""

import numpy as np
import oracle
import pytest
import torch

from kcli.errors import KandinskyError
from kcli.models.clip import CLIPImage, CLIPText
from kcli.pipelines import Kandinsky, TextToImage

PROMPT = "a corgi gliding on the wave"


@pytest.fixture(scope="module")
def kandinsky(prior22, decoder22):
    return Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")


def reference(pipe, s: TextToImage) -> np.ndarray:
    out = pipe(s.prompt, negative_prompt=s.negative, width=s.width, height=s.height, num_inference_steps=s.steps,
               prior_num_inference_steps=s.prior_steps, guidance_scale=s.guidance,
               prior_guidance_scale=s.prior_guidance, generator=torch.Generator("cpu").manual_seed(s.seed),
               output_type="np")
    return oracle.as_uint8(out.images)[0]


CASES = [
    TextToImage(PROMPT, seed=0, width=64, height=64, steps=4, prior_steps=3),
    TextToImage(PROMPT, negative="low quality, blurry", seed=1, width=128, height=64, steps=4, prior_steps=3),
    TextToImage(PROMPT, seed=2, width=64, height=128, steps=3, prior_steps=2, guidance=1.0, prior_guidance=1.0),
    TextToImage(PROMPT, negative="rain", seed=3, width=64, height=64, steps=3, prior_steps=2, guidance=1.0),
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"seed{s.seed}-{s.width}x{s.height}-neg{s.negative is not None}-g{s.guidance}")
def test_image_equals_diffusers(kandinsky, reference22, settings):
    (result,) = kandinsky.run(settings)
    assert result.image.size == (settings.width, settings.height)
    oracle.assert_images_match(np.asarray(result.image), reference(reference22, settings))


def test_image_i_of_a_batch_equals_a_single_run_with_seed_plus_i(kandinsky):
    s = TextToImage(PROMPT, seed=10, width=64, height=64, steps=2, prior_steps=2, num_images=3)
    batch = list(kandinsky.run(s))
    assert [r.seed for r in batch] == [10, 11, 12]
    (single,) = kandinsky.run(TextToImage(PROMPT, seed=12, width=64, height=64, steps=2, prior_steps=2))
    assert np.array_equal(np.asarray(batch[2].image), np.asarray(single.image))
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))


def test_random_seed_is_drawn_and_reported(kandinsky):
    (r,) = kandinsky.run(TextToImage(PROMPT, width=64, height=64, steps=1, prior_steps=2))
    assert isinstance(r.seed, int) and r.request.seed == r.seed


def test_off_grid_size_is_generated_larger_and_center_cropped(kandinsky):
    s = TextToImage(PROMPT, seed=4, width=100, height=64, steps=2, prior_steps=2)
    notes = []

    class Listener:
        note = notes.append

    (r,) = kandinsky.run(s, events=Listener())
    assert "100x64 is not a multiple of 64 px: generating 128x64 and center-cropping to 100x64" in notes
    (full,) = kandinsky.run(TextToImage(PROMPT, seed=4, width=128, height=64, steps=2, prior_steps=2))
    assert r.image.size == (100, 64)
    assert np.array_equal(np.asarray(r.image), np.asarray(full.image)[:, 14:114])


@pytest.mark.parametrize("bad,match", [
    (dict(width=32), "below this model's minimum of 64"),
    (dict(steps=0), "steps must be at least 1"),
    (dict(guidance=-1.0), "guidance must not be negative"),
])
def test_bad_settings_are_user_errors(kandinsky, bad, match):
    with pytest.raises(KandinskyError, match=match):
        list(kandinsky.run(TextToImage(PROMPT, seed=0, **{"width": 64, "height": 64, **bad})))


def test_text_encoder_equals_reference_prompt_encoding(prior22, reference22):
    text = CLIPText.load(prior22)
    embeds, hidden, mask = text(["a red cat", ""])
    ref_embeds, ref_hidden, ref_mask = reference22.prior_pipe._encode_prompt(
        ["a red cat", ""], "cpu", 1, False
    )
    torch.testing.assert_close(embeds, ref_embeds)
    torch.testing.assert_close(hidden, ref_hidden)
    assert torch.equal(mask, ref_mask)


def test_zero_embed_equals_reference_and_is_cached(prior22, decoder22, reference22, kandinsky):
    image = CLIPImage.load(prior22, dtype=torch.float32)  # the file is fp16, like the hub's; the reference runs fp32
    torch.testing.assert_close(image.zero_embed(), reference22.prior_pipe.get_zero_embed(1))
    kandinsky.prior.zero_embed()  # computed (or found) once
    fresh = Kandinsky.open(prior=str(prior22), decoder=str(decoder22))
    torch.testing.assert_close(fresh.prior.zero_embed(), image.zero_embed())  # from the cache...
    assert fresh.prior._image is None
