"""``--dry-run`` and ``--vram``: the memory plan from configs alone, never a weight read; a plan that fits
nowhere ends before any work in one line with its numbers; the zero embedding is made before the decoder
loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kcli.cli import app
from kcli.errors import KandinskyError
from kcli.pipelines import memory
from kcli.pipelines.memtrack import GiB
from kcli.pipelines.settings import Loading

CONFIGS = Path(__file__).parent / "data" / "configs"
LAYOUT = {  # the real 2.2 checkpoints' configs, where a diffusers-layout folder keeps them
    "prior": {"prior/config.json": "kandinsky-2-2-prior.prior.json",
              "text_encoder/config.json": "kandinsky-2-2-prior.text_encoder.json",
              "image_encoder/config.json": "kandinsky-2-2-prior.image_encoder.json",
              "scheduler/scheduler_config.json": "prior.scheduler.json"},
    "decoder": {"unet/config.json": "kandinsky-2-2-decoder.unet.json", "movq/config.json": "movq.json",
                "scheduler/scheduler_config.json": "kandinsky-2-2-decoder-inpaint.scheduler.json"},
}
GARBAGE = ("prior/model.safetensors", "image_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> dict:
    """Full-size 2.2 checkpoint folders with their real configs, whose weights are garbage or absent: reading
    any of them fails."""
    root = tmp_path_factory.mktemp("configs-only")
    for part, files in LAYOUT.items():
        for dest, src in files.items():
            (root / part / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CONFIGS / src, root / part / dest)
    for name in GARBAGE:
        part = "prior" if not name.startswith("unet") else "decoder"
        (root / part / name).write_bytes(b"not a safetensors file" * 100)
    return {"prior": root / "prior", "decoder": root / "decoder"}


def cli(full_size, *args):
    result = CliRunner().invoke(app, ["generate", "a corgi", "--prior", str(full_size["prior"]), "--decoder",
                                      str(full_size["decoder"]), "--dry-run", *map(str, args)], env={"COLUMNS": "200"})
    return result


def one_line(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_json_is_one_object_with_the_plan_and_no_weight_is_read(full_size, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "kcli", "generate", "a corgi", "--prior", str(full_size["prior"]),
                           "--decoder", str(full_size["decoder"]), "--dry-run", "--json", "--vram", "8GiB",
                           "-W", "1024", "-H", "768"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)  # the whole of stdout is one object
    assert set(plan) == {"memory", "offload", "tile", "dtype", "peak_bytes"} and set(plan["peak_bytes"]) == {
        "cold", "warm"}
    assert (plan["memory"], plan["offload"], plan["dtype"]) == ("high", "none", "fp16")  # CUDA's dtype, on any box
    assert plan["tile"] is True  # 1024 px wide: the MoVQ in tiles
    cold, warm = plan["peak_bytes"]["cold"], plan["peak_bytes"]["warm"]
    assert 5 * GiB < warm <= cold < 8 * GiB / 1.1  # every model of 2.2 in fp16, with the margin, in 8 GiB
    assert list(tmp_path.iterdir()) == []  # no image, nothing written


def test_text_names_the_level_offload_tiles_and_peaks(full_size):
    result = cli(full_size, "--vram", "3GiB", "-W", "1024", "-H", "768")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["memory"].split()[0] == "low" and "3.0 GiB given by --vram" in lines["memory"]
    assert lines["offload"].strip() == "sequential" and lines["dtype"].strip() == "fp16"
    assert lines["size"].split()[0] == "1024x768" and lines["tile"].split()[0] == "yes"
    assert "GiB cold" in lines["peak"] and "GiB warm" in lines["peak"]


def test_auto_never_plans_beyond_the_vram_given(full_size):
    levels = []
    for vram in ("1GiB", "3000MB", "5G", "7.5GiB", "12GB"):
        result = cli(full_size, "--vram", vram, "--json")
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout)
        free = memory.parse_size(vram)
        assert plan["peak_bytes"]["cold"] * 1.1 + GiB / 4 <= free, (vram, plan)
        levels.append(plan["memory"])
    assert levels == ["min", "low", "balanced", "balanced", "high"]  # the highest that fits, for 512 px in fp16


def test_a_size_beyond_the_vram_ends_in_one_line_with_the_numbers(full_size):
    line = one_line(cli(full_size, "--vram", "600MB", "-W", "1024", "-H", "1024"))
    assert "1024x1024 image needs 0.82 GiB" in line and "0.56 GiB is available" in line, line
    assert "--memory min" in line  # not even the lowest level fits


@pytest.mark.parametrize("vram", ["8", "8 bananas", "-8GiB", "0GiB", "nanGB", "1e3GiB"])
def test_a_bad_vram_is_one_line(full_size, vram):
    assert "--vram" in one_line(cli(full_size, "--vram", vram))


def test_a_model_never_pulled_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["generate", "a corgi", "--dry-run", "--vram", "8GiB"])
    assert "not in the cache" in one_line(result)


def test_vram_sizes_parse_strictly():
    assert memory.parse_size("8GiB") == memory.parse_size("8G") == memory.parse_size("8 gib") == 8 * GiB
    assert memory.parse_size("8000MB") == 8 * 10**9 and memory.parse_size("1.5GiB") == 3 * GiB // 2
    for bad in ("8", "GiB", "8 GiB GiB", "8XB", "", "0.5KB"):
        with pytest.raises(KandinskyError, match="--vram"):
            memory.parse_size(bad)


# ---- the run's own plan (Kandinsky.open), for a CUDA device with --vram: no GPU is asked ----

CUDA = torch.device("cuda")


def test_open_ends_before_loading_when_no_level_fits(full_size):
    load = Loading(vram="500MB")
    with pytest.raises(KandinskyError, match="needs .* GiB of GPU memory at --memory min"):
        memory.plan_memory(load, CUDA, torch.float16, full_size["prior"], full_size["decoder"], [(1024, 1024)])
    # a batch plans for the largest size that fits; a larger job then ends alone, before its work
    choice = memory.plan_memory(Loading(vram="700MB"), CUDA, torch.float16, full_size["prior"], full_size["decoder"],
                                [(512, 512), (1024, 1024)])
    assert (choice.plan.width, choice.plan.height) == (512, 512) and choice.level == "min"
    memory.check_plan(choice, (512, 512))
    with pytest.raises(KandinskyError, match="1024x1024 image needs 0.82 GiB"):
        memory.check_plan(choice, (1024, 1024))


def test_compile_with_auto_falls_back_to_model_offload_with_a_note(full_size):
    notes = []

    class Events:
        def note(self, text):
            notes.append(text)

    args = (CUDA, torch.float16, full_size["prior"], full_size["decoder"], [(512, 512)])
    roomy = memory.plan_memory(Loading(vram="5GiB", compile=True), *args, events=Events())
    assert (roomy.level, roomy.offload) == ("balanced", "model") and not notes  # auto's own pick
    with pytest.raises(KandinskyError, match="--compile needs model offload"):  # only sequential fits 3 GiB
        memory.plan_memory(Loading(vram="3GiB", compile=True), *args, events=Events())
    assert notes and "sequential" in notes[0]
    asked = memory.plan_memory(Loading(vram="3GiB", compile=True, memory="low"), *args)
    assert asked.offload == "sequential"  # asked for by name: kept (and refused by open, as before)


def test_the_zero_embedding_is_made_before_the_decoder_loads(prior22, decoder22, monkeypatch, tmp_path):
    from kcli.loading import cache
    from kcli.pipelines import Kandinsky
    from kcli.pipelines.decoder import DecoderStage

    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path))  # nothing cached yet: a cold open
    seen = []
    load = DecoderStage.load.__func__

    def watch(cls, folder, **kwargs):
        seen.append(len(list((cache.home() / "zero_embeds").glob("*.safetensors"))))
        return load(cls, folder, **kwargs)

    monkeypatch.setattr(DecoderStage, "load", classmethod(watch))
    k = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")
    assert seen == [1]  # computed and cached before the decoder was loaded
    assert k.prior._image is None  # and the image encoder let go


def test_configs_the_models_cannot_take_are_one_line(full_size, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(full_size["decoder"], broken)
    unet = json.loads((broken / "unet" / "config.json").read_text())
    (broken / "unet" / "config.json").write_text(json.dumps({**unet, "block_out_channels": [384, -768, 1152, 1536]}))
    result = cli({"prior": full_size["prior"], "decoder": broken}, "--vram", "8GiB")
    line = one_line(result)  # the config's own range check names the field, before any planning
    assert "UNet config: block_out_channels" in line and "-768" in line, line
