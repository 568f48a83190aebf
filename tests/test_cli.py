"""``kandinsky generate`` as a user runs it: a subprocess, a PNG out, exit codes and one-line errors."""

import os
import shutil
import subprocess
import sys

import numpy as np
import oracle
import pytest
import torch
from PIL import Image

PROMPT = "a corgi gliding on the wave"


def run(*args, cwd=None, home=None):
    """`kandinsky ARGS` in a subprocess, the way a shell runs it."""
    env = {**os.environ, "KANDINSKY_HOME": str(home or os.environ["KANDINSKY_HOME"]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def one_line_error(proc) -> str:
    """The single ``error:`` line of a failed run, which must not show a traceback."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("seed,width,height,negative,guidance", [
    (0, 64, 64, None, 4.0),
    (1, 128, 64, "low quality", 4.0),
    (2, 64, 128, None, 1.0),
    (5, 64, 64, "rain", 1.0),
])
def test_generate_png_equals_diffusers(prior22, decoder22, reference22, tmp_path, seed, width, height, negative,
                                       guidance):
    out = tmp_path / "out.png"
    args = ["generate", PROMPT, "--prior", prior22, "--decoder", decoder22, "--seed", seed, "-W", width,
            "-H", height, "--steps", 3, "--prior-steps", 2, "--guidance", guidance, "--prior-guidance", guidance,
            "-o", out, "--device", "cpu"]
    if negative:
        args += ["--negative", negative]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    ours = np.asarray(Image.open(out).convert("RGB"))
    ref = reference22(PROMPT, negative_prompt=negative, width=width, height=height, num_inference_steps=3,
                      prior_num_inference_steps=2, guidance_scale=guidance, prior_guidance_scale=guidance,
                      generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images
    oracle.assert_images_match(ours, oracle.as_uint8(ref)[0])


def test_several_images_get_a_file_each_and_random_seed_is_printed(prior22, decoder22, tmp_path):
    proc = run("generate", PROMPT, "--prior", prior22, "--decoder", decoder22, "--steps", 1, "--prior-steps", 2,
               "-W", 64, "-H", 64, "-n", 2, "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert len(paths) == 2 and all(os.path.isfile(p) for p in paths)
    seed = int(next(line for line in proc.stderr.splitlines() if line.startswith("seed:")).split()[1])
    assert paths[1].endswith(f"-{seed + 1}.png")


def test_existing_file_is_not_overwritten(prior22, decoder22, tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    proc = run("generate", PROMPT, "--prior", prior22, "--decoder", decoder22, "--seed", 1, "-o", out)
    assert "already exists" in one_line_error(proc)
    assert out.read_bytes() == b"precious"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage,expect", [
    ("missing-weights", "has no weights file"),
    ("corrupt-weights", "is corrupt or truncated"),
    ("missing-config", "config.json is missing"),
    ("not-a-folder", "is not a folder"),
    ("missing-folder", "does not exist"),
])
def test_broken_checkpoint_is_one_line_error(prior22, decoder22, tmp_path, damage, expect):
    decoder = tmp_path / "decoder"
    if damage == "not-a-folder":
        decoder.write_text("not a checkpoint")
    elif damage != "missing-folder":
        _copy(decoder22, decoder)
        weights = decoder / "unet" / "diffusion_pytorch_model.safetensors"
        if damage == "missing-weights":
            weights.unlink()
        elif damage == "corrupt-weights":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif damage == "missing-config":
            (decoder / "unet" / "config.json").unlink()
    out = tmp_path / "out.png"
    proc = run("generate", PROMPT, "--prior", prior22, "--decoder", decoder, "--seed", 0, "-W", 64, "-H", 64,
               "--steps", 1, "--prior-steps", 2, "-o", out)
    assert expect in one_line_error(proc)
    assert not out.exists() and not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("args,expect", [
    (["-W", 32], "width 32 is below this model's minimum of 64 pixels"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "GPU"),
    (["--dtype", "fp16", "--device", "cpu"], "fp16 on the CPU"),
    (["-o", "picture.gif"], "unsupported image type .gif"),
])
def test_bad_flags_are_one_line_errors(prior22, decoder22, tmp_path, args, expect):
    proc = run("generate", PROMPT, "--prior", prior22, "--decoder", decoder22, "--seed", 0, "--steps", 1,
               *args, cwd=tmp_path)
    assert expect in one_line_error(proc)
    assert not list(tmp_path.iterdir())


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from kcli.cli import app; "
            "r = CliRunner().invoke(app, ['generate', '--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
