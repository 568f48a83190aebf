"""The prior (kcli.models.prior) and its sampler (kcli.samplers.unclip) against diffusers.

PriorTransformer, UnCLIPScheduler and KandinskyV22PriorPipeline read the same tiny checkpoint from disk;
the real configs are built on the meta device to check names, shapes and parameter counts.
"""

from __future__ import annotations

import json
import shutil

import oracle
import pytest
import torch
from conftest import CONFIGS

from kcli.errors import CheckpointError
from kcli.loading.weights import read_json
from kcli.models.prior import PriorConfig, PriorTransformer, load_prior
from kcli.samplers.unclip import UnCLIPConfig, UnCLIPSampler, sample_prior


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def priors(prior22):
    from diffusers import PriorTransformer as RefPrior

    return load_prior(prior22 / "prior"), RefPrior.from_pretrained(prior22 / "prior").eval()


@pytest.fixture(scope="module")
def samplers(prior22):
    from diffusers import UnCLIPScheduler

    ours = UnCLIPSampler.from_dict(read_json(prior22 / "scheduler" / "scheduler_config.json"))
    return ours, UnCLIPScheduler.from_pretrained(prior22 / "scheduler")


# ----------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("timestep", [torch.tensor([999, 3]), torch.tensor(500), 0])
def test_prior_matches_diffusers(priors, timestep):
    ours, ref = priors
    g = _gen(0)
    x, emb = torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)
    hidden = torch.randn(2, 77, 32, generator=g)
    mask = torch.zeros(2, 77, dtype=torch.bool)
    mask[0, :5], mask[1, :40] = True, True  # padded text, different lengths
    with torch.no_grad():
        out = ours(x, timestep, emb, hidden, mask)
        expected = ref(x, timestep=timestep, proj_embedding=emb, encoder_hidden_states=hidden,
                       attention_mask=mask).predicted_image_embedding
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        # without a mask diffusers applies no mask at all (not even the causal one): so do we
        out = ours(x, timestep, emb, hidden)
        expected = ref(x, timestep=timestep, proj_embedding=emb, encoder_hidden_states=hidden)
        expected = expected.predicted_image_embedding
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        z = torch.randn(2, 32, generator=g)
        torch.testing.assert_close(ours.post_process(z), ref.post_process_latents(z), atol=0, rtol=0)


def test_loaded_prior_has_no_buffers(priors):
    ours, _ = priors
    assert not list(ours.buffers())
    assert not any(p.requires_grad for p in ours.parameters())


@pytest.mark.parametrize(("name", "params"), [("kandinsky-2-2-prior", 1_026_225_920),
                                              ("kandinsky-2-1-prior", 1_022_030_080)])
def test_real_config_state_dict_matches_diffusers(name, params):
    from diffusers import PriorTransformer as RefPrior

    config = json.loads((CONFIGS / f"{name}.prior.json").read_text())
    with torch.device("meta"):
        ours = PriorTransformer(PriorConfig.from_dict(config))
        ref = RefPrior.from_config(config)
    oracle.assert_same_structure(ours, ref, params)


@pytest.mark.parametrize("change", [
    {"norm_in_type": "layer"}, {"embedding_proj_norm_type": "layer"}, {"encoder_hid_proj_type": None},
    {"added_emb_type": None}, {"time_embed_act_fn": "gelu"}, {"additional_embeddings": 5},
    {"num_layers": "20"}, {"embedding_dim": 0},
])
def test_prior_config_errors(change):
    config = json.loads((CONFIGS / "kandinsky-2-2-prior.prior.json").read_text())
    with pytest.raises(CheckpointError, match=next(iter(change))):
        PriorConfig.from_dict({**config, **change})


def test_prior_config_defaults():
    config = json.loads((CONFIGS / "kandinsky-2-1-prior.prior.json").read_text())
    cfg = PriorConfig.from_dict(config)
    dims = (cfg.inner_dim, cfg.time_embed_dim, cfg.embedding_proj_dim, cfg.clip_embed_dim)
    assert dims == (2048, 2048, 768, 768)


def test_load_prior_reports_bad_config(prior22, tmp_path):
    folder = tmp_path / "prior"
    shutil.copytree(prior22 / "prior", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "norm_in_type": "layer"}))
    with pytest.raises(CheckpointError, match=r"config\.json.*norm_in_type"):
        load_prior(folder)


# --------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n", [2, 5, 25])
def test_timesteps_match_diffusers(samplers, n):
    ours, ref = samplers
    ref.set_timesteps(n)
    assert ours.timesteps(n) == ref.timesteps.tolist()


def test_one_step_is_defined(samplers):
    ours, _ = samplers
    assert ours.timesteps(1) == [999]
    with pytest.raises(ValueError):
        ours.timesteps(0)


@pytest.mark.parametrize(("t", "prev_t"), [(750, 500), (500, None), (999, 0), (0, None), (0, -1)])
def test_step_matches_diffusers(samplers, t, prev_t):
    ours, ref = samplers
    g = _gen(1)
    x0_pred = 20 * torch.randn(3, 32, generator=g)  # beyond clip_sample_range 10: exercises the clamp
    x_t = torch.randn(3, 32, generator=g)
    g_ours, g_ref = _gen(7), _gen(7)
    out = ours.step(x0_pred, t, prev_t, x_t, g_ours)
    expected = ref.step(x0_pred, t, x_t, prev_timestep=prev_t, generator=g_ref).prev_sample
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.equal(g_ours.get_state(), g_ref.get_state())  # same draws (none at t = 0)
    assert torch.equal(g_ours.get_state(), _gen(7).get_state()) == (t == 0)


@pytest.mark.parametrize("change", [
    {"variance_type": "learned_range"}, {"prediction_type": "epsilon"}, {"beta_schedule": "linear"},
    {"num_train_timesteps": 1}, {"clip_sample": "yes"}, {"clip_sample_range": -1},
])
def test_scheduler_config_errors(change):
    config = json.loads((CONFIGS / "prior.scheduler.json").read_text())
    with pytest.raises(CheckpointError, match=next(iter(change))):
        UnCLIPConfig.from_dict({**config, **change})
    config.pop("prediction_type")  # diffusers' default is "epsilon": not a Kandinsky prior
    with pytest.raises(CheckpointError, match="prediction_type"):
        UnCLIPConfig.from_dict(config)


# ---------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def pipelines(prior22, priors):
    from diffusers import KandinskyV22PriorPipeline, UnCLIPScheduler
    from oracle import FP32, pil_image_processor
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    tokenizer = CLIPTokenizer.from_pretrained(prior22 / "tokenizer")
    text_encoder = CLIPTextModelWithProjection.from_pretrained(prior22 / "text_encoder", dtype=FP32).eval()
    ref = KandinskyV22PriorPipeline(
        prior=priors[1],
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(prior22 / "image_encoder", dtype=FP32),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler.from_pretrained(prior22 / "scheduler"),
        image_processor=pil_image_processor(prior22 / "image_processor"),
    )
    ref.set_progress_bar_config(disable=True)
    sampler = UnCLIPSampler.from_dict(read_json(prior22 / "scheduler" / "scheduler_config.json"))
    return priors[0], sampler, tokenizer, text_encoder, ref


def _encode(tokenizer, text_encoder, texts):
    tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = text_encoder(tokens.input_ids)  # no attention mask, as diffusers
    return out.text_embeds, out.last_hidden_state, tokens.attention_mask.bool()


@pytest.mark.parametrize("negative", [None, ["blurry", "dark"]])
@pytest.mark.parametrize("guidance", [4.0, 1.0])
@pytest.mark.parametrize("seed", [0, 42])
def test_sample_prior_matches_pipeline(pipelines, seed, guidance, negative):
    model, sampler, tokenizer, text_encoder, ref = pipelines
    prompts = ["a red cat", "a lighthouse at dusk"]
    rows = prompts + negative if negative else prompts  # diffusers runs the negatives as extra rows
    embeds, hidden, mask = _encode(tokenizer, text_encoder, rows)
    if guidance > 1:  # [uncond rows; cond rows]; the negatives are also the uncond text of their own rows
        uncond = _encode(tokenizer, text_encoder, 2 * negative if negative else [""] * len(rows))
        embeds, hidden, mask = (torch.cat([u, c]) for u, c in zip(uncond, (embeds, hidden, mask)))
    g_ours, g_ref = _gen(seed), _gen(seed)
    calls = []
    out = sample_prior(model, sampler, steps=3, text_embeds=embeds, hidden_states=hidden, mask=mask,
                       guidance=guidance, generator=g_ours, batch=len(rows),
                       on_step=lambda i, n: calls.append((i, n)))
    expected = ref(prompts, negative_prompt=negative, num_inference_steps=3, guidance_scale=guidance,
                   generator=g_ref).image_embeds
    torch.testing.assert_close(out[: len(prompts)], expected, atol=1e-5, rtol=0)
    assert torch.equal(g_ours.get_state(), g_ref.get_state())  # same number of draws
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_sample_prior_one_step(pipelines):
    model, sampler, tokenizer, text_encoder, _ = pipelines
    embeds, hidden, mask = _encode(tokenizer, text_encoder, ["a red cat"])
    out = sample_prior(model, sampler, steps=1, text_embeds=embeds, hidden_states=hidden, mask=mask,
                       guidance=1.0, generator=_gen(0), batch=1)
    x = torch.randn(1, 32, generator=_gen(0))  # the one step lands on the (clipped) x0 prediction
    with torch.no_grad():
        x0 = model(x, 999, embeds, hidden, mask).clamp(-10, 10)
    torch.testing.assert_close(out, model.post_process(x0), atol=1e-6, rtol=0)
