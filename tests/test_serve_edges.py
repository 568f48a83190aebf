"""The protocol's edges: a server beyond loopback needs a key; the queue's limit; bad input of every kind gets
a 4xx with one JSON line, and never stops the worker. Kandinsky's own endpoints for fuse, vary, outpaint."""

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from serving import Server
from test_cli import one_line_error, run

KEY = "s3cret-key"
EDITOR = "http://editor.example"  # the one origin the guarded server allows
TINY = {"steps": 1, "prior_steps": 1, "width": 64, "height": 64}


@pytest.fixture(scope="session")
def guarded(prior22, decoder22, inpaint22, tmp_path_factory):
    """Listening on every address, so with a key; one job may wait; pictures over 0.1 megapixels refused."""
    env = {"KANDINSKY_HOME": str(tmp_path_factory.getbasetemp() / "kandinsky-home"), "KANDINSKY_MAX_PIXELS": "100000"}
    with Server("--prior", prior22, "--decoder", decoder22, "--inpaint-decoder", inpaint22, "--api-key", KEY,
                "--queue", 1, "--cors", EDITOR, host="0.0.0.0", key=KEY, env=env) as s:
        yield s


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def square(size=(64, 64), value=128) -> str:
    return b64(Image.new("RGB", size, (value, 60, 200)))


def test_another_host_without_a_key_is_refused_in_one_line(prior22, decoder22):
    proc = run("serve", "--host", "0.0.0.0", "--prior", prior22, "--decoder", decoder22, "--port", 1)
    assert "--api-key" in one_line_error(proc)


def test_a_taken_port_is_refused_in_one_line_before_loading(prior22, decoder22):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = run("serve", "--prior", prior22, "--decoder", decoder22, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(proc)
    assert "loading" not in proc.stderr


def test_the_key_is_wanted_on_every_api_route_but_not_the_page(guarded):
    for path in ("/sdapi/v1/sd-models", "/v1/models", "/kandinsky/v1/status"):
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            answer = guarded.get(path, headers=headers)
            assert answer.status_code == 401 and "API key" in answer.json()["error"], (path, headers)
        assert guarded.get(path).status_code == 200
    page = guarded.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_cors_allows_only_the_origin_given(guarded):
    import requests

    def preflight(origin):
        return requests.options(guarded.url + "/sdapi/v1/txt2img", timeout=30, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})

    allowed = preflight(EDITOR)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == EDITOR
    assert "access-control-allow-origin" not in preflight("http://elsewhere.example").headers
    answer = guarded.get("/v1/models", headers={"Origin": EDITOR})
    assert answer.headers["access-control-allow-origin"] == EDITOR


def test_a_full_queue_answers_503_and_the_queue_goes_on(guarded):
    answers = {}

    def send(name, steps, size=64):
        answers[name] = guarded.post("/sdapi/v1/txt2img", {"prompt": name, **TINY, "steps": steps, "width": size,
                                                           "height": size})

    def until(condition, what):  # a bounded wait: a broken queue fails the test instead of hanging it
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, f"waited 120 s for {what}; answers: {answers}"
            time.sleep(0.05)

    # the longest job the schedule allows, interrupted below: it runs for as long as the test needs it
    long = threading.Thread(target=send, args=("long", 999, 128))
    long.start()
    def long_running():  # the worker has taken the long job off the queue and is sampling it
        state = guarded.get("/sdapi/v1/progress").json()["state"]
        return state["job"] and state["sampling_steps"] == 999 and state["sampling_step"] >= 1

    until(long_running, "the long job")
    waiting = threading.Thread(target=send, args=("waiting", 1))
    waiting.start()
    until(lambda: guarded.status()["queue"]["waiting"] >= 1, "a job waiting")
    full = guarded.post("/sdapi/v1/txt2img", {"prompt": "one too many", **TINY})
    assert full.status_code == 503 and "queue is full" in full.json()["error"]
    guarded.post("/sdapi/v1/interrupt")
    long.join(120)
    waiting.join(120)
    assert answers["long"].status_code == 200 and answers["waiting"].status_code == 200
    assert len(answers["waiting"].json()["images"]) == 1


BAD = [  # (path, body, status, words of the message)
    ("/sdapi/v1/img2img", {"init_images": ["not base64 !"], **TINY}, 400, "not valid base64"),
    ("/sdapi/v1/img2img", {"init_images": [base64.b64encode(b"hello").decode()], **TINY}, 400, "not an image"),
    ("/sdapi/v1/img2img", {"init_images": [square((400, 300))], **TINY}, 413, "above the limit"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": "many"}, 400, "steps must be an integer"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 0}, 400, "steps must be at least 1"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 5000}, 400, "steps must be at most 1000"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "seed": -5}, 400, "seed must not be negative"),
    ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "/etc"}}, 404, "unknown"),
    ("/sdapi/v1/img2img", {"init_images": [square()], "mask": square(value=0), **TINY}, 400, "all black"),
    ("/kandinsky/v1/generate", {"prompt": "x", "colour": "red"}, 400, "unknown field 'colour'"),
    ("/kandinsky/v1/generate", {"prompt": 3}, 400, "prompt must be a string"),
    ("/kandinsky/v1/generate", {"prompt": "x", "linear_prior": "/etc/passwd"}, 400, "names a file on the server"),
    ("/kandinsky/v1/generate", {"prompt": "x", "checkpoint": "elsewhere"}, 404, "unknown checkpoint"),
    ("/kandinsky/v1/generate", [1, 2], 400, "JSON object"),
    ("/kandinsky/v1/inpaint", {"prompt": "x", "image": square(), "mask": "data:image/png;base64,@@"}, 400, "base64"),
    ("/kandinsky/v1/teleport", {}, 404, "unknown mode"),
    ("/kandinsky/v1/generate", {"prompt": "x", **TINY, "width": 32}, 400, "minimum"),  # found on the worker
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, 400, "WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, 400, "b64_json"),
    ("/v1/images/generations", {"prompt": "x", "n": "two"}, 400, "n must be int"),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{p.split('/')[-1]}-{w}" for p, _, _, w in BAD])
def test_bad_input_gets_a_4xx_with_one_json_line(guarded, path, body, status, words):
    answer = guarded.post(path, body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert words in message and "\n" not in message
    assert guarded.post("/kandinsky/v1/generate", {"prompt": "still serving", **TINY}).status_code == 200


def test_bodies_that_are_not_json_or_too_large(guarded):
    answer = guarded.post("/sdapi/v1/txt2img", data=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    connection.putrequest("POST", "/sdapi/v1/txt2img")
    connection.putheader("Authorization", f"Bearer {KEY}")
    connection.putheader("Content-Length", str(10**12))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "larger than" in json.loads(answer.read())["error"]


def test_a_mask_of_another_size_is_resized(guarded):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    answer = guarded.post("/sdapi/v1/img2img", {"init_images": [square()], "mask": b64(Image.fromarray(mask)),
                                                "mask_blur": 0, "prompt": "x", **TINY})
    assert answer.status_code == 200, answer.text
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).convert("RGB"))
    assert image.shape == (64, 64, 3) and (image[:8, :8] == (128, 60, 200)).all()  # kept outside the mask


def test_own_endpoints_fuse_vary_and_outpaint(guarded):
    picture = square()
    fused = guarded.post("/kandinsky/v1/fuse", {"items": ["a red cat", {"image": picture}], "weights": [1, 3],
                                                "seed": 2, **TINY}).json()
    assert fused["images"][0]["metadata"]["mode"] == "fuse" and fused["images"][0]["seed"] == 2
    varied = guarded.post("/kandinsky/v1/vary", {"image": picture, "prompt": "blue", "num_images": 2, **TINY}).json()
    assert len(varied["images"]) == 2
    grown = guarded.post("/kandinsky/v1/outpaint", {"prompt": "more", "image": picture, "expand": "right=64",
                                                    "steps": 1, "prior_steps": 1}).json()
    image = Image.open(io.BytesIO(base64.b64decode(grown["images"][0]["png"])))
    assert image.size == (128, 64)
    schema = guarded.get("/kandinsky/v1/schema").json()
    assert schema["inpaint"]["mask"]["type"] == "image" and schema["generate"]["steps"]["max"] == 1000
    assert "linear_prior" not in schema["generate"]


def test_a_server_of_several_models_switches_among_them_by_name(prior22, decoder22, tmp_path):
    """`--model A --model B`: both listed, one loaded at a time; sd_model_checkpoint switches, the next job runs
    on the other model, and an unknown name is refused before anything loads."""
    import hubserver

    with hubserver.HubServer(lifetime=240) as hub:
        tiny = {part: hub.add(f"tiny-community/kandinsky-tiny-{part}", folder)
                for part, folder in {"prior": prior22, "decoder": decoder22}.items()}
        registry = tmp_path / "registry.toml"
        registry.write_text(hubserver.registry_toml({"tiny": tiny, "tiny-b": tiny}))
        env = {"HF_ENDPOINT": hub.url, "KANDINSKY_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"),
               "KANDINSKY_REGISTRY": str(registry), "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}
        proc = subprocess.run([sys.executable, "-m", "kcli", "serve", "--model", "tiny", "--model", "nope"],
                              capture_output=True, text=True, env={**os.environ, **env}, timeout=120, check=False)
        assert proc.returncode == 1 and one_line_error(proc) == (
            "error: unknown model 'nope': known models are tiny, tiny-b")
        with Server("--model", "tiny", "--model", "tiny-b", env=env) as server:
            assert [m["title"] for m in server.get("/sdapi/v1/sd-models").json()] == ["tiny", "tiny-b"]
            assert server.status()["checkpoint"] == "tiny" and server.status()["loads"]["models"] == 1
            assert server.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-b"}).status_code == 200
            assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-b"
            answer = server.post("/sdapi/v1/txt2img", {"prompt": "a red cat", "seed": 3, "steps": 1, "width": 64,
                                                       "height": 64})
            assert answer.status_code == 200 and len(answer.json()["images"]) == 1
            status = server.status()
            assert status["checkpoint"] == "tiny-b" and status["loads"]["models"] == 2
            assert json.loads(answer.json()["info"])["all_seeds"] == [3]
