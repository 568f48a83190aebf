"""Input an adversarial user (or an accident) feeds the command line: each case ends in one line naming the
input, or in a finished image; never a traceback, unbounded memory, or a batch lost to one bad line."""

import time

import pytest
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


@pytest.mark.parametrize("args,message", [
    (["--guidance", "nan"], "guidance must be a finite number, got nan"),
    (["--prior-guidance", "inf"], "prior-guidance must be a finite number, got inf"),
    (["--guidance", "1e308"], "guidance must be at most 100, got 1e+308"),
    (["-W", "0"], "width must be at least 1, got 0"),
    (["-W", "100000"], "width must be at most 4096, got 100000"),
    (["--seed", str(2**63 - 1), "-n", "2"], f"seed {2**63 - 1} leaves no room for 2 images"),
    (["--steps", "1000"], "steps must be between 1 and 999 for this checkpoint's schedule, got 1000"),
], ids=["nan-guidance", "inf-prior-guidance", "huge-guidance", "zero-width", "huge-width", "seed-overflow",
        "steps-off-by-one"])
def test_numbers_out_of_range_end_in_one_line_before_any_image(prior22, decoder22, tmp_path, args, message):
    base = ["--prior", prior22, "--decoder", decoder22, "--steps", 2, "--prior-steps", 2, "--device", "cpu"]
    proc = run("generate", "a cat", *base, *args, "-o", tmp_path)
    assert message in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "guidance": NaN}', "guidance must be a finite number, got nan"),
    ('{"prompt": "a", "steps": 0}', "steps must be at least 1, got 0"),
    ('{"prompt": "a", "width": 1e9}', "width must be int"),
], ids=["nan", "zero-steps", "float-width"])
def test_a_batch_line_out_of_range_fails_alone(prior22, decoder22, tmp_path, line, message):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{line}\nfine\n")
    out = tmp_path / "out"
    proc = run("generate", "--prompts-file", jobs, "--prior", prior22, "--decoder", decoder22, *TINY, "-o", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert len(list(out.glob("*fine*.png"))) == 1


def test_fuse_weights_must_be_finite(prior22, decoder22, pictures, tmp_path):
    for weights, message in [("nan,1", "weights must be a finite number, got nan"),
                             ("1e308,1e308", "weights must be at most 1000000, got 1e+308")]:
        proc = run("fuse", "a cat", pictures["square"], "--weights", weights, "--prior", prior22, "--decoder",
                   decoder22, *TINY, "-o", tmp_path)
        assert message in one_line_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_from_metadata_with_nan_is_refused(prior22, decoder22, tmp_path):
    import json

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    made = run("generate", "a cat", "--prior", prior22, "--decoder", decoder22, *TINY, "--seed", 3,
               "-o", tmp_path / "a.png")
    assert made.returncode == 0, made.stderr
    image = Image.open(tmp_path / "a.png")
    meta = json.loads(image.info["kandinsky"])
    meta["settings"]["guidance"] = float("nan")
    info = PngInfo()
    info.add_text("kandinsky", json.dumps(meta))
    image.save(tmp_path / "forged.png", pnginfo=info)
    proc = run("generate", "--from", tmp_path / "forged.png", "-o", tmp_path / "out.png")
    assert "guidance must be a finite number, got nan" in one_line_error(proc)
    assert not (tmp_path / "out.png").exists()


def test_bounds_are_named_exactly():
    from kcli.errors import KandinskyError
    from kcli.pipelines.requests import TextToImage

    for kw, message in [(dict(seed=2**63), f"seed must be at most {2**63 - 1}, got {2**63}"),
                        (dict(num_images=10_001), "num-images must be at most 10000, got 10001")]:
        with pytest.raises(KandinskyError) as e:
            TextToImage("x", **kw).check()
        assert str(e.value) == message


def test_a_16_bit_grey_picture_is_read_as_its_8_bit_levels(prior22, decoder22, tmp_path):
    """PIL alone turns 16-bit grey into near-white; the same levels at 8 bits must give the same image."""
    import numpy as np
    from PIL import Image

    levels = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)  # a grey ramp, 0..252
    Image.fromarray(levels).save(tmp_path / "g8.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # white = 65535
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    outs = []
    for name in ("g8", "g16"):
        proc = run("generate", "a cat", "--init", tmp_path / f"{name}.png", "--strength", 0.5, "--seed", 4,
                   "--prior", prior22, "--decoder", decoder22, *TINY, "-o", tmp_path / f"out-{name}.png")
        assert proc.returncode == 0, proc.stderr
        outs.append(np.asarray(Image.open(tmp_path / f"out-{name}.png")))
    assert np.array_equal(*outs)


def test_a_16_bit_mask_repaints_where_it_is_white():
    import numpy as np
    from PIL import Image

    from kcli.pipelines.masks import repaint_mask

    mask = np.zeros((64, 128), np.uint16)
    mask[:, 64:] = 65535
    repaint = repaint_mask(Image.fromarray(mask), 128, 64)
    assert repaint[:, 64:].all() and not repaint[:, :64].any()


def test_a_picture_above_the_pixel_limit_is_refused_from_its_header(prior22, decoder22, tmp_path):
    from PIL import Image

    Image.new("L", (10000, 10000)).save(tmp_path / "huge.png")  # 100 megapixels in a few hundred kB
    proc = run("generate", "a cat", "--init", tmp_path / "huge.png", "--prior", prior22, "--decoder", decoder22,
               *TINY, "-o", tmp_path / "out.png")
    assert one_line_error(proc) == (f"error: --init image {tmp_path / 'huge.png'} is 10000x10000, 100 megapixels: "
                                    "above the limit of 64 (set KANDINSKY_MAX_PIXELS to allow more)")
    assert not (tmp_path / "out.png").exists()
