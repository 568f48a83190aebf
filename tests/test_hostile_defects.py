"""Issue 15's defects that the first pass left open, each through the command line (in process, for speed):
checkpoint configs out of range, ``--resume`` as an index, a decoder that gives NaN, decompression bombs in
``info``, ``--from`` with wrong types, a torchvision built for another torch, text from images escaped on the
terminal, preset paths, a full disk, batch summaries that keep errors whole."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from test_cli import run
from typer.testing import CliRunner

from kcli.cli import app
from kcli.pipelines import imagemeta as metadata

TINY = ["--steps", "2", "--prior-steps", "2", "-W", "64", "-H", "64", "--device", "cpu"]


def cli(*args, env=None):
    """``kandinsky ARGS`` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    return result.exit_code, result.stdout, result.stderr


def error_line(code, stderr) -> str:
    assert code in (1, 2), stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "internal error" not in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def made(prior22, decoder22, tmp_path_factory):
    """One image made by the tiny models, and its metadata."""
    path = tmp_path_factory.mktemp("made") / "cat.png"
    code, _, err = cli("generate", "a cat", "--prior", prior22, "--decoder", decoder22, *TINY, "--seed", 3,
                       "-o", path)
    assert code == 0, err
    return path, metadata.read(path)


def forge(path, meta, size=(8, 8)):
    """A picture carrying ``meta`` as its kandinsky metadata."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(metadata.JSON_KEY, json.dumps(meta))
    Image.new("RGB", size).save(path, pnginfo=info)
    return path


# ---- 3, 6: checkpoint configs out of range, before anything is built --------------------------------------

@pytest.mark.parametrize("part,edit,named", [
    ("unet", {"layers_per_block": 10**9}, "layers_per_block must be a whole number from 1 to 16, got 1000000000"),
    ("unet", {"block_out_channels": [32, -64]}, "block_out_channels must be a whole number from 1 to 8192"),
    ("unet", {"cross_attention_dim": "768"}, "cross_attention_dim must be a whole number from 1 to 16384, got '768'"),
    ("movq", {"latent_channels": -4}, "latent_channels must be a whole number from 1 to 64, got -4"),
    ("scheduler", {"num_train_timesteps": 0}, "num_train_timesteps must be a whole number from 2 to 100000, got 0"),
    ("scheduler", {"beta_end": "big"}, "beta_end must be a number from 1e-12 to 0.999, got 'big'"),
    ("prior/prior", {"num_layers": 10**9}, "num_layers must be a whole number from 1 to 256, got 1000000000"),
    ("prior/text_encoder", {"num_hidden_layers": 10**9}, "num_hidden_layers must be a whole number from 1 to 256"),
    ("prior/scheduler", {"num_train_timesteps": -1}, "num_train_timesteps must be a whole number from 2 to 100000"),
    ("unet", b"\xff\xfe not utf-8", "is not valid JSON (UnicodeDecodeError"),
], ids=["unet-layers", "unet-negative-channels", "unet-string", "movq-negative", "timesteps-0", "beta-string",
        "prior-layers", "clip-layers", "prior-timesteps", "non-utf8"])
def test_a_config_out_of_range_is_one_line_naming_the_file_and_the_field(prior22, decoder22, tmp_path, part, edit,
                                                                       named):
    prior, decoder = tmp_path / "prior", tmp_path / "decoder"
    shutil.copytree(prior22, prior)
    shutil.copytree(decoder22, decoder)
    root = prior if part.startswith("prior/") else decoder
    folder = root / part.removeprefix("prior/")
    config = folder / ("scheduler_config.json" if part.endswith("scheduler") else "config.json")
    if isinstance(edit, bytes):
        config.write_bytes(edit)
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), **edit}))
    code, _, err = cli("generate", "a cat", "--prior", prior, "--decoder", decoder, *TINY, "-o", tmp_path / "o.png")
    line = error_line(code, err)
    assert str(config) in line and named in line, line
    assert not (tmp_path / "o.png").exists()


# ---- 4: --resume is an index of the folder's metadata, matching every setting that shapes the image ----------

def test_resume_reads_a_big_folder_once_without_decoding_and_reruns_jobs_whose_settings_changed(
        made, prior22, decoder22, tmp_path, monkeypatch):
    from PIL import ImageFile

    from kcli.pipelines import resume

    _, meta = made
    out = tmp_path / "out"
    out.mkdir()
    for seed in range(200):  # 200 finished images of "a cat", seeds 0..199, as a long batch leaves them
        forge(out / f"cat-{seed}.png", {**meta, "settings": {**meta["settings"], "seed": seed}})
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(json.dumps({"prompt": "a cat", "seed": s}) + "\n" for s in range(200)))
    builds = []
    monkeypatch.setattr(resume.Index, "__init__", lambda self, folder, real=resume.Index.__init__: (
        builds.append(folder), real(self, folder))[1])
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    args = ["generate", "--prompts-file", jobs, "--prior", prior22, "--decoder", decoder22, *TINY, "-o", out,
            "--resume"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "200 skipped" in err and "loading models" not in err and builds == [out]
    monkeypatch.undo()

    changed = [{"guidance": 5.0}, {"sampler": "ddim"}, {"prior_steps": 3}, {"negative": "rain"}, {"width": 128},
               {"steps": 3}]
    jobs.write_text("".join(json.dumps({"prompt": "a cat", "seed": 7, **c}) + "\n" for c in changed)
                    + json.dumps({"prompt": "a cat", "seed": 8}) + "\n")
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert f"{len(changed)} ok, 1 skipped" in err, err
    assert len(stdout.split()) == len(changed)


def test_resume_does_not_skip_a_job_made_by_another_model(made, prior22, decoder22, tmp_path):
    from kcli.pipelines import TextToImage
    from kcli.pipelines.resume import Index

    path, _ = made
    shutil.copy(path, tmp_path / "cat.png")
    index = Index(tmp_path)
    request = TextToImage("a cat", seed=3, steps=2, prior_steps=2, width=64, height=64)
    same = {"prior": str(prior22), "decoder": str(decoder22)}
    assert index.find(request, same) == [tmp_path / "cat.png"]
    assert index.find(request, {**same, "decoder": "other/decoder"}) == [None]
    assert index.find(request, {**same, "dtype": "bf16"}) == [None]
    assert index.find(TextToImage("a cat", seed=3, steps=2, prior_steps=2), same) == [None]  # 512 by default
    assert index.find(TextToImage("a cat", seed=3, steps=2, prior_steps=2, width=64, height=64, num_images=2),
                      same) == [tmp_path / "cat.png", None]  # the second image is not there


def test_resume_of_a_job_with_some_images_there_makes_only_the_others_as_the_whole_run_would(
        prior22, decoder22, tmp_path):
    import numpy as np

    args = ["generate", "a cat", "-n", 4, "--seed", 10, "--name", "img-{index}-{seed}", "--prior", prior22,
            "--decoder", decoder22, *TINY]
    whole = tmp_path / "whole"
    code, _, err = cli(*args, "-o", whole)
    assert code == 0, err
    names = [f"img-{i}-{10 + i}.png" for i in range(4)]
    assert sorted(p.name for p in whole.iterdir()) == names

    def pixels(path):
        return np.asarray(Image.open(path))

    for kept in ([0, 1], [0, 2, 3]):  # stopped after two images; the second image deleted afterwards
        folder = tmp_path / "-".join(map(str, kept))
        folder.mkdir()
        for i in kept:
            shutil.copy(whole / names[i], folder / names[i])
        code, stdout, err = cli(*args, "-o", folder, "--resume")
        assert code == 0, err
        missing = [i for i in range(4) if i not in kept]
        assert stdout.split() == [str(folder / names[i]) for i in missing]  # only those were made
        assert sorted(p.name for p in folder.iterdir()) == names
        for i in missing:  # each as the whole run made it: its own seed, its own index in the name
            assert np.array_equal(pixels(folder / names[i]), pixels(whole / names[i])), names[i]
            assert metadata.read(folder / names[i])["settings"]["seed"] == 10 + i


# ---- 5: a NaN from the decoder ends the job and points at `models verify` ------------------------------------

def test_a_decoder_weight_file_gone_bad_in_place_ends_in_one_line_pointing_at_verify(prior22, decoder22, tmp_path):
    decoder = tmp_path / "decoder"
    shutil.copytree(decoder22, decoder)
    weights = decoder / "movq" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    size = weights.stat().st_size
    name = next(k for k in sorted(tensors) if k.startswith("decoder.conv_out") and k.endswith("weight"))
    tensors[name].fill_(float("nan"))  # same shapes, same size: only the numbers differ
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size
    code, _, err = cli("generate", "a cat", "--prior", prior22, "--decoder", decoder, *TINY, "-o", tmp_path / "o.png")
    line = error_line(code, err)
    assert "the decoded image holds NaN or infinite values" in line and "kandinsky models verify" in line
    assert not (tmp_path / "o.png").exists()


# ---- 6: decompression bombs in info (and score, in test_score.py) --------------------------------------------

def test_info_reads_a_huge_picture_without_decoding_it(made, tmp_path, monkeypatch):
    from PIL import ImageFile

    _, meta = made
    bomb = forge(tmp_path / "bomb.png", meta, size=(20000, 20000))  # 400 megapixels, a few hundred kB
    plain = tmp_path / "plain.png"
    Image.new("L", (20000, 20000)).save(plain)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    code, out, err = cli("info", bomb)
    assert code == 0 and "a cat" in out, err
    assert error_line(*cli("info", plain)[::2]) == f"error: {plain} carries no kandinsky metadata (was it made by " \
                                                    "kandinsky, and not re-saved?)"
    (tmp_path / "x.png").mkdir()
    assert error_line(*cli("info", tmp_path / "x.png")[::2]) == f"error: {tmp_path / 'x.png'} is a folder, not an image"


def test_a_limit_above_pils_own_lets_a_picture_that_large_through(tmp_path, monkeypatch):
    from kcli.errors import KandinskyError
    from kcli.pipelines.files import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # PIL's figure is back after the test
    big = tmp_path / "big.png"
    Image.new("1", (14000, 13000)).save(big)  # 182 megapixels: above the 179 PIL refuses by itself
    monkeypatch.setenv("KANDINSKY_MAX_PIXELS", "200000000")
    assert load_image(big, header_only=True) is None
    monkeypatch.setenv("KANDINSKY_MAX_PIXELS", "100000000")
    with pytest.raises(KandinskyError, match=r"is 14000x13000, 182 megapixels: above the limit of 100 "):
        load_image(big, header_only=True)


@pytest.mark.parametrize("command", ["vary", "inpaint-image", "inpaint-mask", "fuse", "outpaint"])
def test_a_bomb_given_to_any_command_is_refused_from_its_header(tmp_path_factory, tmp_path, command):
    bomb = tmp_path_factory.getbasetemp() / "bomb-10000.png"
    if not bomb.exists():
        Image.new("L", (10000, 10000)).save(bomb)  # 100 megapixels in a few hundred kB
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    args, what = {
        "vary": (["vary", bomb], "image"),
        "inpaint-image": (["inpaint", "a hat", "--image", bomb, "--mask", small], "image"),
        "inpaint-mask": (["inpaint", "a hat", "--image", small, "--mask", bomb], "mask"),
        "fuse": (["fuse", "a cat", bomb], "image"),
        "outpaint": (["outpaint", "more", "--image", bomb, "--expand", "all=64"], "image"),
    }[command]
    line = error_line(*cli(*args, "--offline", "-o", tmp_path / "o.png")[::2])
    assert line.startswith(f"error: {what} {bomb} is 10000x10000, 100 megapixels: above the limit"), line
    assert not (tmp_path / "o.png").exists()


# ---- 6: --from with wrong types ----------------------------------------------------------------------------

@pytest.mark.parametrize("edit,named", [
    (lambda m: m["settings"].update(steps="ten"), "the metadata's steps must be a whole number, got 'ten'"),
    (lambda m: m["settings"].update(guidance=[4]), "the metadata's guidance must be a number, got [4]"),
    (lambda m: m["settings"].update(guidance="NaN"), "the metadata's guidance must be a number, got 'NaN'"),
    (lambda m: m["settings"].update(prompt=3), "the metadata's prompt must be text, got 3"),
    (lambda m: m["settings"].update(width=1e9), "the metadata's width must be a whole number, got 1000000000.0"),
    (lambda m: m["settings"].pop("seed"), "the metadata has no seed (settings.seed)"),
    (lambda m: m.update(settings=["a cat"]), "the metadata's 'settings' must be an object, got ['a cat']"),
    (lambda m: m["load"].update(model=7), "the metadata's model must be text, got 7"),
], ids=["string-steps", "list-guidance", "string-nan", "number-prompt", "float-width", "no-seed", "list-settings",
        "number-model"])
def test_from_metadata_with_wrong_types_is_one_line_naming_the_field(made, tmp_path, edit, named):
    _, meta = made
    meta = json.loads(json.dumps(meta))
    edit(meta)
    forged = forge(tmp_path / "forged.png", meta)
    line = error_line(*cli("generate", "--from", forged, "-o", tmp_path / "o.png")[::2])
    assert line == f"error: --from {forged}: {named}"
    assert not (tmp_path / "o.png").exists()


# ---- 6: a torchvision built for another torch ------------------------------------------------------------

def test_a_broken_torchvision_is_hidden_from_transformers_and_doctor_names_the_fix(prior22, decoder22, tmp_path):
    shadow = tmp_path / "shadow" / "torchvision"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "300"}

    def kandinsky(*args):
        return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)

    proc = kandinsky("generate", "a cat", "--prior", prior22, "--decoder", decoder22, *TINY, "--seed", 3,
                     "-o", tmp_path / "o.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o.png").is_file()
    doctor = kandinsky("doctor")
    assert doctor.returncode == 0, doctor.stderr
    row = next(line for line in doctor.stdout.splitlines() if line.startswith("torchvision"))
    assert "operator torchvision::nms does not exist" in row and "pip uninstall torchvision" in row, row


# ---- 7: text from images is escaped on the terminal --------------------------------------------------------

def test_info_shows_control_characters_of_a_prompt_escaped(made, tmp_path):
    _, meta = made
    hostile = "\x1b[31mred\x1b]0;owned\x07 \u202eevil"
    forged = forge(tmp_path / "esc.png", {**meta, "settings": {**meta["settings"], "prompt": hostile}})
    proc = run("info", forged)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\u202e" not in proc.stdout
    assert "\\x1b[31mred\\x1b]0;owned\\x07 \\u202eevil" in proc.stdout


def test_info_json_escapes_c1_codes_and_direction_overrides_yet_reads_back_the_same(made, tmp_path):
    _, meta = made
    hostile = "ein Hund, 猫 \x9b31m\x1b[0m\x7f \u202eevil"  # C1 CSI, C0 ESC, DEL, a right-to-left override
    forged = forge(tmp_path / "esc.png", {**meta, "settings": {**meta["settings"], "prompt": hostile}})
    proc = run("info", forged, "--json")
    assert proc.returncode == 0, proc.stderr
    assert not any(c in proc.stdout for c in "\x9b\x1b\x7f\u202e") and "ein Hund, 猫" in proc.stdout
    assert json.loads(proc.stdout)["settings"]["prompt"] == hostile


def test_printable_keeps_text_and_escapes_controls():
    from kcli.cli.render import printable

    assert printable("ein Hund, 猫\nzweite Zeile\t!") == "ein Hund, 猫\nzweite Zeile\t!"
    assert printable("a\rb\x9bc\x00") == "a\\x0db\\x9bc\\x00"


# ---- 7: presets are names, not paths -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "ABSOLUTE", "sub/x", ".hidden", "fast.toml"])
def test_a_preset_that_is_a_path_is_refused(tmp_path, name):
    outside = tmp_path / "x.toml"
    outside.write_text("steps = 1\n")
    name = str(tmp_path / "x") if name == "ABSOLUTE" else name
    line = error_line(*cli("generate", "a cat", "--preset", name, "-o", tmp_path / "o.png")[::2])
    assert line.startswith(f"error: --preset {name!r}: a preset is a name from the presets folders, not a path")
    assert not (tmp_path / "o.png").exists()


# ---- 6: a full disk or a read-only folder ---------------------------------------------------------------------

@pytest.mark.parametrize("errno_,text", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_full_disk_or_read_only_folder_is_one_line_and_leaves_nothing(prior22, decoder22, tmp_path,
                                                                          monkeypatch, errno_, text):
    real_save = Image.Image.save

    def failing(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # half the work done, then the disk refuses
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(Image.Image, "save", failing)
    code, _, err = cli("generate", "a cat", "--prior", prior22, "--decoder", decoder22, *TINY, "-o", tmp_path)
    line = error_line(code, err)
    assert line.startswith(f"error: cannot write {tmp_path}/") and line.endswith(text), line
    assert list(tmp_path.iterdir()) == []


# ---- 7: batch summaries keep error messages whole -----------------------------------------------------------

def test_batch_summary_keeps_a_long_error_whole(prior22, decoder22, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text('{"prompt": "a", "no_such_setting_with_a_long_name": 1}\n')
    code, _, err = cli("generate", "--prompts-file", jobs, "--prior", prior22, "--decoder", decoder22, *TINY,
                       "-o", tmp_path / "out", env={"COLUMNS": "80"})
    assert code == 1
    message = err.split("error: ", 1)[1].split("\n")[0]
    assert len(message) > 120  # longer than a summary cell
    summary = err[err.index("batch"):]
    assert " ".join(message.split()) in " ".join(summary.split()), summary
