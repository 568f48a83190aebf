"""One declaration per setting: the command line's flags, the TOML keys of presets and the config, the JSON
Lines keys of batches and the metadata of images all come from kcli.pipelines.settings."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import typer
from typer.testing import CliRunner

from kcli.cli import app, config
from kcli.cli.flags import generating
from kcli.cli.fuse import Kinds
from kcli.cli.generate import Replay
from kcli.errors import KandinskyError
from kcli.pipelines import Loading, Output, Sampling, TextToImage, batch, settings
from kcli.pipelines.requests import REQUESTS
from kcli.pipelines.settings import read_back, record, setting

SCHEMA = {f.name for cls in (Loading, Sampling, Output, *REQUESTS, Replay, Kinds) for f in settings.settings_of(cls)}


# the one line a new setting takes (a ControlNet hint, say), on the request that uses it
@dataclass(frozen=True)
class Hinted(TextToImage):
    hint: Path | None = setting(None, "A depth map to follow.", job=True, recorded=True)


def test_a_setting_declared_once_is_a_flag_a_toml_key_a_jsonl_key_and_metadata(tmp_path):
    # 1. a flag of the command that makes the request, with its help
    made, demo = [], typer.Typer()
    demo.callback()(lambda: None)
    generating("hinted", Hinted, doc="Demo.", into=demo)(made.append)
    result = CliRunner().invoke(demo, ["hinted", "--help"])
    assert "--hint" in result.output and "A depth map to follow." in result.output
    result = CliRunner().invoke(demo, ["hinted", "a cat", "--hint", "depth.png"])
    assert result.exit_code == 0, result.output
    assert made[0]["hint"] == Path("depth.png") and "hint" in made[0].given

    # 2. a key of presets and the user config, with its type
    preset = tmp_path / "mine.toml"
    preset.write_text('hint = "depth.png"\nsteps = 3\n')
    assert config._read(preset, settings.file_keys(Hinted)) == {"hint": "depth.png", "steps": 3}
    try:
        config._read(preset, settings.file_keys())
        raise AssertionError("a key no request declares must be refused")
    except KandinskyError as e:
        assert "unknown key 'hint'" in str(e)

    # 3. a key of a batch's JSON lines
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(json.dumps({"prompt": "a cat", "hint": "d.png"}) + "\n")
    assert batch.read_jobs(str(lines), Hinted)[0].overrides == {"hint": "d.png"}
    assert "unknown key 'hint'" in batch.read_jobs(str(lines))[0].error

    # 4. written into the image's metadata, and read back by --from
    meta = record(Hinted("a cat", hint=Path("d.png"), seed=3))
    assert meta["inputs"]["hint"] == str(Path("d.png").resolve()) and meta["settings"]["seed"] == 3
    assert read_back(meta, Hinted)["hint"] == str(Path("d.png").resolve())


def test_every_flag_of_every_generating_command_is_a_declared_setting():
    group = typer.main.get_command(app)
    for name in sorted(settings.GENERATING):
        command = group.commands[name]
        names = {p.name for p in command.params if p.name != "help"}
        assert names and names <= SCHEMA, (name, names - SCHEMA)


def test_every_toml_key_jsonl_key_and_metadata_key_is_a_declared_setting():
    assert set(config.SETTING_TYPES) <= SCHEMA
    assert set(settings.job_keys(*REQUESTS)) <= SCHEMA
    for cls in REQUESTS:
        kwargs = {"items": ("a cat",)} if cls.__name__ == "Fuse" else {}
        meta = record(cls(**kwargs))
        assert set(meta["settings"]) | set(meta["inputs"]) <= SCHEMA, cls


def test_settings_are_typed_dataclass_fields_with_help():
    for cls in (Loading, Sampling, Output, *REQUESTS):
        for f in settings.settings_of(cls):
            spec = settings.spec_of(f)
            assert spec.help.strip().endswith((".", ")")), f.name
            assert settings.base_type(f.type) in (str, int, float, bool, Path, tuple), (cls, f.name, f.type)
    assert dataclasses.is_dataclass(TextToImage) and TextToImage("x").steps == 100  # the reference's defaults
