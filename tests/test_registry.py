"""weights/registry.toml: the known models, checked against what the hub showed (tests/data/hub_listing.json),
the parser's refusals, and that the file ships with the package."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kcli.loading import registry as reg
from kcli.loading.download import human_size

ROOT = Path(__file__).parents[1]
LISTING = json.loads((Path(__file__).parent / "data" / "hub_listing.json").read_text())["repos"]


@pytest.fixture(autouse=True)
def _builtin_registry(monkeypatch):
    monkeypatch.delenv(reg.ENV, raising=False)


def builtin() -> reg.Registry:
    return reg.load_registry(ROOT / "weights" / "registry.toml")


def all_repos() -> dict[str, reg.RepoSpec]:
    return {r.id: r for m in builtin().models.values() for r in m.repos()}


def test_known_models_and_their_repositories():
    r = builtin()
    assert r.default == "2.2" and list(r.models) == ["2.2", "2.1", "2.2-depth"]
    ids = {name: (m.prior.id, m.decoder.id, m.inpaint and m.inpaint.id) for name, m in r.models.items()}
    org = "kandinsky-community/"
    assert ids == {
        "2.2": (org + "kandinsky-2-2-prior", org + "kandinsky-2-2-decoder", org + "kandinsky-2-2-decoder-inpaint"),
        "2.1": (org + "kandinsky-2-1-prior", org + "kandinsky-2-1", org + "kandinsky-2-1-inpaint"),
        "2.2-depth": (org + "kandinsky-2-2-prior", org + "kandinsky-2-2-controlnet-depth", None),
    }
    assert r.get("2.2-depth").repos(inpaint=False) == (r.get("2.2").prior, r.get("2.2-depth").decoder)
    assert r.get("2.2-depth").depth.id == "Intel/dpt-large" and r.get("2.2").depth is None


def test_hub_defaults_are_the_registry_default():
    from kcli.loading import hub

    m = builtin().get("2.2")
    assert (hub.DEFAULT_PRIOR, hub.DEFAULT_DECODER, hub.DEFAULT_INPAINT_DECODER) == (m.prior.id, m.decoder.id,
                                                                                      m.inpaint.id)


def test_registry_is_found_from_the_source_tree():
    assert reg.registry_path() == ROOT / "weights" / "registry.toml"


@pytest.mark.parametrize("repo_id", sorted(LISTING))
def test_registry_matches_the_recorded_hub_listing(repo_id):
    """Repositories, revisions, file paths, sizes and sha256 exactly as recorded from the hub: a typo fails."""
    repo = all_repos()[repo_id]
    seen = LISTING[repo_id]
    assert repo.revision == seen["revision"]
    wanted = {p: f for p, f in seen["files"].items() if not f.get("pickle")}
    assert [f.path for f in repo.files] == list(wanted), "the registry must list exactly the non-pickle files"
    for spec in repo.files:
        rec = wanted[spec.path]
        assert spec.size == rec["size"], f"{spec.path}: size {spec.size}, the hub showed {rec['size']}"
        assert spec.sha256 == rec.get("lfs_sha256"), f"{spec.path}: sha256"


@pytest.mark.parametrize("repo_id", sorted(LISTING))
def test_recorded_listing_is_self_consistent(repo_id):
    seen = LISTING[repo_id]
    assert re.fullmatch(r"[0-9a-f]{40}", seen["revision"]) and seen["revision_source"].startswith("https://")
    for path, rec in seen["files"].items():
        if rec["size"] is not None and rec["shown"] is not None:  # the exact size rounds to what the hub showed
            assert human_size(rec["size"]) == rec["shown"].replace(" Bytes", " B"), path
        if rec.get("lfs_sha256"):  # an LFS blob page shows the sha256 beside a rounded size only; where no hub
            # page was seen (2.2-depth's repositories), a third-party manifest gives it with the exact size
            seen_with = rec["shown"] or (rec["size"] and rec["source"].endswith("manifest.json"))
            assert re.fullmatch(r"[0-9a-f]{64}", rec["lfs_sha256"]) and seen_with, path
        if rec["size"] is not None or rec.get("lfs_sha256"):
            assert rec["source"], f"{path}: a recorded value needs its source"
        if rec.get("pickle"):  # every pickled copy has a safetensors sibling that is fetched instead
            stem = path.rsplit("/", 1)[0] + "/"
            assert any(p.startswith(stem) and p.endswith(".safetensors") for p in seen["files"]), path


def test_weights_are_safetensors_and_every_component_has_them():
    for repo in all_repos().values():
        if "config.json" in {f.path for f in repo.files}:  # a transformers model: one folder
            assert any(f.path.endswith(".safetensors") and "/" not in f.path for f in repo.files), repo.id
            continue
        folders = {f.path.split("/")[0] for f in repo.files if "/" in f.path}
        for folder in folders - {"tokenizer", "scheduler", "image_processor"}:
            names = {f.path for f in repo.files if f.path.startswith(folder + "/")}
            assert f"{folder}/config.json" in names, (repo.id, folder)
            assert any(n.endswith(".safetensors") for n in names), (repo.id, folder)
        assert "model_index.json" in {f.path for f in repo.files}


def test_known_download_sizes():
    r = builtin()
    assert human_size(r.get("2.2").prior.known_size) == "10.6 GB"  # the three weights files
    assert human_size(sum(x.known_size for x in r.get("2.2").repos(inpaint=False))) == "15.9 GB"
    assert human_size(sum(x.known_size for x in r.get("2.2-depth").repos(inpaint=False))) == "15.9 GB"
    assert human_size(sum(x.known_size for x in r.get("2.2-depth").repos())) == "17.2 GB"  # with the depth model
    assert r.get("2.2-depth").decoder.known_size == 5_285_182_263  # every file's exact size is known
    assert r.get("2.2-depth").decoder.sizes_complete


def test_a_model_without_an_inpainting_decoder_says_so(monkeypatch):
    from kcli.errors import KandinskyError
    from kcli.loading import hub

    with pytest.raises(KandinskyError, match="model 2.2-depth has no inpainting decoder: use --model 2.2"):
        hub.resolve_checkpoints("2.2-depth", inpainting=True, offline=True)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["repos"]["o/p"]["files"].append({"path": "unet/diffusion_pytorch_model.bin"}), "pickle"),
    (lambda d: d["repos"]["o/p"].update(revision="main"), "40-digit commit"),
    (lambda d: d["repos"]["o/p"]["files"][1].update(sha256="abc"), "64 hex"),
    (lambda d: d["repos"]["o/p"]["files"][1].update(size=-1), "byte count"),
    (lambda d: d["repos"]["o/p"]["files"].append({"path": "unet/diffusion_pytorch_model.fp16.safetensors"}),
     "fp32 and the fp16"),
    (lambda d: d["repos"]["o/p"]["files"].append({"path": "../x"}), "bad or repeated"),
    (lambda d: d["repos"]["o/p"]["files"].append({"path": "model_index.json"}), "bad or repeated"),
    (lambda d: d["models"]["m"].update(inpaint="o/missing"), "no [repos] entry"),
    (lambda d: d["models"]["m"].pop("decoder"), "model m has no decoder repository"),
    (lambda d: d["models"]["m"].pop("inpaint") and d["models"]["m"].pop("prior"), "model m has no prior"),
    (lambda d: d.update(default="nope"), "default model"),
])
def test_parser_refuses_what_a_typo_breaks(edit, message):
    data = {"default": "m", "models": {"m": {"prior": "o/p", "decoder": "o/p", "inpaint": "o/p"}},
            "repos": {"o/p": {"revision": "a" * 40, "files": [
                {"path": "model_index.json", "size": 3},
                {"path": "unet/diffusion_pytorch_model.safetensors", "size": 9, "sha256": "b" * 64}]}}}
    reg.parse(data)  # valid as it is
    edit(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        reg.parse(data)


def test_broken_registry_file_is_one_clear_error(tmp_path, monkeypatch):
    from kcli.errors import KandinskyError

    bad = tmp_path / "registry.toml"
    bad.write_text('default = "x"\n[models.x]\nprior = "a/b"\n')
    monkeypatch.setenv(reg.ENV, str(bad))
    with pytest.raises(KandinskyError, match="registry .* is invalid"):
        reg.load_registry()
    monkeypatch.setenv(reg.ENV, str(tmp_path / "none.toml"))
    with pytest.raises(KandinskyError, match="is missing"):
        reg.load_registry()


def test_unknown_model_names_the_known_ones():
    from kcli.errors import KandinskyError

    with pytest.raises(KandinskyError, match=r"unknown model '3\.0': known models are 2\.2, 2\.1"):
        builtin().get("3.0")


def test_pyproject_lists_every_package():
    """The package list is explicit (so the registry and presets ship as kcli.weights and kcli.presets): a new
    package must join it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kcli").rglob("__init__.py")}
    assert set(project["packages"]) == on_disk | {"kcli.weights", "kcli.presets"}
    assert project["package-dir"] == {"kcli.weights": "weights", "kcli.presets": "presets"}


def test_wheel_ships_the_registry(tmp_path):
    """``pip install .`` (not editable): the registry is found inside the installed package."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("kcli", "weights", "presets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "kcli" / "weights" / "registry.toml").read_bytes() == (ROOT / "weights" / "registry.toml").read_bytes()
    static = ROOT / "kcli" / "serve" / "static"  # the server's web page ships too
    for page in (p for p in static.rglob("*") if p.is_file()):
        assert (site / page.relative_to(ROOT)).read_bytes() == page.read_bytes(), page
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kcli.loading.registry import load_registry, "
            "registry_path; print(registry_path()); print(load_registry().default)")
    env = {k: v for k, v in os.environ.items() if k != reg.ENV}
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert out.stdout.split() == [str(site / "kcli" / "weights" / "registry.toml"), "2.2"], out.stderr
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from kcli.cli.config import presets_dir, preset_names; "
            "print(presets_dir()); print(','.join(preset_names()))")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert out.stdout.split() == [str(site / "kcli" / "presets"), "default,fast,lowvram,quality"], out.stderr


@pytest.mark.parametrize("name", ["2.2", "2.1"])
def test_models_info_shows_every_known_size_and_the_total(name, tmp_path):
    """`kandinsky models info`: each file's size, and per repository the exact total once every size is known
    (until then ">= known total (N file sizes unknown)")."""
    env = {k: v for k, v in os.environ.items() if k != reg.ENV}
    proc = subprocess.run([sys.executable, "-m", "kcli", "models", "info", name], capture_output=True, text=True,
                          env={**env, "KANDINSKY_HOME": str(tmp_path), "COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if not line.startswith(" ")]
    repos = list(builtin().get(name).repos())
    assert len(heads) == len(repos)
    for repo, start, end in zip(repos, heads, heads[1:] + [len(lines)]):
        head, rows = lines[start], [line.split() for line in lines[start + 2:end]]
        assert f": {repo.id} @ {repo.revision} " in head
        unknown = sum(f.size is None for f in repo.files)
        total = human_size(repo.known_size)
        if unknown:
            assert f"download >= {total} ({unknown} file sizes unknown)," in head
        else:
            assert f"download {total}, " in head and ">=" not in head
        assert [r[0] for r in rows] == [f.path for f in repo.files]
        for f, row in zip(repo.files, rows):
            size = human_size(f.size).split() if f.size is not None else ["?"]
            assert row[1:-2] == size and row[-2] == (f.sha256[:12] if f.sha256 else "-"), row
