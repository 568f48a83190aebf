"""The depth ControlNet through the command line: --hint, --init with --hint, --depth-from with a tiny depth
model served by the loopback hub, --save-hint, batches, metadata and --from, and every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import hubserver
import numpy as np
import oracle
import pytest
from PIL import Image
from test_cli import PROMPT, one_line_error, run
from test_controlnet import as_diffusers_hint, depth_map, reference

from kcli.pipelines import TextToImage

STEPS = ["--steps", 3, "--prior-steps", 2, "--device", "cpu"]


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def hints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hints")
    files = {}
    for name, (w, h, seed) in {"wide": (128, 64, 1), "square": (64, 64, 2)}.items():
        files[name] = folder / f"{name}.png"
        depth_map(w, h, seed).save(files[name])
    return files


def test_hint_text_to_image_equals_diffusers_and_is_recorded(prior22, controlnet22, reference22, hints, tmp_path):
    out = tmp_path / "out.png"
    proc = run("generate", PROMPT, "--hint", hints["wide"], "--seed", 1, "-W", 128, "-H", 64, "--prior", prior22,
               "--decoder", controlnet22, *STEPS, "-o", out)
    assert proc.returncode == 0, proc.stderr
    s = TextToImage(PROMPT, seed=1, width=128, height=64, steps=3, prior_steps=2)
    want = reference(reference22.prior_pipe, controlnet22, s, as_diffusers_hint(Image.open(hints["wide"])))
    oracle.assert_images_match(png(out), want)

    from kcli.pipelines import imagemeta as metadata
    from kcli.pipelines.files import file_sha256

    inputs = metadata.read(out)["inputs"]
    assert inputs == {"hint": str(hints["wide"].resolve()), "hint_sha256": file_sha256(hints["wide"])}

    again = run("generate", "--from", out, "-o", tmp_path / "again.png")  # --from brings the hint back
    assert again.returncode == 0, again.stderr
    assert np.array_equal(png(out), png(tmp_path / "again.png"))


def test_hint_with_init_equals_diffusers(prior22, controlnet22, reference22, hints, pictures, tmp_path):
    out = tmp_path / "out.png"
    proc = run("generate", PROMPT, "--init", pictures["square"], "--strength", 0.5, "--hint", hints["square"],
               "--seed", 4, "--prior", prior22, "--decoder", controlnet22, "--steps", 6, "--prior-steps", 2,
               "--device", "cpu", "-o", out)
    assert proc.returncode == 0, proc.stderr
    s = TextToImage(PROMPT, seed=4, width=64, height=64, steps=6, prior_steps=2)
    want = reference(reference22.prior_pipe, controlnet22, s, as_diffusers_hint(Image.open(hints["square"])),
                     init=Image.open(pictures["square"]).convert("RGB"), strength=0.5)
    oracle.assert_images_match(png(out), want)


def test_batch_hint_key(prior22, controlnet22, hints, pictures, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"prompt": "a cat", "hint": str(hints["square"]), "name": "one"},
        {"prompt": "a dog", "hint": str(pictures["broken"]), "name": "two"},
    ]))
    proc = run("generate", "--prompts-file", jobs, "--seed", 0, "-W", 64, "-H", 64, "--prior", prior22,
               "--decoder", controlnet22, *STEPS, "-o", tmp_path)
    assert proc.returncode == 1  # the broken hint fails its own job only, before the models load
    (saved,) = [p for p in map(Path, proc.stdout.split()) if p.suffix == ".png"]
    assert "cannot be read as an image" in proc.stderr and saved.exists()
    from kcli.pipelines import imagemeta as metadata

    assert metadata.read(saved)["inputs"]["hint"] == str(hints["square"].resolve())


@pytest.mark.parametrize("case,match", [
    ("not-a-picture", "hint .*broken.png cannot be read as an image"),
    ("no-controlnet", "a hint needs a depth ControlNet decoder"),
    ("no-hint", "this decoder is a depth ControlNet: it needs a hint picture"),
    ("both", "give --hint or --depth-from, not both"),
    ("save-alone", "--save-hint goes with --depth-from"),
    ("changed", "has changed since the image was made"),
])
def test_bad_input_is_one_line(prior22, decoder22, controlnet22, hints, pictures, tmp_path, case, match):
    import re
    import shutil

    base = ["generate", PROMPT, "--seed", 0, "-W", 64, "-H", 64, "--prior", prior22, *STEPS, "-o", tmp_path / "o.png"]
    args = {
        "not-a-picture": ["--hint", pictures["broken"], "--decoder", controlnet22],
        "no-controlnet": ["--hint", hints["square"], "--decoder", decoder22],
        "no-hint": ["--decoder", controlnet22],
        "both": ["--hint", hints["square"], "--depth-from", pictures["square"], "--decoder", controlnet22],
        "save-alone": ["--hint", hints["square"], "--save-hint", "--decoder", controlnet22],
    }.get(case)
    if case == "changed":  # --from with a hint file that is no longer the one recorded
        hint = tmp_path / "hint.png"
        shutil.copy(hints["square"], hint)
        made = run(*base, "--hint", hint, "--decoder", controlnet22, "--steps", 1)
        assert made.returncode == 0, made.stderr
        depth_map(64, 64, 9).save(hint)
        args, base = [], ["generate", "--from", tmp_path / "o.png", "-o", tmp_path / "p.png"]
    line = one_line_error(run(*base, *args))
    assert re.search(match, line), line


# ---- --depth-from ---------------------------------------------------------------------------------------


@pytest.fixture
def hub(depth_model, tmp_path, monkeypatch):
    with hubserver.HubServer(lifetime=240) as server:
        server.add("someone/tiny-dpt", depth_model)
        env = {"HF_ENDPOINT": server.url, "KANDINSKY_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_OFFLINE": "0"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        server.env = env
        yield server


def kandinsky(*args, env):
    return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **env}, timeout=300, check=False)


def test_depth_from_fetches_estimates_saves_and_replays_offline(prior22, controlnet22, pictures, hub, tmp_path):
    args = ["generate", PROMPT, "--depth-from", pictures["picture"], "--depth-model", "someone/tiny-dpt",
            "--save-hint", "--seed", 2, "-W", 128, "-H", 64, "--prior", prior22, "--decoder", controlnet22, *STEPS]
    proc = kandinsky(*args, "-o", tmp_path / "a.png", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert "downloading someone/tiny-dpt" in proc.stderr
    hint = Image.open(tmp_path / "a-hint.png")
    assert hint.mode == "L" and hint.size == Image.open(pictures["picture"]).size  # the photo's size
    assert np.ptp(np.asarray(hint)) == 255  # stretched to 0..255
    from kcli.pipelines import imagemeta as metadata

    inputs = metadata.read(tmp_path / "a.png")["inputs"]
    assert inputs["depth_model"] == "someone/tiny-dpt" and inputs["hint"] == str((tmp_path / "a-hint.png").resolve())

    hub.stop()  # from the cache, with nothing to reach: the same hint and the same image
    proc = kandinsky(*args, "--offline", "-o", tmp_path / "b.png", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a-hint.png").read_bytes() == (tmp_path / "b-hint.png").read_bytes()
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "b.png"))
    # the saved hint given back with --hint makes the same image
    proc = kandinsky(*args[:2], "--hint", tmp_path / "a-hint.png", *args[7:], "-o", tmp_path / "c.png", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(png(tmp_path / "a.png"), png(tmp_path / "c.png"))


def test_depth_estimator_equals_the_transformers_pipeline(depth_model, pictures):
    from transformers import DPTForDepthEstimation, pipeline
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    from kcli.pipelines.depth import DepthEstimator

    ours = DepthEstimator.load(str(depth_model), device="cpu")
    photo = Image.open(pictures["picture"])
    first, second = ours(photo), ours(photo)
    assert first.size == photo.size and np.array_equal(np.asarray(first), np.asarray(second))
    ref = pipeline("depth-estimation", model=DPTForDepthEstimation.from_pretrained(depth_model),
                   image_processor=DPTImageProcessorPil.from_pretrained(depth_model), device="cpu")
    want = np.asarray(ref(photo.convert("RGB"))["depth"]).astype(int)
    assert np.abs(np.asarray(first).astype(int) - want).max() <= 1


def test_depth_model_not_cached_offline_is_one_line(pictures, controlnet22, prior22, hub):
    proc = kandinsky("generate", PROMPT, "--depth-from", pictures["square"], "--depth-model", "someone/other-dpt",
                     "--offline", "--prior", prior22, "--decoder", controlnet22, *STEPS, env=hub.env)
    assert "someone/other-dpt is not in the cache" in one_line_error(proc)


def test_a_hint_picks_model_2_2_depth_and_its_depth_model_pulled_ahead(prior22, controlnet22, depth_model, pictures,
                                                                      hub, tmp_path):
    """No --model/--decoder: --depth-from selects the registry's 2.2-depth and its depth part, from the cache."""
    served = {"prior": hub.add("tiny/prior", prior22), "decoder": hub.add("tiny/controlnet", controlnet22),
              "depth": hub.repos["someone/tiny-dpt"]}
    registry = tmp_path / "registry.toml"
    registry.write_text(hubserver.registry_toml({"2.2-depth": served}))
    env = {**hub.env, "KANDINSKY_REGISTRY": str(registry)}
    proc = kandinsky("models", "pull", "2.2-depth", env=env)
    assert proc.returncode == 0, proc.stderr
    hub.stop()
    paths = kandinsky("models", "path", "2.2-depth", env=env)
    assert [line.split("\t")[0] for line in paths.stdout.splitlines()] == ["prior", "decoder", "depth"], paths.stderr
    out = tmp_path / "out.png"
    proc = kandinsky("generate", PROMPT, "--depth-from", pictures["square"], "--offline", "--seed", 1, "-W", 64,
                     "-H", 64, *STEPS, "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    from kcli.pipelines import imagemeta as metadata

    meta = metadata.read(out)
    assert meta["model"] == "2.2-depth" and meta["inputs"]["depth_model"] == "someone/tiny-dpt"
    line = one_line_error(kandinsky("generate", PROMPT, "--model", "2.2-depth", "--offline", *STEPS, env=env))
    assert "it needs a hint picture" in line
