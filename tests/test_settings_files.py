"""Presets, the user config, prompts files and image metadata: parsing, precedence, errors."""

import pytest
from PIL import Image

from kcli.cli import config
from kcli.errors import KandinskyError
from kcli.pipelines import batch
from kcli.pipelines import imagemeta as metadata


def test_shipped_presets_parse_and_use_known_keys():
    assert {"default", "fast", "quality", "lowvram"} <= set(config.preset_names())
    for name in config.preset_names():
        assert config.load_preset(name)
    assert config.load_preset("fast")["sampler"] == "dpm++2m"


def test_preset_wins_over_config_and_config_names_a_default_preset(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('steps = 33\nwidth = 640\npreset = "fast"\n')
    monkeypatch.setenv("KANDINSKY_CONFIG", str(cfg))
    settings, name = config.layered(None)
    assert name == "fast" and settings["steps"] == 25 and settings["width"] == 640
    settings, name = config.layered("quality")
    assert name == "quality" and settings["steps"] == 50 and settings["width"] == 768


@pytest.mark.parametrize("text,expect", [
    ("stepz = 3\n", "unknown key 'stepz'"),
    ("steps = 'many'\n", "steps must be int"),
    ("steps = = 3\n", "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, monkeypatch, text, expect):
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    monkeypatch.setenv("KANDINSKY_CONFIG", str(cfg))
    with pytest.raises(KandinskyError, match=expect):
        config.layered(None)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KandinskyError, match="unknown preset 'fastest'.*fast"):
        config.load_preset("fastest")


def test_prompts_file_plain_and_jsonl_lines(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text('a lighthouse\n\n# a comment\n{"prompt": "a cat", "seed": 7, "guidance": 5}\n'
                 '{"prompt": "x", "colour": "red"}\n{broken\n')
    jobs = batch.read_jobs(str(f))
    assert [j.prompt for j in jobs[:2]] == ["a lighthouse", "a cat"]
    assert jobs[1].overrides == {"seed": 7, "guidance": 5.0} and jobs[1].line == 4
    assert "unknown key 'colour'" in jobs[2].error and "line 6: not valid JSON" in jobs[3].error


def test_metadata_round_trip_in_every_format(tmp_path):
    meta = {"mode": "generate", "model": "2.2", "sampler": "ddpm", "versions": {"kandinsky": "0"},
            "settings": {"prompt": "кот", "negative": "rain", "seed": 3, "width": 64, "height": 64, "steps": 4,
                         "prior_steps": 2, "guidance": 4.0, "prior_guidance": 4.0}}
    for suffix in (".png", ".jpg", ".webp"):
        path = tmp_path / f"m{suffix}"
        Image.new("RGB", (8, 8)).save(path, **metadata.save_kwargs(path, meta))
        assert metadata.read(path) == {"format": metadata.FORMAT, **meta}
    text = metadata.parameters(tmp_path / "m.png")
    assert text.splitlines()[:2] == ["кот", "Negative prompt: rain"]
    assert "Steps: 4, Sampler: ddpm, CFG scale: 4.0, Seed: 3, Size: 64x64" in text


def test_metadata_missing_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(KandinskyError, match="carries no kandinsky metadata"):
        metadata.read(tmp_path / "plain.png")
    with pytest.raises(KandinskyError, match="does not exist"):
        metadata.read(tmp_path / "none.png")
