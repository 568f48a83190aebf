"""``kandinsky score`` and ``--best-of --scorer openclip``: CLIP scores from a tiny random open_clip model,
checked against the cosine similarity computed by hand with open_clip itself; the model served from the
loopback hub by name; best-of keeping the top candidate; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hubserver
import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import one_line_error

from kcli.pipelines import imagemeta as metadata

CLIP_TEST_PROMPTS = ["a red square", "a blue circle at night", "ein Hund"]


def kandinsky(*args, env=None, home=None):
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    if home is not None:
        full["KANDINSKY_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=300)


@pytest.fixture(scope="session")
def clip_model(tmp_path_factory):
    import tiny

    return tiny.make_open_clip(tmp_path_factory.mktemp("open_clip") / "tiny-clip", seed=3, pickle_too=True)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Three different pictures: noise, a gradient (not square), and a flat colour with transparency."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    ramp = np.linspace(0, 255, 80, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (40, 1))] * 3, -1)).save(folder / "b.jpg", quality=95)
    Image.new("RGB", (32, 32), (200, 30, 40)).save(folder / "c.png")
    return folder


def by_hand(folder, image_path, prompt) -> float:
    """The cosine similarity, computed the way open_clip's own README does it."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.open(image_path).convert("RGB"))[None])
        text = model.encode_text(tokenizer([prompt]))
    return float(torch.nn.functional.cosine_similarity(image, text).item())


def scores_of(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_score_equals_the_cosine_similarity_computed_by_hand(clip_model, photos, tmp_path):
    images = [photos / "a.png", photos / "b.jpg", photos / "c.png"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CLIP_TEST_PROMPTS) + "\n", encoding="utf-8")
    rows = scores_of(kandinsky("score", *images, "--prompts", prompts, "--clip-model", clip_model, "--json"))
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert [r["prompt"] for r in rows] == CLIP_TEST_PROMPTS
    expected = [by_hand(clip_model, p, t) for p, t in zip(images, CLIP_TEST_PROMPTS)]
    assert np.allclose([r["score"] for r in rows], expected, atol=1e-5, rtol=0), (rows, expected)
    assert len(set(np.round(expected, 4))) == 3  # the pictures and prompts really differ

    # one prompt for a whole folder, best first; the table shows the same numbers
    rows = scores_of(kandinsky("score", photos, "-p", "a red square", "--clip-model", clip_model, "--json", "--sort"))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    for r in rows:
        assert abs(r["score"] - by_hand(clip_model, r["image"], "a red square")) < 1e-5
    table = kandinsky("score", photos / "a.png", "-p", "a red square", "--clip-model", clip_model)
    assert table.returncode == 0 and f"{by_hand(clip_model, photos / 'a.png', 'a red square'):.4f}" in table.stdout


def test_score_reads_the_prompt_each_picture_records(clip_model, photos, tmp_path):
    ours, theirs = tmp_path / "ours.png", tmp_path / "theirs.png"
    meta = {"mode": "generate", "settings": {"prompt": "a lighthouse at dusk", "seed": 1, "width": 32, "height": 32}}
    Image.open(photos / "a.png").save(ours, **metadata.save_kwargs(ours, meta))
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a castle,\nmoody light\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1")
    Image.open(photos / "c.png").save(theirs, pnginfo=info)
    rows = scores_of(kandinsky("score", ours, theirs, "--clip-model", clip_model, "--json"))
    assert [r["prompt"] for r in rows] == ["a lighthouse at dusk", "a castle,\nmoody light"]
    assert abs(rows[0]["score"] - by_hand(clip_model, ours, "a lighthouse at dusk")) < 1e-5


def test_default_model_comes_from_the_hub_once_then_offline(clip_model, photos, tmp_path, monkeypatch):
    """ViT-L-14/openai resolves to open_clip's hub copy (timm/vit_large_patch14_clip_224.openai), served here by
    the tiny model: only the safetensors weights and the config are fetched, never the pickle."""
    import huggingface_hub.constants

    with hubserver.HubServer(lifetime=240) as server:
        repo = server.add("timm/vit_large_patch14_clip_224.openai", clip_model)
        env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        home = tmp_path / "home"
        first = scores_of(kandinsky("score", photos / "a.png", "-p", "a cat", "--json", env=env, home=home))
        fetched = {r.path.rsplit("/", 1)[-1] for r in server.downloads(repo=repo)}
        assert fetched == {"open_clip_config.json", "open_clip_model.safetensors"}
        assert first[0]["model"] == "ViT-L-14/openai"
        assert abs(first[0]["score"] - by_hand(clip_model, photos / "a.png", "a cat")) < 1e-5
        server.stop()
        again = scores_of(kandinsky("score", photos / "a.png", "-p", "a cat", "--json", "--offline", env=env,
                                    home=home))
        assert again[0]["score"] == first[0]["score"]
        missing = kandinsky("score", photos / "a.png", "-p", "a cat", "--offline", "--clip-model",
                            "ViT-B-32/openai", env=env, home=home)
        assert "CLIP model ViT-B-32/openai is not in the cache" in one_line_error(missing)


def test_best_of_with_the_open_clip_scorer_keeps_the_top_candidate(prior22, decoder22, clip_model, tmp_path):
    from dataclasses import replace

    from kcli.pipelines import Kandinsky, TextToImage

    k = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu", scorer="openclip",
                       clip_model=str(clip_model))
    scorer = k.scorer
    s = TextToImage("a red cat", seed=40, width=64, height=64, steps=2, prior_steps=2)
    (best,) = k.run(replace(s, best_of=4))
    singles = [next(k.run(replace(s, seed=40 + j))) for j in range(4)]
    scores = [scorer(r.image, "a red cat") for r in singles]
    prior_scores = [k.prior.clip_score(r.image, "a red cat") for r in singles]
    assert [seed for seed, _ in best.candidates] == [40, 41, 42, 43]
    assert [sc for _, sc in best.candidates] == scores
    top = scores.index(max(scores))
    assert best.seed == 40 + top and best.score == max(scores)
    assert np.array_equal(np.asarray(best.image), np.asarray(singles[top].image))
    assert scores != prior_scores  # it really is another CLIP

    out = tmp_path / "best.png"
    proc = kandinsky("generate", "a red cat", "--prior", prior22, "--decoder", decoder22, "--best-of", 3,
                     "--clip-model", clip_model, "--steps", 1, "--prior-steps", 2, "-W", 64, "-H", 64, "--seed", 5,
                     "-o", out)
    assert proc.returncode == 0, proc.stderr
    recorded = metadata.read(out)["score"]
    assert recorded["by"] == f"open_clip {clip_model}" and recorded["best_of"] == 3
    assert recorded["clip"] == max(sc for _, sc in recorded["candidates"])
    (rescored,) = scores_of(kandinsky("score", out, "--clip-model", clip_model, "--json"))
    assert rescored["prompt"] == "a red cat" and abs(rescored["score"] - recorded["clip"]) < 1e-4


@pytest.mark.parametrize("case,expect", [
    ("no-prompt", "records no prompt: give --prompt or --prompts"),
    ("prompt-count", "has 1 prompt(s) for 3 picture(s)"),
    ("empty-folder", "has no pictures"),
    ("missing-image", "does not exist"),
    ("not-an-image", "broken.png cannot be read as an image"),
    ("unknown-model", "unknown CLIP model 'no-such-model'"),
    ("unknown-tag", "names no pretrained ViT-L-14: known are ViT-L-14/openai"),
    ("not-a-model-folder", "has no open_clip_model.safetensors"),
    ("both-prompt-sources", "give either --prompt or --prompts, not both"),
    ("no-open-clip", 'pip install -e ".[score]" in the kandinsky checkout'),
    ("torchvision-for-another-torch", "torchvision must match torch; reinstall both"),
    ("best-of-bad-scorer", "unknown scorer 'clip': use prior or openclip"),
])
def test_bad_inputs_end_with_one_line(case, expect, clip_model, photos, tmp_path, prior22, decoder22):
    (tmp_path / "empty").mkdir()
    prompts = tmp_path / "p.txt"
    prompts.write_text("only one\n")
    (tmp_path / "broken.png").write_text("not a picture")
    model = ["--clip-model", clip_model]
    args, env = {
        "no-prompt": (["score", photos / "a.png", *model], None),
        "prompt-count": (["score", photos, "--prompts", prompts, *model], None),
        "empty-folder": (["score", tmp_path / "empty", "-p", "x", *model], None),
        "missing-image": (["score", tmp_path / "nope.png", "-p", "x", *model], None),
        "not-an-image": (["score", photos / "a.png", tmp_path / "broken.png", "-p", "x", *model], None),
        "unknown-model": (["score", photos / "a.png", "-p", "x", "--clip-model", "no-such-model"], None),
        "unknown-tag": (["score", photos / "a.png", "-p", "x", "--clip-model", "ViT-L-14/nope"], None),
        "not-a-model-folder": (["score", photos / "a.png", "-p", "x", "--clip-model", tmp_path / "empty"], None),
        "both-prompt-sources": (["score", photos / "a.png", "-p", "x", "--prompts", prompts, *model], None),
        "no-open-clip": (["score", photos / "a.png", "-p", "x", *model],
                         {"PYTHONPATH": str(_shadow_open_clip(tmp_path, "ImportError(\"No module named 'open_clip'\")"))}),
        "torchvision-for-another-torch": (["score", photos / "a.png", "-p", "x", *model], {"PYTHONPATH": str(
            _shadow_open_clip(tmp_path, "RuntimeError('operator torchvision::nms does not exist')"))}),
        "best-of-bad-scorer": (["generate", "x", "--prior", prior22, "--decoder", decoder22, "--best-of", 2,
                                "--scorer", "clip", "-o", tmp_path / "x.png"], None),
    }[case]
    assert expect in one_line_error(kandinsky(*args, env=env))
    assert not (tmp_path / "x.png").exists()


def test_score_goes_on_past_a_bomb_and_a_folder_named_like_a_picture(clip_model, photos, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.png").write_bytes((photos / "a.png").read_bytes())
    (folder / "x.png").mkdir()  # a folder whose name looks like a picture
    Image.new("L", (10000, 10000)).save(folder / "bomb.png")  # 100 megapixels in a few hundred kB
    proc = kandinsky("score", folder, "-p", "a red square", "--clip-model", clip_model, "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: image {folder / 'bomb.png'} is 10000x10000, 100 megapixels: above the limit of 64 "
                      "(set KANDINSKY_MAX_PIXELS to allow more)",
                      f"error: image {folder / 'x.png'} is a folder, not an image"], proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(folder / "a.png")]  # the good picture is still scored


def _shadow_open_clip(tmp_path, error: str):
    """A folder that, put first on PYTHONPATH, makes ``import open_clip`` raise ``error``: as if it were not
    installed (ImportError), or installed with a torchvision built for another torch (RuntimeError)."""
    shadow = tmp_path / f"shadow-{error.split('(')[0]}" / "open_clip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise {error}\n")
    return shadow.parent


def test_a_repository_without_config_is_built_from_open_clips_own_config_and_tag(clip_model, photos, tmp_path):
    """open_clip's ARCH/TAG names carry the architecture and preprocessing themselves: a hub copy holding only
    the weights is built from them (here a tiny architecture registered with open_clip under a new name)."""
    import open_clip
    import tiny

    from kcli.models.openclip import OpenCLIP, Source

    arch = tmp_path / "kcli-tiny-test-arch.json"
    arch.write_text(json.dumps({k: v for k, v in tiny.OPEN_CLIP_CONFIG["model_cfg"].items() if k != "quick_gelu"}))
    open_clip.add_model_config(arch)
    weights_only = tmp_path / "snapshot"
    weights_only.mkdir()
    (weights_only / "open_clip_model.safetensors").symlink_to(clip_model / "open_clip_model.safetensors")
    tag = {**tiny.OPEN_CLIP_CONFIG["preprocess_cfg"], "quick_gelu": True}
    clip = OpenCLIP.load(Source("kcli-tiny-test-arch/x", arch="kcli-tiny-test-arch", tag_config=tag), weights_only)
    image = Image.open(photos / "b.jpg").convert("RGB")
    ours = float((clip.images([image]) * clip.texts(["a blue circle"])).sum())
    assert abs(ours - by_hand(clip_model, photos / "b.jpg", "a blue circle")) < 1e-5
    wrong = OpenCLIP.load(Source("kcli-tiny-test-arch/x", arch="kcli-tiny-test-arch", tag_config={}), weights_only)
    assert abs(float((wrong.images([image]) * wrong.texts(["a blue circle"])).sum()) - ours) > 1e-4  # GELU matters
