"""DDPM and DDIM against diffusers' schedulers of the same config: timesteps, steps, and random draws."""

import pytest
import torch

from kcli.errors import CheckpointError
from kcli.samplers import decoder_sampler
from kcli.samplers.denoise import guide

BASE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
        "prediction_type": "epsilon", "steps_offset": 1, "set_alpha_to_one": False}
CONFIGS = {
    "hub-2.2-decoder": {"clip_sample": True},
    "hub-2.2-inpaint": {"clip_sample": False},
    "thresholding": {"thresholding": True, "clip_sample": False, "sample_max_value": 2.0},
    "trailing-v": {"timestep_spacing": "trailing", "prediction_type": "v_prediction", "steps_offset": 0},
    "linspace-sample": {"timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample": False},
    "scaled-linear-fixed-large": {"beta_schedule": "scaled_linear", "variance_type": "fixed_large"},
    "fixed-small-log": {"variance_type": "fixed_small_log"},
    "learned-range": {"variance_type": "learned_range", "thresholding": True, "sample_max_value": 2.0,
                      "clip_sample": False},
}


def _diffusers(kind, config):
    import diffusers

    return getattr(diffusers, kind).from_config(config)


def _run(sampler_or_scheduler, ours: bool, steps: int, seed: int, learned: bool):
    """Run a fake 'model' (a fixed function of x and t) through all steps with one seeded CPU generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(100))
    if ours:
        ts = sampler_or_scheduler.timesteps(steps)
    else:
        sampler_or_scheduler.set_timesteps(steps)
        ts = [int(t) for t in sampler_or_scheduler.timesteps]
    for i, t in enumerate(ts):
        eps = torch.sin(x * 3 + t / 100.0) * 1.5
        var = torch.tanh(x + t / 500.0)
        if ours:
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = sampler_or_scheduler.step(eps, t, prev, x, g, variance=var if learned else None)
        else:
            out = torch.cat([eps, var], dim=1) if learned else eps
            x = sampler_or_scheduler.step(out, torch.tensor(t), x, generator=g).prev_sample
    return ts, x, torch.randn(1, generator=g)  # the last draw shows both used the generator the same way


CASES = [("DDPMScheduler", n) for n in sorted(CONFIGS)] + [
    ("DDIMScheduler", n) for n in sorted(CONFIGS) if "variance_type" not in CONFIGS[n]  # DDIM has none
]


@pytest.mark.parametrize("kind,name", CASES)
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_sampler_equals_diffusers(kind, name, steps):
    config = {"_class_name": kind, **BASE, **CONFIGS[name]}
    ours = decoder_sampler(config)
    learned = ours.uses_variance_channels
    ts_a, x_a, tail_a = _run(ours, True, steps, 7, learned)
    ts_b, x_b, tail_b = _run(_diffusers(kind, config), False, steps, 7, learned)
    assert ts_a == ts_b
    torch.testing.assert_close(x_a, x_b, atol=2e-5, rtol=1e-5)
    assert torch.equal(tail_a, tail_b), "the number of random draws differs"


def test_ddpm_draws_noise_at_every_step_of_the_hub_schedule():
    # steps_offset=1 makes the last timestep 1, so even the last step draws (as diffusers does)
    ours = decoder_sampler({"_class_name": "DDPMScheduler", **BASE, "clip_sample": True})
    ts = ours.timesteps(4)
    assert ts == [751, 501, 251, 1]
    draws = []
    real = torch.randn

    def counting(*a, **k):
        draws.append(a)
        return real(*a, **k)

    torch.randn = counting
    try:
        _run(ours, True, 4, 0, False)
    finally:
        torch.randn = real
    assert len(draws) == 1 + 4 + 1  # initial latents, one per step (the last too), the final probe


def test_add_noise_equals_diffusers():
    from diffusers import DDPMScheduler

    config = {"_class_name": "DDPMScheduler", **BASE}
    x0, noise = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    want = DDPMScheduler.from_config(config).add_noise(x0, noise, torch.tensor([291]))
    torch.testing.assert_close(decoder_sampler(config).add_noise(x0, noise, 291), want)


def test_guidance_combines_noise_and_keeps_conditional_variance():
    u = torch.zeros(1, 8, 2, 2)
    c = torch.ones(1, 8, 2, 2)
    c[:, 4:] = 5.0
    out = guide(torch.cat([u, c]), 4.0, 4)
    assert torch.equal(out[:, :4], torch.full((1, 4, 2, 2), 4.0))
    assert torch.equal(out[:, 4:], torch.full((1, 4, 2, 2), 5.0))


@pytest.mark.parametrize("bad,match", [
    ({"_class_name": "EulerDiscreteScheduler"}, "unsupported decoder scheduler"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"_class_name": "DDPMScheduler", "variance_type": "learned"}, "variance_type"),
    ({"_class_name": "DDPMScheduler", "timestep_spacing": "karras"}, "timestep_spacing"),
])
def test_unsupported_scheduler_config_is_named(bad, match):
    with pytest.raises(CheckpointError, match=match):
        decoder_sampler(bad)
