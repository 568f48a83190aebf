"""Checkpoints from the hub, against a loopback hub (tests/hubserver.py) serving the tiny checkpoints of tiny.py:
pull, cache hits with the server stopped, offline mode, interrupted and resumed downloads, verification,
removal, one-line errors, and ``kandinsky generate`` from hub ids end to end.

Nothing here touches the real network: HF_ENDPOINT points at 127.0.0.1, and KANDINSKY_HOME / HF_HOME at
temporary folders. A test registry (KANDINSKY_REGISTRY) names the tiny repositories model ``tiny``.
"""

import io
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import hubserver
import numpy as np
import pytest
from PIL import Image
from test_cli import one_line_error

from kcli.errors import CheckpointError
from kcli.loading import download, hub
from kcli.loading.registry import load_registry

PARTS = ("prior", "decoder", "inpaint")
PROMPT = "a corgi gliding on the wave"


@pytest.fixture
def server(prior22, decoder22, inpaint22):
    folders = {"prior": prior22, "decoder": decoder22, "inpaint": inpaint22}
    with hubserver.HubServer(lifetime=240) as s:
        s.tiny = {part: s.add(f"tiny-community/kandinsky-tiny-{part}", folder) for part, folder in folders.items()}
        yield s


@pytest.fixture
def env(server, tmp_path, monkeypatch, _private_cache):
    """The process and its subprocesses talk to the loopback hub and keep their caches in tmp_path."""
    import huggingface_hub.constants

    registry = tmp_path / "registry.toml"
    registry.write_text(hubserver.registry_toml({"tiny": server.tiny}))
    values = {"HF_ENDPOINT": server.url, "KANDINSKY_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
              "KANDINSKY_REGISTRY": str(registry), "HF_HUB_OFFLINE": "0"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest sets it for other tests
    return values


def kandinsky(*args, env=None):
    """`kandinsky ARGS` as a user runs it, with the test's environment."""
    return subprocess.run([sys.executable, "-m", "kcli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=300)


def tiny_repos():
    return list(load_registry().get("tiny").repos())


def served_size(server, parts=PARTS) -> int:
    return sum(f.size for part in parts for f in server.tiny[part].files.values())


def served_files(server, parts=PARTS) -> int:
    return sum(len(server.tiny[part].files) for part in parts)


def same_files(snapshot: Path, repo: hubserver.Repo) -> bool:
    return all((snapshot / f.path).read_bytes() == f.source.read_bytes() for f in repo.files.values())


# ---- pull, cache, offline ------------------------------------------------------------------------------


def test_pull_prints_the_total_first_then_serves_from_cache_with_the_server_stopped(server, env):
    proc = kandinsky("models", "pull", "tiny")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    total = download.human_size(served_size(server))
    assert lines[0].startswith(f"downloading model tiny: {total} ({served_files(server)} files) into {env['KANDINSKY_HOME']}"), lines
    assert any(line.startswith("kandinsky-tiny-decoder/unet/diffusion_pytorch_model.safetensors: ")
               for line in lines[1:])  # one line per file off a terminal
    paths = dict(line.split("\t") for line in proc.stdout.splitlines())
    assert list(paths) == list(PARTS)
    for part in PARTS:
        assert same_files(Path(paths[part]), server.tiny[part])

    server.stop()  # a pinned, complete snapshot needs no network, offline or not
    assert hub.resolve_checkpoints("tiny") == (Path(paths["prior"]), Path(paths["decoder"]))
    assert hub.resolve_checkpoints("tiny", inpainting=True, offline=True)[1] == Path(paths["inpaint"])
    proc = kandinsky("models", "verify", "tiny")
    assert proc.returncode == 0 and proc.stdout.strip() == f"model tiny: {served_files(server)} files verified", proc.stderr


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE=1"])
def test_offline_never_contacts_the_hub_and_names_the_pull(server, env, how):
    flags, extra = (["--offline"], {}) if how == "--offline" else ([], {"HF_HUB_OFFLINE": "1"})
    proc = kandinsky("generate", PROMPT, "--model", "tiny", *flags, env=extra)
    assert one_line_error(proc) == "error: model tiny is not in the cache: run `kandinsky models pull tiny`"
    proc = kandinsky("generate", PROMPT, *flags, env={**extra, "KANDINSKY_REGISTRY": ""})  # the real registry
    assert one_line_error(proc) == "error: model 2.2 is not in the cache: run `kandinsky models pull 2.2`"
    assert server.requests == []


def test_offline_hub_id_names_its_own_pull(server, env):
    with pytest.raises(CheckpointError) as e:
        hub.resolve_checkpoints("tiny", prior="someone/tiny-prior", offline=True)
    assert str(e.value) == "repository someone/tiny-prior is not in the cache: run `kandinsky models pull someone/tiny-prior`"
    assert server.requests == []


def test_download_cut_in_the_middle_resumes_in_the_same_run(server, env):
    repo = server.tiny["prior"]
    name = "prior/diffusion_pytorch_model.safetensors"
    server.drop_after(repo.id, name, 40_000)
    prior, _ = hub.resolve_checkpoints("tiny")
    assert [r.range for r in server.downloads(name, repo)] == [None, "bytes=40000-"]
    assert (prior / name).read_bytes() == repo.files[name].source.read_bytes()


def test_interrupted_run_keeps_its_partial_download_and_the_next_run_resumes(server, env):
    repo = server.tiny["decoder"]
    name = "unet/diffusion_pytorch_model.safetensors"
    server.drop_after(repo.id, name, 1_000_000, times=100)  # the connection keeps dying at 1 MB
    proc = kandinsky("models", "pull", "tiny")
    line = one_line_error(proc)
    size = download.human_size(repo.files[name].size)
    assert line.startswith(f"error: the download of {repo.id}/{name} was interrupted at 1 MB of {size} (")
    assert line.endswith("): run the command again to resume it")
    partial = download.repo_folder(repo.id) / "blobs" / f"{repo.files[name].sha256}.incomplete"
    assert partial.stat().st_size == 1_000_000
    assert not partial.with_suffix("").exists()  # never a half file under the final name
    first = {r.path for r in server.downloads()}

    server._drops.clear()
    server.requests.clear()
    proc = kandinsky("models", "pull", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in server.downloads(name, repo)] == ["bytes=1000000-"]
    assert first & {r.path for r in server.downloads()} == {r.path for r in server.downloads(name, repo)}  # nothing twice
    assert not partial.exists()
    assert same_files(Path(dict(line.split("\t") for line in proc.stdout.splitlines())["decoder"]), repo)


# ---- verify, repair, remove ----------------------------------------------------------------------------


def test_verify_catches_a_corrupt_cached_file_and_pull_fetches_it_again(server, env):
    download.fetch(tiny_repos(), what="model tiny")
    repo = server.tiny["decoder"]
    name = "movq/diffusion_pytorch_model.safetensors"
    blob = download.repo_folder(repo.id) / "blobs" / repo.files[name].sha256
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a hash sees it
    blob.write_bytes(bytes(data))

    proc = kandinsky("models", "verify", "tiny")
    assert one_line_error(proc) == (
        f"error: 1 of {served_files(server)} files of model tiny is damaged (1 failed verification and was "
        "removed): run `kandinsky models pull tiny` to fetch them again")
    assert f"FAILED {repo.id}/{name}: sha256 " in proc.stderr
    server.requests.clear()
    assert kandinsky("models", "pull", "tiny").returncode == 0
    assert [r.path.rsplit("/", 2)[-2:] for r in server.downloads()] == [["movq", "diffusion_pytorch_model.safetensors"]]
    assert kandinsky("models", "verify", "tiny").returncode == 0


def test_verify_says_files_were_removed_only_when_some_were(server, env):
    download.fetch(tiny_repos(), what="model tiny")
    repo = server.tiny["prior"]
    name = "text_encoder/config.json"
    for path in (download.repo_folder(repo.id) / "snapshots").glob(f"*/{name}"):
        path.unlink()  # a missing file: nothing to remove
    proc = kandinsky("models", "verify", "tiny")
    assert one_line_error(proc) == (f"error: 1 of {served_files(server)} files of model tiny is missing: run "
                                    "`kandinsky models pull tiny` to fetch them again")
    assert "removed" not in proc.stderr


def test_a_truncated_cached_file_is_refused_offline_and_refetched_online(server, env):
    download.fetch(tiny_repos(), what="model tiny")
    repo = server.tiny["prior"]
    name = "text_encoder/model.safetensors"
    blob = download.repo_folder(repo.id) / "blobs" / repo.files[name].sha256
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"the cached file {name} of {repo.id} is damaged \(its size is wrong\): "
                                              r"run `kandinsky models pull tiny`"):
        hub.resolve_checkpoints("tiny", offline=True)
    prior, _ = hub.resolve_checkpoints("tiny")  # online: the damaged file is fetched again
    assert same_files(prior, repo)


class Hashes(download.Progress):
    """Records which files a fetch hashed again because they changed on disk."""

    def __init__(self):
        self.checked = []

    def started(self, name, size, done):
        if name.endswith("(changed on disk: checking)"):
            self.checked.append(name.split(" ")[0])


def test_a_weight_tampered_in_place_is_caught_on_its_next_use_and_only_then(server, env, tmp_path):
    download.fetch(tiny_repos(), what="model tiny")
    spy = Hashes()
    download.fetch(tiny_repos(), what="model tiny", offline=True, progress=spy)
    assert spy.checked == []  # hashed as it arrived: not again on every run
    repo = server.tiny["decoder"]
    name = "unet/diffusion_pytorch_model.safetensors"
    snapshot_file = download.repo_folder(repo.id) / "snapshots" / repo.commit / name
    data = bytearray(snapshot_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: the old size check would pass it, and the image be garbage
    snapshot_file.write_bytes(bytes(data))

    proc = kandinsky("generate", "x", "--model", "tiny", "--offline", "--steps", 2, "--prior-steps", 2,
                     "-o", tmp_path / "x.png", env=env)
    assert one_line_error(proc) == (
        f"error: the cached file {name} of {repo.id} changed on disk since it was downloaded and no longer "
        "matches its checksum (it was removed): run `kandinsky models pull tiny`")
    assert not (tmp_path / "x.png").exists()
    server.requests.clear()
    spy = Hashes()
    _, decoder = hub.resolve_checkpoints("tiny", progress=spy)  # online: fetched again, and trusted again
    assert same_files(decoder, repo) and spy.checked == []
    assert [r.path.rsplit("/", 2)[-2:] for r in server.downloads()] == [name.split("/")]
    os.utime(decoder / name)  # touched, not changed: hashed once more, found right, used
    spy = Hashes()
    hub.resolve_checkpoints("tiny", offline=True, progress=spy)
    assert spy.checked == [f"{repo.id.split('/')[-1]}/{name}"]


def test_rm_frees_the_space(server, env):
    download.fetch(tiny_repos(), what="model tiny")
    proc = kandinsky("models", "list")
    assert proc.returncode == 0, proc.stderr
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("tiny"))
    size = download.human_size(served_size(server)).split()
    assert row[:2] == ["tiny", "*"] and row[-5:] == [*size, "yes", *size], proc.stdout

    proc = kandinsky("models", "rm", "tiny", "--yes")
    assert proc.stdout.strip() == f"removed model tiny: {' '.join(size)} freed", proc.stderr
    assert not any(download.repo_folder(r.id).exists() for r in tiny_repos())
    assert not list(download.cache_dir().glob("models--*"))
    row = next(line.split() for line in kandinsky("models", "list").stdout.splitlines() if line.startswith("tiny"))
    assert row[-2:] == ["no", "-"]
    assert one_line_error(kandinsky("models", "path", "tiny")) == (
        "error: model tiny is not in the cache: run `kandinsky models pull tiny`")


def test_info_and_path(server, env):
    download.fetch(tiny_repos()[:2], what="model tiny")  # prior and decoder, not the inpainting decoder
    proc = kandinsky("models", "path", "tiny")
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["prior", "decoder"]
    proc = kandinsky("models", "info", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert f"decoder: {server.tiny['decoder'].id} @ {server.tiny['decoder'].commit}" in proc.stdout
    assert "inpaint: " in proc.stdout and "cached: no" in proc.stdout
    unet = next(line.split() for line in proc.stdout.splitlines()
                if line.strip().startswith("unet/diffusion_pytorch_model.safetensors"))
    assert unet[-1] == "yes" and unet[-2] == server.tiny["decoder"].files[unet[0]].sha256[:12]


# ---- end to end ----------------------------------------------------------------------------------------


def test_a_weight_tampered_with_its_mtime_kept_gives_no_nan_image_but_a_line_pointing_at_verify(server, env,
                                                                                                 tmp_path):
    """The mtime check cannot see a file rewritten with its old mtime; the decoder's NaN still ends the job."""
    from safetensors.torch import load_file, save_file

    download.fetch(tiny_repos(), what="model tiny")
    repo = server.tiny["decoder"]
    name = "movq/diffusion_pytorch_model.safetensors"
    snapshot_file = download.repo_folder(repo.id) / "snapshots" / repo.commit / name
    stat = snapshot_file.stat()
    tensors = load_file(snapshot_file)
    key = next(k for k in sorted(tensors) if k.startswith("decoder.conv_out") and k.endswith("weight"))
    tensors[key].fill_(float("nan"))
    save_file(tensors, snapshot_file.resolve(), metadata={"format": "pt"})
    os.utime(snapshot_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert snapshot_file.stat().st_size == stat.st_size

    proc = kandinsky("generate", "x", "--model", "tiny", "--offline", "--steps", 2, "--prior-steps", 2, "-W", 64,
                     "-H", 64, "-o", tmp_path / "x.png", env=env)
    assert one_line_error(proc) == ("error: the decoded image holds NaN or infinite values: a weight file is "
                                    "probably damaged: run `kandinsky models verify tiny` (it removes damaged "
                                    "files; pull fetches them again)")
    assert not (tmp_path / "x.png").exists()
    assert f"FAILED {repo.id}/{name}: sha256 " in kandinsky("models", "verify", "tiny").stderr


def test_generate_from_hub_ids_end_to_end_then_offline_with_the_server_stopped(server, env, tmp_path):
    server.add("someone/tiny-prior", server.tiny["prior"].files["model_index.json"].source.parent)
    server.add("someone/tiny-decoder", server.tiny["decoder"].files["model_index.json"].source.parent)
    args = ["generate", PROMPT, "--prior", "someone/tiny-prior", "--decoder", "someone/tiny-decoder", "--seed", 3,
            "-W", 64, "-H", 64, "--steps", 2, "--prior-steps", 2, "--device", "cpu"]
    proc = kandinsky(*args, "-o", tmp_path / "hub.png")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("downloading someone/tiny-prior, someone/tiny-decoder: ")
    assert proc.stdout.strip() == str(tmp_path / "hub.png")

    server.stop()  # the branch cannot be refreshed: the cached snapshot is used, offline or not
    proc = kandinsky(*args, "--offline", "-o", tmp_path / "offline.png")
    assert proc.returncode == 0, proc.stderr
    assert "downloading" not in proc.stderr
    first, second = (np.asarray(Image.open(tmp_path / n)) for n in ("hub.png", "offline.png"))
    assert first.shape == (64, 64, 3) and np.array_equal(first, second)
    assert hub.resolve("someone/tiny-prior") == hub.resolve("someone/tiny-prior", offline=True)


# ---- one-line errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["generate", PROMPT, "--model", "tiny", "--seed", 1], ["models", "pull", "tiny"]])
def test_hub_unreachable_is_one_line_without_a_flag_that_cannot_help(server, env, command):
    url = server.url
    server.stop()
    line = one_line_error(kandinsky(*command))
    assert line.startswith(f"error: cannot reach the hub at {url} (")
    assert line.endswith("): check the network (HF_ENDPOINT sets a mirror); the cache does not hold this yet")
    assert "--offline" not in line  # it cannot help an empty cache, and `models pull` has no such flag


def test_repository_file_and_revision_not_found(server, env, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=f"^repository someone/missing was not found on the hub at {server.url} "):
        hub.resolve("someone/missing")
    text = hubserver.registry_toml({"tiny": server.tiny})
    prior = server.tiny["prior"]
    for edit, message in [
        (lambda t: t.replace("files = [", 'files = [\n  { path = "prior/extra.json" },', 1),
         f"{prior.id} has no file prior/extra.json at revision {prior.commit}"),
        (lambda t: t.replace(prior.commit, "f" * 40), f"revision {'f' * 40} of {prior.id} was not found on the hub"),
        (lambda t: t.replace("size = 88296", "size = 88297"),
         f"{prior.id}/prior/diffusion_pytorch_model.safetensors is 88296 bytes on the hub, the registry says 88297"),
    ]:
        registry = tmp_path / f"registry{len(message)}.toml"
        registry.write_text(edit(text))
        monkeypatch.setenv("KANDINSKY_REGISTRY", str(registry))
        with pytest.raises(CheckpointError, match=f"^{message}"):
            hub.resolve_checkpoints("tiny")


def test_not_enough_disk_space(server, env, monkeypatch):
    monkeypatch.setattr(download, "_free_space", lambda folder: 1000)
    with pytest.raises(CheckpointError, match=rf"^not enough disk space in .*: the download needs "
                                              rf"{download.human_size(served_size(server, PARTS[:2]))} and 1 kB is free"):
        hub.resolve_checkpoints("tiny")
    assert server.downloads() == []


def test_a_download_that_does_not_match_its_checksum_is_deleted(server, env, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(server.tiny["decoder"].files["model_index.json"].source.parent, folder)
    repo = server.add("someone/tampered", folder)
    weights = folder / "movq" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))  # served bytes no longer match the listing's sha256
    with pytest.raises(CheckpointError, match=r"^the download of someone/tampered/movq/diffusion_pytorch_model"
                                              r"\.safetensors does not match the hub's checksum \(sha256 "):
        hub.resolve("someone/tampered")
    blobs = download.repo_folder(repo.id) / "blobs"
    assert not [p for p in blobs.iterdir() if p.name.startswith(repo.files["movq/diffusion_pytorch_model.safetensors"].sha256)]


def test_token_is_sent(server, env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_loopback_test")
    hub.resolve_checkpoints("tiny")
    assert server.requests and {r.authorization for r in server.requests} == {"Bearer hf_loopback_test"}


def test_hub_id_gets_configs_tokenizers_and_safetensors_only(tmp_path):
    files = {p: download.Remote(p, 1, "e", p.endswith(".safetensors")) for p in [
        "model_index.json", "README.md", ".gitattributes", "unet/config.json", "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "movq/diffusion_pytorch_model.fp16.safetensors", "movq/config.json", "vae/x.ema.safetensors",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/sentencepiece.bpe.model",
        "text_encoder/model-00001-of-00002.safetensors", "image.png"]}
    assert [f.path for f in download.choose_files(files)] == [
        "model_index.json", "movq/config.json", "movq/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model-00001-of-00002.safetensors", "tokenizer/merges.txt", "tokenizer/sentencepiece.bpe.model",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]


# ---- drawing -------------------------------------------------------------------------------------------


def test_download_bars_show_size_speed_and_eta_on_a_terminal():
    from rich.console import Console

    from kcli.cli.display import DownloadView

    view = DownloadView()
    view.console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view.live = True
    with view:
        view.planned("model 2.2", 2, 5_000_000, 0, Path("/cache"))
        view.started("kandinsky-2-2-decoder/unet/diffusion_pytorch_model.safetensors", 4_000_000, 1_000_000)
        view.advanced("kandinsky-2-2-decoder/unet/diffusion_pytorch_model.safetensors", 3_000_000)
        view.finished("kandinsky-2-2-decoder/unet/diffusion_pytorch_model.safetensors")
    text = view.console.file.getvalue()
    assert "downloading model 2.2: 5 MB (2 files) into /cache" in text
    assert "unet/diffusion_pytorch_model.safetensors" in text and "4.0/4.0 MB" in text


def test_models_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from kcli.cli import app; "
            "r = CliRunner().invoke(app, ['models', 'pull', '--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# ---- a hostile hub or mirror cannot write outside the cache --------------------------------------------


@pytest.mark.parametrize("edit,named", [
    (lambda r, victim: r.files.__setitem__(str(victim), _clone(r, "model_index.json", str(victim))),
     "the file path '{victim}'"),
    (lambda r, victim: r.files.__setitem__("movq/../../../../escape.json",
                                           _clone(r, "model_index.json", "movq/../../../../escape.json")),
     "the file path 'movq/../../../../escape.json'"),
    (lambda r, victim: r.files.__setitem__("model_index.json", replace(
        r.files["model_index.json"], git_oid="../../../../escape")), "the checksum '../../../../escape'"),
    (lambda r, victim: setattr(r, "commit", "../../../escape"), "a revision '../../../escape'"),
], ids=["absolute-path", "dot-dot-path", "etag-as-path", "revision-as-path"])
def test_a_hostile_listing_is_refused_in_one_line_and_writes_nothing_outside(server, env, tmp_path, edit, named):
    victim = tmp_path / "victim.json"
    victim.write_text("mine")
    repo = server.add("mallory/kandinsky", server.tiny["decoder"].files["model_index.json"].source.parent)
    edit(repo, victim)
    before = sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts)
    line = one_line_error(kandinsky("models", "pull", repo.id, env=env))
    assert named.format(victim=victim) in line and f"in {repo.id}: refusing the whole listing" in line
    assert victim.read_text() == "mine" and not victim.is_symlink()
    assert sorted(p for p in tmp_path.rglob("*") if "home" not in p.parts) == before
    assert not server.downloads(repo=repo)  # nothing was fetched from a listing that was refused


def _clone(repo, source: str, path: str):
    return replace(repo.files[source], path=path)


def test_the_python_api_opens_a_model_by_name_and_swaps_in_the_inpainting_decoder(server, env, pictures):
    """What the command line does, from Python: a registry name, downloads reported, outpaint's canvas planned
    below the CLI, and the inpainting decoder fetched and loaded when a request needs it."""
    import numpy as np
    from PIL import Image

    from kcli.pipelines import Kandinsky, Outpaint, TextToImage

    heard = []

    class Listener:
        def planned(self, what, files, todo, cached, folder):
            heard.append(f"planned {what}")

        def note(self, message):
            heard.append(message)

    k = Kandinsky.open("tiny", device="cpu", events=Listener())
    assert heard[0] == "planned model tiny" and not k.decoder.is_inpainting
    (plain,) = k.run(TextToImage(PROMPT, seed=1, width=64, height=64, steps=2, prior_steps=2))
    assert plain.metadata["load"]["model"] == "tiny" and plain.metadata["mode"] == "generate"
    (grown,) = k.run(Outpaint("sky", image=pictures["picture"], expand="left=64", seed=2, steps=2, prior_steps=2))
    assert k.decoder.is_inpainting and "canvas 192x64 (128x64 grown by left 64)" in heard
    assert grown.image.size == (192, 64)
    original = np.asarray(Image.open(pictures["picture"]).convert("RGB"))
    assert np.array_equal(np.asarray(grown.image)[:, 64:], original)
    assert grown.metadata["inputs"]["expand"] == "left=64"
