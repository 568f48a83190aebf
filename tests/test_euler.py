"""Euler and Euler-ancestral against diffusers' Euler schedulers made from the decoders' scheduler configs:
step by step with a fake model, and whole images through the pipeline."""

import numpy as np
import oracle
import pytest
import torch
from PIL import Image

from kcli.errors import CheckpointError
from kcli.pipelines import ImageToImage, Inpaint, Kandinsky, TextToImage
from kcli.samplers import decoder_sampler
from kcli.samplers.denoise import denoise
from kcli.samplers.euler import euler

BASE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
        "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False}
DECODER_22 = {"_class_name": "DDPMScheduler", **BASE, "clip_sample": True}
DECODER_21 = {"_class_name": "DDIMScheduler", **BASE, "clip_sample": False}
OTHERS = {  # other schedule options diffusers' Euler schedulers take from a config
    "leading": {**DECODER_22, "timestep_spacing": "leading"},
    "trailing": {**DECODER_22, "timestep_spacing": "trailing"},
    "v": {**DECODER_22, "prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    "cosine": {**DECODER_22, "beta_schedule": "squaredcos_cap_v2"},
}
PROMPT = "a corgi gliding on the wave"


def _diffusers(config, ancestral):
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    return (EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler).from_config(config)


def _fake(x, t):
    return torch.sin(x * 3 + t / 100.0) * 1.5  # as in test_samplers


def _latents():
    return torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(100))


def _ours(sampler, steps, start=0, x0=None, seed=5):
    """Every step's latents through denoise(), from position ``start`` (noising ``x0`` there if given)."""
    ts = sampler.timesteps(steps)
    kept = ts[start:]
    x = _latents() * sampler.init_noise_sigma if x0 is None else sampler.add_noise(x0, _latents(), kept[0])
    seen = []
    denoise(lambda x, t: _fake(x, float(t)), sampler, x, kept, guidance=1.0,
            generator=torch.Generator().manual_seed(seed), after_step=lambda i, x: seen.append(x) or x)
    return ts, seen


def _theirs(scheduler, steps, start=0, x0=None, seed=5):
    """The loop of diffusers' StableDiffusion pipelines (which scale the model input, as Euler needs)."""
    scheduler.set_timesteps(steps)
    ts = [float(t) for t in scheduler.timesteps]
    kept = scheduler.timesteps[start:]
    x = (_latents() * scheduler.init_noise_sigma if x0 is None
         else scheduler.add_noise(x0, _latents(), kept[:1]))
    g, seen = torch.Generator().manual_seed(seed), []
    for t in kept:
        x = scheduler.step(_fake(scheduler.scale_model_input(x, t), float(t)), t, x, generator=g).prev_sample
        seen.append(x)
    return ts, seen


@pytest.mark.parametrize("ancestral", [False, True], ids=["euler", "euler_a"])
@pytest.mark.parametrize("config", [DECODER_22, DECODER_21, *OTHERS.values()],
                         ids=["2.2-ddpm", "2.1-ddim", *OTHERS])
@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_every_step_equals_diffusers(config, ancestral, steps):
    ours, theirs = euler(config, ancestral=ancestral), _diffusers(config, ancestral)
    ts_a, xs_a = _ours(ours, steps)
    ts_b, xs_b = _theirs(theirs, steps)
    assert ts_a == ts_b
    torch.testing.assert_close(ours.init_noise_sigma, theirs.init_noise_sigma, atol=0, rtol=0)
    assert len(xs_a) == len(xs_b) == steps
    for a, b in zip(xs_a, xs_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("ancestral", [False, True], ids=["euler", "euler_a"])
@pytest.mark.parametrize("start", [3, 9])
def test_a_run_from_the_middle_of_the_schedule_equals_diffusers(ancestral, start):
    """Image to image: noise a picture to the level of step ``start``, then run the rest."""
    x0 = torch.rand(2, 4, 6, 5, generator=torch.Generator().manual_seed(9)) * 2 - 1
    _, xs_a = _ours(euler(DECODER_22, ancestral=ancestral), 10, start, x0)
    _, xs_b = _theirs(_diffusers(DECODER_22, ancestral), 10, start, x0)
    assert len(xs_a) == len(xs_b) == 10 - start
    for a, b in zip(xs_a, xs_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


def test_the_kandinsky_schedule_is_fractional_linspace_and_starts_at_the_largest_sigma():
    s = euler(DECODER_22)
    ts = s.timesteps(4)
    assert ts == [999.0, 666.0, 333.0, 0.0]  # linspace, not the checkpoint's own leading spacing
    assert euler(DECODER_22).timesteps(7)[1] == pytest.approx(832.5)
    abar = np.cumprod(1 - np.linspace(0.00085, 0.012, 1000))[999]
    top = ((1 - abar) / abar) ** 0.5  # about 25.1
    assert float(s.init_noise_sigma) == pytest.approx(top, rel=1e-4)
    x = torch.ones(1, 4, 2, 2)
    assert float(s.scale_input(x, 999.0)[0, 0, 0, 0]) == pytest.approx(abar**0.5, rel=1e-4)


def test_plain_euler_draws_nothing_and_ancestral_one_tensor_per_step():
    for ancestral, draws in ((False, 0), (True, 6)):
        s, g = euler(DECODER_22, ancestral=ancestral), torch.Generator().manual_seed(1)
        before = g.get_state()
        denoise(_fake, s, _latents(), s.timesteps(6), guidance=1.0, generator=g)
        replay = torch.Generator().manual_seed(1)
        for _ in range(draws):
            torch.randn(2, 4, 6, 5, generator=replay)
        assert torch.equal(g.get_state(), replay.get_state())
        assert torch.equal(before, g.get_state()) == (draws == 0)


def test_names_build_euler_samplers_and_unsupported_options_are_named():
    assert not decoder_sampler(DECODER_22, "euler").ancestral
    assert decoder_sampler(DECODER_22, "euler_a").ancestral
    with pytest.raises(CheckpointError, match="use_karras_sigmas"):
        euler({**DECODER_22, "use_karras_sigmas": True})
    with pytest.raises(CheckpointError, match="prediction_type 'sample'"):
        euler({**DECODER_22, "prediction_type": "sample"}, ancestral=True)


# -- whole images -----------------------------------------------------------------------------------


class _ScaledUNet(torch.nn.Module):
    """diffusers' Kandinsky pipelines skip ``scale_model_input``; their StableDiffusion ones call it, as the
    Euler algorithm needs. This wrapper makes the reference pipeline call it before every UNet forward, on the
    latents only (an inpainting UNet's extra input channels, the known picture and the mask, stay as they
    are)."""

    def __init__(self, unet, scheduler, channels=4):
        super().__init__()
        self.unet, self.scheduler, self.channels = unet, scheduler, channels

    def forward(self, sample, timestep, **kwargs):
        x, extra = sample[:, :self.channels], sample[:, self.channels:]
        x = self.scheduler.scale_model_input(x, timestep)
        return self.unet(torch.cat([x, extra], dim=1), timestep, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


def _euler_reference(pipe, ancestral):
    decoder = pipe.decoder_pipe
    decoder.scheduler = _diffusers(decoder.scheduler.config, ancestral)
    decoder.unet = _ScaledUNet(decoder.unet, decoder.scheduler)
    return pipe


def _gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def k22(prior22, decoder22):
    return Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")


@pytest.mark.parametrize("sampler", ["euler", "euler_a"])
def test_text_to_image_equals_diffusers_with_that_scheduler(k22, prior22, decoder22, sampler):
    s = TextToImage(PROMPT, seed=11, width=64, height=64, steps=6, prior_steps=2, sampler=sampler)
    (ours,) = k22.run(s)
    ref = _euler_reference(oracle.combined_22(prior22, decoder22), sampler == "euler_a")
    want = ref(PROMPT, width=64, height=64, num_inference_steps=6, prior_num_inference_steps=2,
               generator=_gen(11), output_type="np").images
    oracle.assert_images_match(np.asarray(ours.image), oracle.as_uint8(want)[0])
    assert ours.metadata["sampler"] == sampler


@pytest.mark.parametrize("sampler", ["euler", "euler_a"])
def test_image_to_image_equals_diffusers_with_that_scheduler(k22, prior22, decoder22, pictures, sampler):
    s = ImageToImage(PROMPT, init=pictures["square"], strength=0.5, seed=3, steps=6, prior_steps=2,
                     sampler=sampler)
    (ours,) = k22.run(s)
    ref = _euler_reference(oracle.combined_22(prior22, decoder22, kind="KandinskyV22Img2ImgCombinedPipeline"),
                           sampler == "euler_a")
    want = ref(PROMPT, image=Image.open(pictures["square"]), strength=0.5, width=64, height=64,
               num_inference_steps=6, prior_num_inference_steps=2, generator=_gen(3), output_type="np").images
    oracle.assert_images_match(np.asarray(ours.image), oracle.as_uint8(want)[0])


def test_inpaint_equals_diffusers_with_euler_a(prior22, inpaint22, pictures):
    """diffusers' inpainting pipeline also noises the known region with the *scaled* initial latents
    (``noise = latents * init_noise_sigma``, then ``add_noise`` scales by sigma again); the oracle's
    ``add_noise`` takes that factor back out, so both noise with unit noise at the step's sigma."""
    k = Kandinsky.open(prior=str(prior22), decoder=str(inpaint22), device="cpu")
    s = Inpaint("a hat", image=pictures["picture"], mask=pictures["mask"], seed=7, steps=5, prior_steps=2,
                sampler="euler_a", paste_back=False)
    (ours,) = k.run(s)
    ref = oracle.combined_22(prior22, inpaint22, kind="KandinskyV22InpaintCombinedPipeline")
    ref = _euler_reference(ref, ancestral=True)
    scheduler = ref.decoder_pipe.scheduler
    plain = scheduler.add_noise
    scheduler.add_noise = lambda x0, noise, t: plain(x0, noise / scheduler.init_noise_sigma, t)
    want = ref("a hat", image=Image.open(pictures["picture"]), mask_image=Image.open(pictures["mask"]),
               width=128, height=64, num_inference_steps=5, prior_num_inference_steps=2, generator=_gen(7),
               output_type="np")
    oracle.assert_images_match(np.asarray(ours.image), oracle.as_uint8(want.images)[0])


def test_text_to_image_on_21_equals_diffusers_with_euler_a(prior21, decoder21):
    k = Kandinsky.open(prior=str(prior21), decoder=str(decoder21), device="cpu")
    s = TextToImage("a red cat, 4k photo", seed=4, width=128, height=64, steps=5, prior_steps=2, sampler="euler_a")
    (ours,) = k.run(s)
    ref = _euler_reference(oracle.combined_21(prior21, decoder21), ancestral=True)
    want = ref("a red cat, 4k photo", width=128, height=64, num_inference_steps=5, prior_num_inference_steps=2,
               generator=_gen(4), output_type="np").images
    oracle.assert_images_match(np.asarray(ours.image), oracle.as_uint8(want)[0])
