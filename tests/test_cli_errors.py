"""Bad input to the creative modes: a non-zero exit, one line naming the problem, no output file.

These fail before any model is loaded, so they run in-process through Typer's runner.
"""

import pytest
from typer.testing import CliRunner

from kcli.cli import app

CASES = {
    "missing image": (["generate", "x", "--init", "{nothere}"], "does not exist"),
    "unreadable image": (["generate", "x", "--init", "{broken}"], "cannot be read as an image"),
    "strength 0": (["generate", "x", "--init", "{square}", "--strength", "0"], "strength must be in (0, 1]"),
    "strength above 1": (["generate", "x", "--init", "{square}", "--strength", "1.5"], "strength must be in (0, 1]"),
    "missing mask": (["inpaint", "x", "--image", "{picture}", "--mask", "{nothere}"], "mask"),
    "mask all black": (["inpaint", "x", "--image", "{picture}", "--mask", "{black}"], "all black"),
    "mask all white": (["inpaint", "x", "--image", "{picture}", "--mask", "{white}"], "all white"),
    "weights count": (["fuse", "a cat", "{square}", "--weights", "1,2,3"], "3 value(s) for 2 item(s)"),
    "negative weights": (["fuse", "a cat", "{square}", "--weights", "1,-1"], "must not be negative"),
    "zero-sum weights": (["fuse", "a cat", "a dog", "--weights", "0,0"], "add up to 0"),
    "expand of 0": (["outpaint", "x", "--image", "{picture}", "--expand", "all=0"], "grows no side"),
    "missing fuse image": (["fuse", "a cat", "{nothere}"], "does not exist"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, pictures, tmp_path):
    args, expect = CASES[name]
    files = {**{k: str(v) for k, v in pictures.items()}, "nothere": str(tmp_path / "missing.png")}
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [a.format(**files) for a in args] + ["-o", str(out), "--offline"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
