"""``kandinsky serve`` with the clients people use: webuiapi (AUTOMATIC1111's API) and the openai SDK, against
a server subprocess on tiny checkpoints. Each image must equal the command line's for the same seed and
settings, and the command line's ``--server`` must write the same files as a local run."""

import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image
from serving import Server
from test_cli import run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SMALL = {"seed": 3, "steps": 3, "width": 64, "height": 64}  # prior: its default 25 steps (A1111 has no field)
CLI_SMALL = ["--seed", 3, "--steps", 3, "-W", 64, "-H", 64, "--device", "cpu"]


def home(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "kandinsky-home"  # the autouse fixture's, for session fixtures


@pytest.fixture(scope="session")
def server(prior22, decoder22, inpaint22, tmp_path_factory):
    with Server("--prior", prior22, "--decoder", decoder22, "--inpaint-decoder", inpaint22,
                env={"KANDINSKY_HOME": str(home(tmp_path_factory))}) as s:
        yield s


@pytest.fixture(scope="session")
def masks(tmp_path_factory, pictures):
    """The same repaint area as an A1111 mask (white = repaint) and an OpenAI one (transparent = repaint)."""
    folder = tmp_path_factory.mktemp("masks")
    white = np.zeros((64, 64), np.uint8)
    white[8:40, 16:56] = 255
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 255 - white
    Image.fromarray(white).save(folder / "white.png")
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    return {"white": folder / "white.png", "alpha": folder / "alpha.png"}


@pytest.fixture(scope="session")
def local(tmp_path_factory, prior22, decoder22, inpaint22, pictures, masks):
    """The command line's images, made once: text to image, image to image, inpaint."""
    folder = tmp_path_factory.mktemp("local")
    runs = {
        "generate": ["generate", "a red cat", "--prior", prior22, "--decoder", decoder22, "--guidance", 4],
        "img2img": ["generate", "a red cat", "--init", pictures["square"], "--strength", 0.5, "--prior", prior22,
                    "--decoder", decoder22],
        "inpaint": ["inpaint", "a hat", "--image", pictures["square"], "--mask", masks["white"], "--prior", prior22,
                    "--decoder", inpaint22],
    }
    for name, args in runs.items():
        proc = run(*args, *CLI_SMALL, "-o", folder / f"{name}.png", home=home(tmp_path_factory))
        assert proc.returncode == 0, proc.stderr
    return folder


def pixels(image) -> np.ndarray:
    return np.asarray((image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB"))


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture
def webui(server):
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="DDPM", steps=3)


def test_webuiapi_txt2img_equals_the_cli_and_carries_metadata(webui, local):
    result = webui.txt2img(prompt="a red cat", cfg_scale=4.0, restore_faces=True, **SMALL)
    assert np.array_equal(pixels(result.image), pixels(local / "generate.png"))
    assert result.info["all_seeds"] == [3] and result.info["seed"] == 3
    assert result.info["ignored"] == ["restore_faces"]  # what does not apply is named
    meta = json.loads(result.image.info["kandinsky"])
    assert meta["settings"]["seed"] == 3 and meta["mode"] == "generate"
    assert "Steps: 3" in result.image.info["parameters"]


def test_webuiapi_img2img_equals_the_cli(webui, local, pictures):
    result = webui.img2img(images=[Image.open(pictures["square"])], prompt="a red cat", denoising_strength=0.5,
                           cfg_scale=4.0, **SMALL)
    assert np.array_equal(pixels(result.image), pixels(local / "img2img.png"))
    assert result.info["denoising_strength"] == 0.5


def test_webuiapi_inpaint_equals_the_cli(webui, local, pictures, masks):
    result = webui.img2img(images=[Image.open(pictures["square"])], mask_image=Image.open(masks["white"]),
                           prompt="a hat", mask_blur=0, cfg_scale=4.0, **SMALL)
    assert np.array_equal(pixels(result.image), pixels(local / "inpaint.png"))
    inverted = webui.img2img(images=[Image.open(pictures["square"])], mask_image=Image.open(masks["white"]),
                             prompt="a hat", mask_blur=0, inpainting_mask_invert=1, cfg_scale=4.0, **SMALL)
    kept = np.asarray(Image.open(masks["white"])) == 0  # inverted: the white part is kept exactly
    assert np.array_equal(pixels(inverted.image)[~kept], pixels(pictures["square"])[~kept])


def test_a_sampler_we_lack_falls_back_and_info_says_so(server):
    answer = server.post("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "UniPC", **SMALL, "steps": 1})
    info = json.loads(answer.json()["info"])
    assert "UniPC" in info["sampler_fallback"] and info["sampler_name"] == "DDPM"
    names = [s["name"] for s in server.get("/sdapi/v1/samplers").json()]
    assert {"DDIM", "DPM++ 2M", "DPM++ 2M Karras"} <= set(names)
    for name in names:  # every sampler listed is used by its A1111 name, without falling back
        info = json.loads(server.post("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": name, **SMALL,
                                                            "steps": 2}).json()["info"])
        assert info["sampler_name"] == name and "sampler_fallback" not in info


def test_openai_generate_and_edit_equal_the_cli(server, local, pictures, masks):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["custom"]
    made = client.images.generate(model="custom", prompt="a red cat", n=1, size="64x64", response_format="b64_json",
                                  extra_body={"seed": 3, "steps": 3})
    assert np.array_equal(pixels(decoded(made.data[0].b64_json)), pixels(local / "generate.png"))
    with open(pictures["square"], "rb") as image, open(masks["alpha"], "rb") as mask:
        edited = client.images.edit(image=image, mask=mask, prompt="a hat", extra_body={"seed": 3, "steps": 3})
    assert np.array_equal(pixels(decoded(edited.data[0].b64_json)), pixels(local / "inpaint.png"))
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="dall-e-3", prompt="x", extra_body={"steps": 1})


@pytest.mark.parametrize("name,args", [
    ("generate", ["generate", "a red cat", "--guidance", 4]),
    ("img2img", ["generate", "a red cat", "--init", "{square}", "--strength", 0.5]),
    ("inpaint", ["inpaint", "a hat", "--image", "{square}", "--mask", "{white}"]),
])
def test_the_cli_with_server_writes_the_same_file_as_a_local_run(server, local, pictures, masks, tmp_path, name,
                                                                  args):
    from kcli.pipelines import imagemeta as metadata

    paths = {"square": pictures["square"], "white": masks["white"]}
    args = [a.format(**{k: str(v) for k, v in paths.items()}) if isinstance(a, str) else a for a in args]
    proc = run(*args, *CLI_SMALL, "--server", server.url, "-o", tmp_path / "remote.png")
    assert proc.returncode == 0, proc.stderr
    assert "loading models" not in proc.stderr
    assert np.array_equal(pixels(tmp_path / "remote.png"), pixels(local / f"{name}.png"))
    ours, theirs = metadata.read(tmp_path / "remote.png"), metadata.read(local / f"{name}.png")
    for meta in (ours, theirs):
        meta.pop("timings")
    assert ours == theirs


def test_four_clients_eight_jobs_each_all_finish_and_the_models_load_once(server):
    before = server.status()["loads"]
    answers, lock = [], threading.Lock()

    def client(c):
        for j in range(8):
            body = {"prompt": f"client {c} job {j}", "seed": 100 * c + j, "steps": 1, "prior_steps": 1,
                    "width": 64, "height": 64}
            got = server.post("/kandinsky/v1/generate", body)
            with lock:
                answers.append((body["seed"], got.status_code, got.json()))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(answers) == 32 and all(code == 200 for _, code, _ in answers), [a[2] for a in answers if a[1] != 200]
    assert all(got["images"][0]["seed"] == seed for seed, _, got in answers)
    assert server.status()["loads"] == before and before["models"] == 1


def test_progress_then_interrupt_stops_the_running_job(server):
    done = {}
    body = {"prompt": "a long one", "seed": 1, "steps": 999, "prior_steps": 1, "width": 128, "height": 128,
            "batch_size": 2}  # the longest schedule: it runs until interrupted, however fast the machine
    worker = threading.Thread(target=lambda: done.update(answer=server.post("/sdapi/v1/txt2img", body)))
    worker.start()
    for _ in range(600):
        progress = server.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_steps"] == 999 and progress["state"]["sampling_step"] > 2:
            break
        threading.Event().wait(0.05)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 999
    assert progress["state"]["job_count"] >= 1
    assert server.post("/sdapi/v1/interrupt").status_code == 200
    worker.join(60)
    info = json.loads(done["answer"].json()["info"])
    assert info["interrupted"] is True and len(done["answer"].json()["images"]) < 2
    assert server.get("/sdapi/v1/progress").json()["progress"] == 0  # idle again, and still serving:
    assert server.post("/kandinsky/v1/generate", {"prompt": "x", "steps": 1, "prior_steps": 1, "width": 64,
                                                  "height": 64}).status_code == 200
    idle = server.get("/sdapi/v1/progress").json()["state"]  # a finished job's steps are not reported as running
    assert (idle["job"], idle["sampling_step"], idle["sampling_steps"]) == ("", 0, 0)


def test_the_cli_client_hears_the_servers_progress_on_its_own_job(server, monkeypatch):
    from kcli.pipelines import TextToImage
    from kcli.serve import client

    monkeypatch.setattr(client, "EVERY", 0.02)  # look often: tiny steps are quick
    heard = []

    class Ear:
        def image(self, index, count, seed, candidate=None):
            heard.append(("image", index, count, seed))

        def progress(self, stage, done, total):
            heard.append((stage, done, total))

    request = TextToImage(prompt="heard", seed=5, steps=300, prior_steps=1, width=64, height=64, num_images=2)
    results = list(client.Remote(server.url, events=Ear()).run(request))
    assert [r.seed for r in results] == [5, 6]
    images = [h for h in heard if h[0] == "image"]
    assert images and all(h == ("image", h[1], 2, 4 + h[1]) for h in images), images  # image i: seed 5 + i - 1
    steps = [h for h in heard if h[0] == "decoder"]
    assert any(0 < done < 300 for _, done, _ in steps) and steps[-1] == ("decoder", 300, 300), steps
    assert all(total == 300 for _, _, total in steps)

    named = {"X-Kandinsky-Job": "not hex!"}
    answer = server.post("/kandinsky/v1/generate", {"prompt": "x", "steps": 1, "prior_steps": 1}, headers=named)
    assert answer.status_code == 400 and "X-Kandinsky-Job" in answer.json()["error"]


def test_png_info_models_and_options_and_no_cors_by_default(server):
    assert "access-control-allow-origin" not in server.get("/v1/models", headers={"Origin": "http://a.example"}).headers

    made = server.post("/kandinsky/v1/generate", {"prompt": "info", "seed": 9, "steps": 1, "prior_steps": 1,
                                                  "width": 64, "height": 64}).json()
    info = server.post("/sdapi/v1/png-info", {"image": made["images"][0]["png"]}).json()
    assert info["info"].startswith("info\nSteps: 1") and info["parameters"]["settings"]["seed"] == 9
    assert [m["title"] for m in server.get("/sdapi/v1/sd-models").json()] == ["custom"]
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "custom"
    assert server.post("/sdapi/v1/options", {"sd_model_checkpoint": "custom"}).status_code == 200
    answer = server.post("/sdapi/v1/options", {"sd_model_checkpoint": "../../etc/passwd"})
    assert answer.status_code == 404 and "unknown checkpoint" in answer.json()["error"]


def test_fuse_vary_and_outpaint_through_the_server_record_this_machines_inputs(server, pictures, tmp_path):
    from kcli.pipelines import imagemeta as metadata

    tiny = ["--steps", 1, "--prior-steps", 1, "--server", server.url]
    fused = run("fuse", "a red cat", pictures["square"], "--weights", "1,3", "-W", 64, "-H", 64, *tiny, "-o",
                tmp_path / "fuse.png")
    assert fused.returncode == 0, fused.stderr
    assert metadata.read(tmp_path / "fuse.png")["inputs"]["items"] == ["a red cat", str(pictures["square"].resolve())]
    varied = run("vary", pictures["square"], "-W", 64, "-H", 64, "-n", 2, *tiny, "-o", tmp_path)
    assert varied.returncode == 0, varied.stderr
    assert len(list(tmp_path.glob("*square-variation*.png"))) == 2
    grown = run("outpaint", "more", "--image", pictures["square"], "--expand", "left=64", *tiny, "-o",
                tmp_path / "grown.png")
    assert grown.returncode == 0, grown.stderr
    assert Image.open(tmp_path / "grown.png").size == (128, 64)
    meta = metadata.read(tmp_path / "grown.png")
    assert meta["mode"] == "outpaint" and meta["inputs"]["image"] == str(pictures["square"].resolve())


def test_the_cli_says_in_one_line_when_no_server_answers(tmp_path):
    from serving import free_port
    from test_cli import one_line_error

    proc = run("generate", "x", "--server", f"http://127.0.0.1:{free_port()}", "-o", tmp_path / "x.png")
    assert "cannot reach the server" in one_line_error(proc) and not (tmp_path / "x.png").exists()
