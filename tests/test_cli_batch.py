"""The command line as people and scripts use it: batches, resume, metadata and replay, presets and config,
JSON output, Ctrl-C, start-up cost."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_cli import run

TINY = ["--steps", 2, "--prior-steps", 2, "-W", 64, "-H", 64, "--device", "cpu"]


@pytest.fixture
def models(prior22, decoder22):
    return ["--prior", prior22, "--decoder", decoder22]


def meta_of(path):
    return json.loads(Image.open(path).info["kandinsky"])


def run_stdin(text, *args, env=None):
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], input=text, capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_batch_from_stdin_loads_once_honours_overrides_and_survives_a_bad_line(models, tmp_path):
    lines = 'a lighthouse\n{"prompt": "a red cat", "seed": 7, "steps": 3, "negative": "rain"}\n{"prompt": 3}\n' \
            '{"prompt": "a castle", "width": 128}\n'
    proc = run_stdin(lines, "generate", "--prompts-file", "-", *models, *TINY, "-o", tmp_path)
    assert proc.returncode == 1, proc.stderr  # one job failed
    assert proc.stderr.count("loading models: done") == 1
    assert "line 3: prompt must be str" in proc.stderr and "3 ok, 1 failed" in proc.stderr
    files = proc.stdout.split()
    assert len(files) == 3 and all(os.path.isfile(f) for f in files)
    cat = meta_of(next(f for f in files if "red-cat" in f))["settings"]
    assert (cat["seed"], cat["steps"], cat["negative"]) == (7, 3, "rain")
    assert Image.open(next(f for f in files if "castle" in f)).size == (128, 64)

    again = run_stdin(lines, "generate", "--prompts-file", "-", *models, *TINY, "-o", tmp_path, "--resume")
    assert "3 skipped, 1 failed" in again.stderr and "loading models" not in again.stderr
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_json_output_is_one_object_per_image(models, tmp_path):
    proc = run("generate", "a cat", *models, *TINY, "-n", 2, "--seed", 4, "--json", "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seed"] for r in rows] == [4, 5] and all(os.path.isfile(r["path"]) for r in rows)
    assert {"sample", "decode"} <= set(rows[0]["timings"])
    assert "loading models" not in proc.stderr  # --json keeps the human progress out of the way


def test_info_shows_what_generate_wrote_and_from_reproduces_it(models, tmp_path):
    first = tmp_path / "first.png"
    proc = run("generate", "a [red] cat", *models, *TINY, "--seed", 11, "--negative", "rain [heavy]", "-o", first)
    assert proc.returncode == 0, proc.stderr
    info = run("info", first, "--json")
    meta = json.loads(info.stdout)
    assert meta == meta_of(first)
    assert meta["settings"]["prompt"] == "a [red] cat" and meta["settings"]["seed"] == 11
    text = run("info", first).stdout
    assert "a [red] cat" in text and "rain [heavy]" in text and "64x64" in text  # brackets are not markup
    assert "Seed: 11" in Image.open(first).info["parameters"]

    again = tmp_path / "again.png"
    proc = run("generate", "--from", first, "-o", again)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    changed = tmp_path / "changed.png"
    proc = run("generate", "--from", first, "--seed", 12, "-o", changed)
    assert meta_of(changed)["settings"]["seed"] == 12 and meta_of(changed)["settings"]["negative"] == "rain [heavy]"


def test_precedence_defaults_config_preset_flags(models, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('steps = 3\nprior_guidance = 2.0\nguidance = 5.0\n')
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.toml").write_text('steps = 4\nguidance = 6.0\n')
    env = {"KANDINSKY_CONFIG": str(config)}
    args = ["generate", "x", *models, "-W", 64, "-H", 64, "--prior-steps", 2, "--seed", 1]
    proc = run_stdin("", *args, "-o", tmp_path / "a.png", env=env)
    s = meta_of(tmp_path / "a.png")["settings"]
    assert (s["steps"], s["guidance"], s["prior_guidance"]) == (3, 5.0, 2.0), proc.stderr  # config over defaults
    run_stdin("", *args, "--preset", "mine", "-o", tmp_path / "b.png", env=env)
    s = meta_of(tmp_path / "b.png")["settings"]
    assert (s["steps"], s["guidance"], s["prior_guidance"]) == (4, 6.0, 2.0)  # preset over config
    run_stdin("", *args, "--preset", "mine", "--steps", 2, "-o", tmp_path / "c.png", env=env)
    assert meta_of(tmp_path / "c.png")["settings"]["steps"] == 2  # flags over everything


def test_unknown_preset_key_is_named(models, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "typo.toml").write_text("stpes = 10\n")
    proc = run_stdin("", "generate", "x", *models, "--preset", "typo", "-o", tmp_path / "x.png",
                     env={"KANDINSKY_CONFIG": str(config)})
    assert proc.returncode == 1 and "typo.toml: unknown key 'stpes'" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_templated_names_never_overwrite(models, tmp_path):
    for _ in range(2):
        proc = run("generate", "a cat", *models, *TINY, "--seed", 3, "--name", "{slug}-{seed}", "-o", tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a-cat-3-2.png", "a-cat-3.png"]
    bad = run("generate", "a cat", *models, "--name", "../{seed}", "-o", tmp_path)
    assert bad.returncode == 1 and "inside the output folder" in bad.stderr


def test_ctrl_c_keeps_finished_images_and_leaves_no_partial_file(models, tmp_path):
    lines = 'first\n{"prompt": "second", "steps": 999}\n'  # the longest schedule: still running at the signal
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kcli", "generate", "--prompts-file", "-", *map(str, models),
                             *map(str, TINY), "-o", str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(lines)
    proc.stdin.close()
    proc.stdin = None  # communicate() below must not touch it again
    deadline = time.time() + 120
    while not list(tmp_path.glob("*first*.png")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")] == []
    assert len(list(tmp_path.glob("*.png"))) == 1


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["info", "--help"], ["models", "--help"],
                                  ["score", "--help"], ["config", "path"]])
def test_start_up_does_not_import_torch(args):
    code = ("import sys; from typer.testing import CliRunner; from kcli.cli import app; "
            f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
