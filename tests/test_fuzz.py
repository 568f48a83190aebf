"""Fuzzing the inputs a user or a hub controls (issue 15): checkpoint configs, prompts files, JSON lines,
metadata read by ``--from``, masks and hub listings, mutated by a seeded generator (so a failure repeats).

Every case must end in one of two ways: a one-line error with exit code 1 or 2, or finished images. Never a
traceback or "internal error", never a hang (each case has an alarm), never a file outside its place, never a
half-written file. The cases run in this process (CliRunner), the models of most cases opened once; about a
minute in all. Each test prints how many cases it ran (``pytest -s``).
"""

import json
import os
import random
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import replace

import hubserver
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from kcli.cli import app
from kcli.pipelines import imagemeta as metadata

CHEAP = ["--steps", "1", "--prior-steps", "1", "--device", "cpu", "--offline"]
SEED = 15  # the number: the same cases on every run
CASE_SECONDS = 60  # a case running longer than this is a hang


# ---- what may come back -------------------------------------------------------------------------------------

def junk(rng: random.Random, depth: int = 0):
    """A hostile JSON value: wrong types, out-of-range and non-finite numbers, hostile text; numbers that
    would be valid are small, so no case asks for hours of work that the limits allow."""
    kinds = ["int", "float", "text", "none", "bool", "list", "dict", "small"]
    kind = rng.choice(kinds if depth < 2 else kinds[:5])
    if kind == "int":
        return rng.choice([-1, 0, -(10**9), 10**9, 10**6, 2**63, 2**64, -(2**63), 10**30, 10001])
    if kind == "float":
        return rng.choice([float("nan"), float("inf"), -float("inf"), -0.5, 1e308, 1e-320, 0.0, 3.7])
    if kind == "text":
        return rng.choice(["", "ten", "NaN", "../../x", "/etc/passwd", "\x1b[31m", "\ud800", "a\x00b", "x" * 20000,
                           "猫", "1e9", "None", "{prompt}", "C:\\x", "2.2"])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "list":
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {rng.choice(["a", "prompt", "seed", ""]): junk(rng, depth + 1) for _ in range(rng.randint(0, 2))}
    return rng.choice([1, 2, 3, 32, 64, 65])


def dumps(value) -> str:
    return json.dumps(value, allow_nan=True, ensure_ascii=_needs_ascii(value))


def _needs_ascii(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:  # a lone surrogate: only as an escape
        return True


@contextmanager
def alarm(seconds: int = CASE_SECONDS):
    def ring(*_):
        raise TimeoutError(f"a fuzz case ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def files_under(folder) -> set:
    return {p for p in folder.rglob("*")} if folder.exists() else set()


class Cases:
    """Runs cases and checks every one ends well; counts them and what they ended in."""

    def __init__(self, name: str, workspace):
        self.name, self.workspace = name, workspace
        self.count, self.images, self.errors = 0, 0, 0

    def run(self, args: list, out, *, case: str, image_expected: bool = True, allowed=(), pictures: bool = True):
        """``kandinsky ARGS`` in this process; ``out`` is the only place it may write (besides ``allowed``);
        with ``pictures``, only whole PNG files."""
        before = files_under(self.workspace)
        with alarm():
            result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
        self.count += 1
        where = f"{self.name} case {self.count} ({case}): kandinsky {' '.join(map(str, args))[:300]}"
        stderr = result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            where, repr(result.exception), stderr)
        assert "Traceback" not in stderr and "internal error" not in stderr, (where, stderr)
        assert result.exit_code in (0, 1, 2), (where, result.exit_code, stderr)
        if os.environ.get("KCLI_FUZZ_VERBOSE"):
            print(where[:200], "->", result.exit_code, stderr.strip().splitlines()[-1:] if stderr.strip() else "")
        if result.exit_code != 0:
            assert any(line.startswith("error:") for line in stderr.splitlines()), (where, stderr)
            self.errors += 1
        made = [p for p in files_under(out) if p.is_file()] if pictures else []
        for path in made:  # whole pictures only: no .part file, nothing half-written
            assert not path.name.startswith(".") and path.suffix == ".png", (where, path)
            with Image.open(path) as image:
                image.load()
        new = {p for p in files_under(self.workspace) - before if p.is_file()}
        outside = [p for p in new if out not in p.parents and not any(a in p.parents for a in allowed)]
        assert not outside, (where, outside)
        if result.exit_code == 0 and image_expected:
            assert made, (where, stderr)
        self.images += len(made)
        shutil.rmtree(out, ignore_errors=True)
        return result

    def report(self):
        line = f"fuzz {self.name}: {self.count} cases, {self.errors} one-line errors, {self.images} images"
        print(line)
        sys.stdout.flush()


# ---- the models of most cases, opened once ---------------------------------------------------------------------

@pytest.fixture
def opened_once(monkeypatch):
    """``Kandinsky.open`` remembers what it opened for the same checkpoints and settings (what the cases change
    is the requests, not the models), so each case costs its sampling only."""
    from kcli.pipelines import kandinsky as module
    from kcli.pipelines.events import Relay

    real, cache = module.Kandinsky.open.__func__, {}

    def open_(cls, model=None, *, events=None, **settings):
        key = json.dumps([model, sorted((k, str(v)) for k, v in settings.items())])
        if key not in cache:
            cache[key] = real(cls, model, events=events, **settings)
        k = cache[key]
        k.events = Relay(events)
        return k

    monkeypatch.setattr(module.Kandinsky, "open", classmethod(open_))


@pytest.fixture
def workspace(tmp_path):
    square = tmp_path / "square.png"
    Image.new("RGB", (64, 64), (120, 40, 200)).save(square)
    return tmp_path


# ---- configs ---------------------------------------------------------------------------------------------------

CONFIGS = ["decoder/unet/config.json", "decoder/movq/config.json", "decoder/scheduler/scheduler_config.json",
           "prior/prior/config.json", "prior/text_encoder/config.json", "prior/scheduler/scheduler_config.json"]


def test_fuzz_checkpoint_configs(prior22, decoder22, workspace):
    rng = random.Random(SEED)
    models = workspace / "models"
    shutil.copytree(prior22, models / "prior")
    shutil.copytree(decoder22, models / "decoder")
    originals = {c: (models / c).read_bytes() for c in CONFIGS}
    cases = Cases("configs", workspace)
    for i in range(16):
        name = rng.choice(CONFIGS)
        path = models / name
        data = json.loads(originals[name])
        how = rng.choice(["value", "value", "value", "drop", "add", "bytes"])
        if how == "value":
            key = rng.choice(sorted(k for k in data if not k.startswith("_")))
            data[key] = junk(rng)
            path.write_text(dumps(data))
        elif how == "drop":
            data.pop(rng.choice(sorted(data)))
            path.write_text(dumps(data))
        elif how == "add":
            data[rng.choice(["num_layers", "layers_per_block", "x"])] = junk(rng)
            path.write_text(dumps(data))
        else:
            path.write_bytes(rng.choice([b"", b"\xff\xfe\x00", b"[1, 2]", b"{", originals[name][:20], b"null",
                                         b'{"a": NaN}' * 1000]))
        out = workspace / "out"
        cases.run(["generate", "a cat", "--prior", models / "prior", "--decoder", models / "decoder", *CHEAP,
                   "-W", 64, "-H", 64, "--seed", i, "-o", out], out, case=f"{how} in {name}")
        path.write_bytes(originals[name])
    cases.report()
    assert cases.count == 16


# ---- prompts files and JSON lines ------------------------------------------------------------------------------

JOB_KEYS = ["prompt", "negative", "seed", "width", "height", "steps", "prior_steps", "guidance", "prior_guidance",
            "num_images", "best_of", "sampler", "name", "hint", "unknown"]


def text_line(rng: random.Random) -> bytes:
    return rng.choice([
        b"a cat", b"", b"# a comment", b"\xff\xfe\xfd", b"a\x00cat", b"x" * 17000, "猫\u202e".encode(),
        b"\x1b[2J clear", b"{", b"[1, 2]", b'"just a string"', b"{}", b'{"prompt": "\\ud800"}',
        b"a line\rwith a return"])


def json_line(rng: random.Random) -> bytes:
    job = {"prompt": "a dog"} if rng.random() < 0.6 else {}
    for key in rng.sample(JOB_KEYS, rng.randint(1, 3)):
        job[key] = junk(rng)
    if rng.random() < 0.2:
        return dumps([job]).encode()
    return dumps(job).encode()


@pytest.mark.parametrize("kind", ["prompts", "jsonl"])
def test_fuzz_prompts_files_and_json_lines(prior22, decoder22, workspace, opened_once, kind):
    rng = random.Random(f"{SEED}-{kind}")
    cases = Cases(kind, workspace)
    make = text_line if kind == "prompts" else json_line
    for i in range(14):
        lines = [make(rng) for _ in range(rng.randint(1, 3))]
        jobs = workspace / "jobs.txt"
        jobs.write_bytes(b"\n".join(lines) + rng.choice([b"\n", b""]))
        out = workspace / "out"
        cases.run(["generate", "--prompts-file", jobs, "--prior", prior22, "--decoder", decoder22, *CHEAP,
                   "-W", 64, "-H", 64, "-o", out], out, case=repr(b" | ".join(lines)[:200]), image_expected=False)
    cases.report()
    assert cases.count == 14 and cases.errors and cases.images  # both endings were met


# ---- metadata read by --from ---------------------------------------------------------------------------------

def test_fuzz_from_metadata(prior22, decoder22, workspace, opened_once):
    rng = random.Random(f"{SEED}-from")
    made = workspace / "made.png"
    result = CliRunner().invoke(app, ["generate", "a cat", "--prior", str(prior22), "--decoder", str(decoder22),
                                      *CHEAP, "-W", "64", "-H", "64", "--seed", "1", "-o", str(made)])
    assert result.exit_code == 0, result.stderr
    original = metadata.read(made)
    cases = Cases("metadata", workspace)
    for i in range(16):
        meta = json.loads(json.dumps(original))
        how = rng.choice(["settings", "settings", "inputs", "load", "top", "drop", "text"])
        if how in ("settings", "inputs", "load"):
            section = meta.setdefault(how, {})
            key = rng.choice(sorted(section) + ["seed", "steps", "width", "guidance", "prompt", "model", "init"])
            section[key] = junk(rng)
        elif how == "top":
            meta[rng.choice(["settings", "load", "inputs", "format", "mode", "checkpoints"])] = junk(rng)
        elif how == "drop":
            meta.pop(rng.choice(sorted(meta)))
        text = rng.choice(["{", "[]", "null", "\"x\"", "{\"format\": 99}"]) if how == "text" else dumps(meta)
        forged = workspace / "forged.png"
        info = PngInfo()
        info.add_itxt(metadata.JSON_KEY, text)
        Image.new("RGB", (8, 8)).save(forged, pnginfo=info)
        out = workspace / "out"
        cases.run(["generate", "--from", forged, "--offline", "--device", "cpu", "-o", out / "again.png"], out,
                  case=f"{how}: {text[:200]}", allowed=(workspace / "made.png",))
        cases.run(["info", forged], out, case=f"info {how}", image_expected=False)
    cases.report()
    assert cases.count == 32


# ---- masks -------------------------------------------------------------------------------------------------------

def random_mask(rng: random.Random, path):
    import numpy as np

    how = rng.choice(["picture", "picture", "picture", "picture", "bytes", "folder", "truncated"])
    if how == "folder":
        path.mkdir()
        return how
    if how == "bytes":
        path.write_bytes(rng.choice([b"", b"not a picture", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30]))
        return how
    mode = rng.choice(["1", "L", "LA", "RGB", "RGBA", "P", "I;16", "I", "F"])
    width, height = rng.choice([1, 7, 64, 65, 200]), rng.choice([1, 3, 64, 100])
    fill = rng.choice(["zeros", "ones", "noise", "half", "half"])
    array = np.random.default_rng(rng.randint(0, 99)).integers(0, 256, (height, width)).astype(np.uint8)
    if fill in ("zeros", "ones"):
        array[:] = 0 if fill == "zeros" else 255
    elif fill == "half":
        array[:] = 0
        array[:, : max(1, width // 2)] = 255
    image = Image.fromarray(array, "L").convert(mode)
    image.save(path, format="TIFF" if mode in ("I", "F") else "PNG")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: max(8, path.stat().st_size // 2)])
    return f"{how} {mode} {width}x{height} {fill}"


def test_fuzz_masks(prior22, inpaint22, workspace, opened_once):
    rng = random.Random(f"{SEED}-masks")
    cases = Cases("masks", workspace)
    for i in range(12):
        mask = workspace / f"mask-{i}.png"
        case = random_mask(rng, mask)
        out = workspace / "out"
        args = ["inpaint", "a hat", "--image", workspace / "square.png", "--mask", mask, "--prior", prior22,
                "--decoder", inpaint22, *CHEAP, "--seed", i, "-o", out]
        if rng.random() < 0.3:
            args.append("--invert-mask")
        cases.run(args, out, case=case)
    cases.report()
    assert cases.count == 12 and cases.errors and cases.images


# ---- hub listings --------------------------------------------------------------------------------------------------

HOSTILE_PATHS = ["/tmp/kcli-fuzz-victim.json", "../escape.json", "a/../../escape.json", "", ".", "./x.json",
                 "x.json/", "a//b.json", "a\\..\\b.json", "x\x00y.json", "\x1b[31m.json", "猫.json", "." * 300,
                 "a/" * 200 + "x.json", ".git/config", "refs/main", "model_index.json", "blobs/x"]


def test_fuzz_hub_listings(workspace, monkeypatch, tmp_path_factory):
    import huggingface_hub.constants

    rng = random.Random(f"{SEED}-hub")
    source = tmp_path_factory.mktemp("fuzz-hub-source")
    (source / "model_index.json").write_text('{"_class_name": "x"}\n')
    (source / "sub").mkdir()
    (source / "sub" / "config.json").write_text('{"a": 1}\n')
    (source / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    home, hf = workspace / "home", workspace / "hf"
    cases = Cases("hub", workspace)
    with hubserver.HubServer(lifetime=240) as server:
        for k, v in {"HF_ENDPOINT": server.url, "KANDINSKY_HOME": str(home), "HF_HOME": str(hf),
                     "HF_HUB_OFFLINE": "0"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        for i in range(24):
            repo = server.add(f"fuzz/repo-{i}", source)
            how = rng.choice(["path", "path", "size", "oid", "lfs", "commit", "several"])
            for _ in range(3 if how == "several" else 1):
                what = how if how != "several" else rng.choice(["path", "size", "oid", "lfs", "commit"])
                name = rng.choice(sorted(repo.files))
                f = repo.files[name]
                if what == "path":
                    hostile = rng.choice(HOSTILE_PATHS)
                    repo.files[hostile] = replace(f, path=hostile)
                elif what == "size":
                    repo.files[name] = replace(f, size=rng.choice([-1, 0, f.size + 1, 10**15, "12", 1.5, None]))
                elif what == "oid":
                    value = rng.choice(["", "../../escape", "g" * 40, "0" * 64, "A" * 40, "/abs", "x" * 500])
                    repo.files[name] = replace(f, git_oid=value, sha256=value if rng.random() < 0.5 else f.sha256)
                elif what == "lfs":
                    repo.files[name] = replace(f, lfs=not f.lfs)
                else:
                    repo.commit = rng.choice(["../../../escape", "main", "0" * 39, "z" * 40, "/tmp/x", "a" * 41,
                                              "0" * 40 + "/x"])
            cases.run(["models", "pull", repo.id], home, case=how, image_expected=False, allowed=(hf,),
                      pictures=False)
            assert not os.path.exists("/tmp/kcli-fuzz-victim.json")
    cases.report()
    assert cases.count == 24 and cases.errors
