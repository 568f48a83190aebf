"""The command line as a new user meets it: each defect found that way, and its fix (issue 13)."""

import io
import re
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kcli.cli import app
from kcli.cli.display import Display
from kcli.cli.output import FIELDS, render_name


class FakeResult:
    def __init__(self, seed, score=None):
        from PIL import Image

        from kcli.pipelines import TextToImage

        self.seed, self.score, self.image = seed, score, Image.new("RGB", (8, 8))
        self.request, self.timings, self.metadata = TextToImage("a cat"), {"sample": 1.0, "decode": 0.5}, {}


def drawn(terminal: bool, events) -> str:
    """What a Display draws on stderr for ``events`` (and what it leaves on stdout)."""
    display = Display()
    display.console = Console(file=io.StringIO(), force_terminal=terminal, width=160)
    display.live = display.quiet is False and terminal
    display.stdout_live = display.live
    with display:
        events(display)
    return display.console.file.getvalue()


def two_images(d):
    d.progress("load", 0, 2)
    d.progress("load", 2, 2)
    for i, seed in enumerate((7, 8)):
        d.image(i + 1, 2, seed)
        for stage, n in (("prior", 2), ("decoder", 3), ("decode", 1)):
            d.progress(stage, 0, n)
            d.progress(stage, n, n)
        d.saved(f"out/cat-{seed}.png", FakeResult(seed))


def test_terminal_keeps_the_bars_and_ends_with_every_path_seed_and_time(monkeypatch):
    stdout = Console(file=io.StringIO(), width=160)
    monkeypatch.setattr("kcli.cli.display.out_console", lambda: stdout)
    frame = drawn(True, two_images).rsplit("\x1b[1A\x1b[2K", 1)[-1]  # what stays on screen: the last frame
    assert frame.count("loading models") == 1
    assert "[2/2] decoder" in frame and "[2/2] MoVQ decode" in frame and "1/1" in frame
    summary = stdout.file.getvalue()  # after the bars, nothing redraws over it
    rows = [line.split() for line in summary.splitlines()]
    assert rows[0] == ["saved", "seed", "s"] and rows[1:] == [["out/cat-7.png", "7", "1.5"], ["out/cat-8.png", "8", "1.5"]]


def test_piped_progress_is_one_line_per_stage_with_steps_rate_and_seconds():
    lines = drawn(False, two_images).splitlines()
    assert sum("loading models: done in" in line for line in lines) == 1
    stage = re.compile(r"^\[2/2\] decoder: 3 steps, \d+\.\d\d (it/s|s/it), \d+\.\d s$")
    assert any(stage.match(line) for line in lines), lines
    assert any(line.startswith("[1/2] MoVQ decode: ") and line.endswith(" s") for line in lines)


def test_best_of_names_the_candidate_it_is_on():
    def candidates(d):
        for j in range(3):
            d.image(1, 1, 10 + j, (j + 1, 3))
            d.progress("decoder", 0, 2)
            d.progress("decoder", 2, 2)

    text = drawn(False, candidates)
    assert "candidate 2/3 (seed 11) decoder: 2 steps" in text and "candidate 3/3 (seed 12)" in text


def test_name_help_offers_exactly_the_fields_that_work():
    out = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "300"}).output
    offered = re.findall(r"\{(\w+)\}", out[out.index("--name"):].split("\n")[0])
    assert "model" not in offered and set(offered) == set(FIELDS)
    for name in FIELDS:
        assert render_name(f"{{{name}}}", "a cat", 3, 0)


def test_score_install_hint_names_a_command_that_works(monkeypatch):
    from kcli.errors import KandinskyError
    from kcli.models.openclip import import_open_clip

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if it were not installed
    with pytest.raises(KandinskyError) as e:
        import_open_clip()
    assert 'pip install -e ".[score]"' in str(e.value) and "kandinsky-cli" not in str(e.value)
    assert "kandinsky-cli" not in CliRunner().invoke(app, ["score", "--help"]).output


@pytest.mark.parametrize("command", ["fuse", "vary"])
def test_fuse_and_vary_offer_no_batch_flags(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--prompts-file" not in out and "--resume" not in out
    result = CliRunner().invoke(app, [command, "x.png", "--resume"])
    assert result.exit_code == 2 and "No such option" in result.output + (result.stderr or "")


def test_vary_help_says_what_vary_does():
    out = CliRunner().invoke(app, ["vary", "--help"], env={"COLUMNS": "200"}).output
    width = out[out.index("--width"):].split("\n")[0]
    assert "512" in width and "input" not in width and "--init" not in width
    assert "per prompt" not in out


def test_strength_without_init_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["generate", "a cat", "--strength", "0.5", "--offline", "-o",
                                      str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "error: --strength needs --init" in result.stderr and not (tmp_path / "x.png").exists()


def test_doctor_names_the_memory_level_once_and_reports_the_hub():
    out = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"}).output
    assert "memory mode memory" not in out and "memory memory" not in out
    assert re.search(r"--memory auto\s+(high|balanced|low|min): offload", out), out
    assert re.search(r"^hub\s+https?://", out, re.MULTILINE), out
