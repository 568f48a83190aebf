"""DPM-Solver++ against diffusers' DPMSolverMultistepScheduler made from the decoders' scheduler configs."""

import math

import pytest
import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.samplers import decoder_sampler
from kcli.samplers.denoise import denoise
from kcli.samplers.dpmsolver import dpm_solver

BASE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
        "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False}
DECODER_22 = {"_class_name": "DDPMScheduler", **BASE, "clip_sample": True}
DECODER_21 = {"_class_name": "DDIMScheduler", **BASE, "clip_sample": False}


def _diffusers(config, karras=False, order=2):
    """What a diffusers user gets swapping the decoder's scheduler for DPM-Solver++ 2M."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=order,
                                                   use_karras_sigmas=karras)


def _fake(x, t):
    return torch.sin(x * 3 + t / 100.0) * 1.5  # as in test_samplers


def _latents():
    return torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(100))


def _ours(sampler, steps, start=0, x=None, model=_fake, renoise=None):
    """Run through denoise(); from position ``start``, re-noising the left half after each step if asked."""
    ts = sampler.timesteps(steps)
    kept = ts[start:]
    x = _latents() if x is None else x(sampler, kept[0])
    after = None
    if renoise is not None:
        def after(i, x):
            if i + 1 < len(kept):
                x = x.clone()
                x[..., :2] = sampler.add_noise(renoise, renoise.flip(0), kept[i + 1])[..., :2]
            return x
    out = denoise(lambda x, t: model(x, int(t)), sampler, x, kept, guidance=1.0, generator=None, after_step=after)
    return ts, out


def _theirs(scheduler, steps, start=0, x=None, begin=True, renoise=None):
    scheduler.set_timesteps(steps)
    ts = [int(t) for t in scheduler.timesteps]
    kept = ts[start:]
    if begin:
        scheduler.set_begin_index(start)  # as diffusers' img2img pipelines that call it
    x = _latents() if x is None else x(scheduler, kept[0])
    for i, t in enumerate(kept):
        x = scheduler.step(_fake(x, t), torch.tensor(t), x).prev_sample
        if renoise is not None and i + 1 < len(kept):  # as diffusers' inpainting pipeline does
            x[..., :2] = scheduler.add_noise(renoise, renoise.flip(0), torch.tensor([kept[i + 1]]))[..., :2]
    return ts, x


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [DECODER_22, DECODER_21], ids=["2.2-ddpm", "2.1-ddim"])
@pytest.mark.parametrize("karras", [False, True], ids=["plain", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_equals_diffusers(config, karras, steps):
    ts_a, x_a = _ours(dpm_solver(config, karras=karras), steps)
    ts_b, x_b = _theirs(_diffusers(config, karras), steps, begin=False)
    assert ts_a == ts_b
    _close(x_a, x_b)


OPTIONS = {  # other configs and solver options: (extra config keys, solver options, steps)
    "order-1": ({}, {"order": 1}, 25),
    "sigma-min-final": ({"final_sigmas_type": "sigma_min"}, {}, 25),
    "sigma-min-final-short": ({"final_sigmas_type": "sigma_min"}, {}, 10),
    "no-lower-order-final": ({"final_sigmas_type": "sigma_min", "lower_order_final": False}, {}, 10),
    "leading-v": ({"timestep_spacing": "leading", "prediction_type": "v_prediction"}, {}, 25),
    "trailing-sample": ({"timestep_spacing": "trailing", "prediction_type": "sample", "steps_offset": 0}, {}, 7),
    "thresholding": ({"thresholding": True, "sample_max_value": 2.0}, {}, 25),
    "cosine-karras": ({"beta_schedule": "squaredcos_cap_v2"}, {"karras": True}, 25),
    "karras-repeats-50": ({}, {"karras": True}, 50),  # ..., 1, 1, 0
    "karras-repeats-100": ({}, {"karras": True}, 100),  # ..., 1, 1, 1, 0, 0
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_equal_diffusers(name):
    extra, options, steps = OPTIONS[name]
    config = {**DECODER_22, **extra}
    ts_a, x_a = _ours(dpm_solver(config, **options), steps)
    # cosine + Karras repeats the first timestep (998 eleven times): diffusers then needs set_begin_index(0),
    # or it looks the first step up as the second 998 and runs off the end of its sigmas (IndexError)
    ts_b, x_b = _theirs(_diffusers(config, **options), steps, begin=name == "cosine-karras")
    assert ts_a == ts_b
    _close(x_a, x_b)


def test_decoders_are_spaced_linspace_like_diffusers_from_config():
    # The decoder configs have no timestep_spacing: DDPM/DDIM default to "leading" (+ steps_offset), the
    # DPM scheduler to "linspace" over steps + 1 points. diffusers' from_config keeps only the keys the
    # file set, also from a loaded pipe.scheduler.config, so a swapped-in DPM scheduler is "linspace" too.
    from diffusers import DDPMScheduler

    assert decoder_sampler(DECODER_22).timesteps(5) == [801, 601, 401, 201, 1]
    assert dpm_solver(DECODER_22).timesteps(5) == [999, 799, 599, 400, 200]
    swapped = _diffusers(DDPMScheduler.from_config(DECODER_22).config)
    swapped.set_timesteps(5)
    assert swapped.timesteps.tolist() == [999, 799, 599, 400, 200]
    # an explicit key is honoured, with the DPM scheduler's own leading formula (T // (n + 1))
    assert dpm_solver({**DECODER_22, "timestep_spacing": "leading"}).timesteps(5) == [831, 665, 499, 333, 167]


def _noised(x0, noise):
    def make(sampler, t):
        t = torch.tensor([t]) if hasattr(sampler, "set_timesteps") else t
        return sampler.add_noise(x0, noise, t)
    return make


@pytest.mark.parametrize("karras", [False, True], ids=["plain", "karras"])
@pytest.mark.parametrize("steps,start", [(25, 0), (25, 3), (25, 17), (25, 24), (5, 2)])
def test_image_to_image_equals_diffusers(karras, steps, start):
    # kcli's refine(): add_noise at the first kept timestep, then run the rest of the schedule
    x0, noise = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    ts_a, x_a = _ours(dpm_solver(DECODER_22, karras=karras), steps, start, x=_noised(x0, noise))
    for begin in (True, False):  # with set_begin_index (SD img2img), without (diffusers' Kandinsky img2img)
        ts_b, x_b = _theirs(_diffusers(DECODER_22, karras), steps, start, x=_noised(x0, noise), begin=begin)
        assert ts_a == ts_b
        _close(x_a, x_b)


def test_add_noise_equals_diffusers_at_every_timestep():
    x0, noise = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    for karras in (False, True):
        ours, theirs = dpm_solver(DECODER_22, karras=karras), _diffusers(DECODER_22, karras)
        theirs.set_timesteps(25)
        for t in ours.timesteps(25):
            _close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, torch.tensor([t])))


@pytest.mark.parametrize("karras", [False, True], ids=["plain", "karras"])
def test_inpainting_renoise_equals_diffusers(karras):
    known = torch.randn(2, 4, 6, 5)
    _, x_a = _ours(dpm_solver(DECODER_22, karras=karras), 25, renoise=known)
    _, x_b = _theirs(_diffusers(DECODER_22, karras), 25, begin=False, renoise=known)
    _close(x_a, x_b)


def test_start_at_a_repeated_timestep_with_set_begin_index():
    # Karras sigmas over 100 steps repeat timestep 1 (and 0): add_noise cannot tell the repeats apart from
    # the timestep alone, so a loop starting at the second one says where it starts, as in diffusers.
    ours, theirs = dpm_solver(DECODER_22, karras=True), _diffusers(DECODER_22, True)
    ts = ours.timesteps(100)
    start = ts.index(1) + 1
    assert ts[start] == ts[start - 1] == 1
    ours.set_begin_index(start)
    x0, noise = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    x = ours.add_noise(x0, noise, ts[start])
    out = denoise(lambda x, t: _fake(x, int(t)), ours, x, ts[start:], guidance=1.0, generator=None)
    _, want = _theirs(theirs, 100, start, x=_noised(x0, noise), begin=True)
    _close(out, want)


def test_draws_no_random_numbers():
    g = torch.Generator().manual_seed(3)
    before, global_before = g.get_state(), torch.get_rng_state()
    for karras in (False, True):
        sampler = dpm_solver(DECODER_22, karras=karras)
        ts = sampler.timesteps(6)
        x = torch.ones(1, 4, 2, 2)
        for i, t in enumerate(ts):
            x = sampler.step(_fake(x, t), t, ts[i + 1] if i + 1 < len(ts) else -1, x, g)
    assert torch.equal(g.get_state(), before)
    assert torch.equal(torch.get_rng_state(), global_before)


def test_first_order_is_ddim():
    # DPM-Solver++ 1 is DDIM (eta = 0) on the same timesteps, ending at alpha = 1
    config = {**DECODER_21, "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True}
    _, a = _ours(dpm_solver(config, order=1), 25)
    _, b = _ours(decoder_sampler(config), 25)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_second_order_beats_ddim_against_a_1000_step_reference():
    """DPM-Solver++ 2M with 25 steps lands closer to a 1000-step DDIM run than DDIM with 25 steps.

    The model is the exact noise prediction for data x0 ~ N(mu, 0.5^2) (smooth, like a trained denoiser).
    test_samplers' sin(3x + t/100) field is no denoiser: its x0 predictions grow to ~70 and the ODE it
    defines is so rough that at 25 steps no solver is accurate (2M and DDIM both miss by ~18).
    The reference DDIM runs every timestep 999..0 and ends at alpha = 1, the ODE's end as DPM's.
    """
    mu = torch.sin(torch.arange(240.0)).reshape(2, 4, 6, 5) * 0.8
    ac = decoder_sampler(DECODER_21).alphas_cumprod

    def gaussian(x, t, s=0.5):
        return (1 - ac[t]) ** 0.5 * (x - ac[t] ** 0.5 * mu) / (ac[t] * s * s + 1 - ac[t])

    full = {**DECODER_21, "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True}
    ref = _ours(decoder_sampler(full), 1000, model=gaussian)[1]

    def err(sampler):
        return (_ours(sampler, 25, model=gaussian)[1] - ref).abs().max().item()

    dpm, dpm_karras = err(dpm_solver(DECODER_21)), err(dpm_solver(DECODER_21, karras=True))
    ddim_same_ends, ddim_21 = err(decoder_sampler(full)), err(decoder_sampler(DECODER_21))
    # measured: 0.112, 0.023, 0.193, 0.152 (the reference itself is 0.008 from the exact ODE solution)
    assert dpm < 0.75 * min(ddim_same_ends, ddim_21)
    assert dpm_karras < dpm


@pytest.mark.parametrize("bad,match", [
    ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ({"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ({"solver_type": "heun"}, "solver_type"),
    ({"trained_betas": [0.1] * 1000}, "trained_betas"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"use_lu_lambdas": True}, "use_lu_lambdas"),
    ({"lambda_min_clipped": -5.1}, "lambda_min_clipped"),
    ({"final_sigmas_type": "max"}, "final_sigmas_type"),
])
def test_unsupported_settings_are_named(bad, match):
    with pytest.raises(CheckpointError, match=match) as e:
        dpm_solver({**DECODER_22, **bad})
    assert "\n" not in str(e.value)


def test_unsupported_order_and_misuse():
    assert dpm_solver({**DECODER_22, "lambda_min_clipped": -math.inf}).order == 2
    with pytest.raises(KandinskyError, match="order"):
        dpm_solver(DECODER_22, order=3)
    sampler = dpm_solver(DECODER_22)
    with pytest.raises(ValueError, match="timesteps"):
        sampler.step(torch.zeros(1), 999, 959, torch.zeros(1))
    sampler.timesteps(25)
    with pytest.raises(ValueError, match="not in the schedule"):
        sampler.step(torch.zeros(1), 998, 959, torch.zeros(1))
