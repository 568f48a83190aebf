"""Input an adversarial user (or an accident) feeds the command line: each case ends in one line naming the
input, or in a finished image; never a traceback, unbounded memory, or a batch lost to one bad line."""

import time

from test_cli import one_line_error, run

TINY = ["--steps", 2, "--prior-steps", 2, "-W", 64, "-H", 64, "--device", "cpu"]


def test_an_endless_prompts_file_ends_at_once_in_one_line(prior22, decoder22, tmp_path):
    started = time.monotonic()
    proc = run("generate", "--prompts-file", "/dev/zero", "--prior", prior22, "--decoder", decoder22, *TINY,
               "-o", tmp_path)
    assert one_line_error(proc) == ("error: prompts file /dev/zero: line 1 is longer than 16 KiB (is it a text file "
                                    "of prompts?)")
    assert time.monotonic() - started < 60 and list(tmp_path.iterdir()) == []


def test_lines_that_are_not_text_fail_alone_and_the_batch_goes_on(prior22, decoder22, tmp_path):
    jobs = tmp_path / "jobs.txt"
    jobs.write_bytes(b'first\n{"prompt": "\\ud800 lone"}\n\xff\xfe not utf-8\nlast\n')
    out = tmp_path / "out"
    proc = run("generate", "--prompts-file", jobs, "--prior", prior22, "--decoder", decoder22, *TINY, "--seed", 1,
               "-o", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "line 2: the text holds a lone surrogate" in proc.stderr and "line 3: not UTF-8 text" in proc.stderr
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 2 and "first" in names[0] and "last" in names[1], names
