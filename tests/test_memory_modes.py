"""Selectable samplers against diffusers with the same scheduler swapped in; offload modes and half
precision through the whole pipeline."""

import numpy as np
import oracle
import pytest
import torch

from kcli.pipelines import Fuse, Kandinsky, TextToImage

PROMPT = "a corgi gliding on the wave"


def _swap(pipe, name):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = pipe.decoder_pipe.scheduler.config
    pipe.decoder_pipe.scheduler = {
        "ddpm": lambda: DDPMScheduler.from_config(config),
        "ddim": lambda: DDIMScheduler.from_config(config),
        "dpm++2m": lambda: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
        "dpm++2m-karras": lambda: DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    }[name]()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "dpm++2m-karras"])
def test_every_sampler_equals_diffusers_with_that_scheduler(prior22, decoder22, sampler):
    k = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")
    s = TextToImage(PROMPT, seed=11, width=64, height=64, steps=6, prior_steps=2, sampler=sampler)
    (ours,) = k.run(s)
    ref = oracle.combined_22(prior22, decoder22)
    _swap(ref, sampler)
    want = ref(PROMPT, width=64, height=64, num_inference_steps=6, prior_num_inference_steps=2,
               generator=torch.Generator("cpu").manual_seed(11), output_type="np").images
    oracle.assert_images_match(np.asarray(ours.image), oracle.as_uint8(want)[0])


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_gives_the_same_image(prior22, decoder22, inpaint22, offload, pictures):
    from PIL import Image

    s = TextToImage(PROMPT, seed=12, width=64, height=64, steps=3, prior_steps=2)
    plain = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")
    moved = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu", offload=offload)
    # copies of the weights may sit at other alignments, which can change CPU kernels in the last bit
    (a,), (b,) = plain.run(s), moved.run(s)
    oracle.assert_images_match(np.asarray(b.image), np.asarray(a.image))
    picture = Image.open(pictures["square"])
    mix = Fuse(items=(PROMPT, picture), weights=(0.5, 0.5), seed=12, width=64, height=64, steps=3, prior_steps=2)
    (a,), (b,) = plain.run(mix), moved.run(mix)
    oracle.assert_images_match(np.asarray(b.image), np.asarray(a.image))
    if offload == "sequential":
        assert sum(st.loads for st in moved.placement.streamers) > 0


def test_bf16_gives_a_finite_image_close_to_fp32(prior22, decoder22):
    s = TextToImage(PROMPT, seed=13, width=64, height=64, steps=4, prior_steps=2)
    (full,) = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu").run(s)
    half = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu", dtype="bf16")
    assert half.decoder.unet.dtype == torch.bfloat16
    (low,) = half.run(s)
    a, b = np.asarray(full.image).astype(float), np.asarray(low.image).astype(float)
    assert b.std() > 1, "a flat (black or grey) image"
    assert np.abs(a - b).mean() < 12, np.abs(a - b).mean()  # bf16 keeps 8 bits of mantissa: close, not equal


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_gives_a_finite_image_close_to_fp32(prior22, decoder22):
    s = TextToImage(PROMPT, seed=13, width=64, height=64, steps=4, prior_steps=2)
    (full,) = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu").run(s)
    (half,) = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cuda", dtype="fp16").run(s)
    a, b = np.asarray(full.image).astype(float), np.asarray(half.image).astype(float)
    assert b.std() > 1 and np.abs(a - b).mean() < 8
