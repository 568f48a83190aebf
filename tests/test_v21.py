"""Kandinsky 2.1, the multilingual model: M-CLIP against diffusers, and every mode through the command line
against diffusers' 2.1 combined pipelines, with English and Cyrillic prompts."""

import json

import numpy as np
import oracle
import pytest
import torch
from conftest import CONFIGS
from PIL import Image
from test_cli import one_line_error, run

from kcli.models.mclip import MCLIP, MCLIPText, _config

STEPS = ["--steps", 4, "--prior-steps", 2, "--device", "cpu"]
PROMPTS = {"english": "a red cat, 4k photo", "cyrillic": "красный кот, фотография"}


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_mclip_equals_diffusers(decoder21):
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP
    from transformers import XLMRobertaTokenizerFast

    ours = MCLIPText.load(decoder21)
    ref = MultilingualCLIP.from_pretrained(decoder21 / "text_encoder").eval()
    tok = XLMRobertaTokenizerFast.from_pretrained(decoder21 / "tokenizer")
    prompts = [PROMPTS["english"], PROMPTS["cyrillic"], ""]
    t = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want_pooled, want_hidden = ref(input_ids=t.input_ids, attention_mask=t.attention_mask)
        pooled, hidden = ours(prompts)
    torch.testing.assert_close(pooled, want_pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden, want_hidden, atol=1e-5, rtol=1e-4)


def test_mclip_structure_on_the_real_config():
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    config = json.loads((CONFIGS / "kandinsky-2-1.text_encoder.json").read_text())
    with torch.device("meta"):
        ours = MCLIP(_config(config))
        ref = MultilingualCLIP(MCLIPConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 560_677_632


@pytest.mark.parametrize("lang,seed,negative", [("english", 0, None), ("cyrillic", 1, "дождь")])
def test_generate_equals_diffusers(prior21, decoder21, tmp_path, lang, seed, negative):
    prompt = PROMPTS[lang]
    args = ["generate", prompt, "--prior", prior21, "--decoder", decoder21, "--seed", seed, "-W", 128, "-H", 64,
            *STEPS, "-o", tmp_path / "out.png"]
    proc = run(*args, *(["--negative", negative] if negative else []))
    assert proc.returncode == 0, proc.stderr
    want = oracle.combined_21(prior21, decoder21)(
        prompt, negative_prompt=negative, width=128, height=64, num_inference_steps=4, prior_num_inference_steps=2,
        generator=gen(seed), output_type="np").images
    oracle.assert_images_match(png(tmp_path / "out.png"), oracle.as_uint8(want)[0])


@pytest.mark.parametrize("lang", ["english", "cyrillic"])
def test_image_to_image_equals_diffusers(prior21, decoder21, pictures, tmp_path, lang):
    prompt = PROMPTS[lang]
    proc = run("generate", prompt, "--init", pictures["square"], "--strength", 0.4, "--seed", 2, "--prior", prior21,
               "--decoder", decoder21, "--steps", 10, "--prior-steps", 2, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    ref = oracle.combined_21(prior21, decoder21, kind="KandinskyImg2ImgCombinedPipeline")
    want = ref(prompt, image=Image.open(pictures["square"]), strength=0.4, width=64, height=64,
               num_inference_steps=10, prior_num_inference_steps=2, generator=gen(2), output_type="np").images
    oracle.assert_images_match(png(tmp_path / "out.png"), oracle.as_uint8(want)[0])


@pytest.mark.parametrize("lang", ["english", "cyrillic"])
def test_inpaint_equals_diffusers(prior21, inpaint21, pictures, tmp_path, lang):
    prompt = PROMPTS[lang]
    proc = run("inpaint", prompt, "--image", pictures["picture"], "--mask", pictures["mask"], "--seed", 3,
               "--prior", prior21, "--decoder", inpaint21, *STEPS, "--no-paste-back", "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    ref = oracle.combined_21(prior21, inpaint21, kind="KandinskyInpaintCombinedPipeline")
    want = ref(prompt, image=Image.open(pictures["picture"]), mask_image=Image.open(pictures["mask"]), width=128,
               height=64, num_inference_steps=4, prior_num_inference_steps=2, generator=gen(3), output_type="np")
    oracle.assert_images_match(png(tmp_path / "out.png"), oracle.as_uint8(want.images)[0])


def test_fuse_and_outpaint_run_on_21(prior21, decoder21, inpaint21, pictures, tmp_path):
    proc = run("fuse", PROMPTS["cyrillic"], pictures["square"], "--seed", 4, "--prior", prior21, "--decoder", decoder21,
               *STEPS, "-W", 64, "-H", 64, "-o", tmp_path / "fuse.png")
    assert proc.returncode == 0, proc.stderr
    proc = run("outpaint", PROMPTS["english"], "--image", pictures["picture"], "--expand", "right=64", "--seed", 4,
               "--prior", prior21, "--decoder", inpaint21, *STEPS, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(png(tmp_path / "out.png")[:, :128], png(pictures["picture"]))


def test_mixing_versions_is_a_one_line_error(prior22, decoder21, tmp_path):
    proc = run("generate", "x", "--prior", prior22, "--decoder", decoder21, "--seed", 0, "-o", tmp_path / "x.png")
    assert "not from the same Kandinsky version" in one_line_error(proc)
