"""The command line's ``--server URL``: a job sent to a running ``kandinsky serve``, no model loaded here.

``Remote(url).run(request)`` posts the request to Kandinsky's own API (``kcli.serve.own``: its settings by
name, pictures as base64) and yields results shaped like the pipeline's, so the command line saves the same
files. The images carry the server's metadata (model, checkpoints, sampler, device), with the inputs this
machine names (picture paths) put back, as a local run records them. Standard library only.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import secrets
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines.settings import record
from kcli.serve.own import REFUSED, fields_of

TIMEOUT = 24 * 3600  # seconds: a job waits in the queue, then runs; the server answers when it is done
EVERY = 0.25  # seconds between two looks at the server's progress while a job runs


@dataclass
class RemoteResult:
    image: object
    seed: int
    request: object
    timings: dict = field(default_factory=dict)
    score: float | None = None
    metadata: dict = field(default_factory=dict)


def body_of(request) -> dict:
    """The JSON body for ``request``: its settings that differ from their defaults, pictures as base64."""
    body = {}
    for name, f in fields_of(type(request)).items():
        value = getattr(request, name)
        if value is None or value == f.default:
            continue
        body[name] = _json(value)
    for name in REFUSED:
        f = next((f for f in dataclasses.fields(request) if f.name == name), None)
        if f is not None and getattr(request, name) not in (None, False, f.default):
            raise KandinskyError(f"--{name.replace('_', '-')} does not work with --server: it {REFUSED[name]}")
    return body


def _json(value):
    if isinstance(value, Path):
        return base64.b64encode(value.read_bytes()).decode("ascii")
    if hasattr(value, "convert"):  # a PIL picture
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")
    if isinstance(value, tuple):
        return [{"image": _json(v)} if isinstance(v, Path) or hasattr(v, "convert") else v for v in value]
    return value


class Remote:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = TIMEOUT, events=None):
        self.url, self.api_key, self.timeout, self.events = url.rstrip("/"), api_key, timeout, events

    def call(self, method: str, path: str, body: dict | None = None, tag: str = "") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **({"X-Kandinsky-Job": tag} if tag else {})}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error") or e.reason
            except (ValueError, AttributeError):
                message = e.reason
            raise KandinskyError(f"the server at {self.url} answered {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise KandinskyError(f"cannot reach the server at {self.url} ({reason})") from None

    def run_many(self, requests: list, events=None, keep_going: bool = True):
        """``Kandinsky.run_many``'s contract, one request after another on the server."""
        for i, request in enumerate(requests):
            try:
                for result in self.run(request):
                    yield i, result
            except Exception as e:
                if not keep_going:
                    raise
                yield i, e

    def run(self, request):
        """One result per image, as ``Kandinsky.run`` yields them (all at once, when the server is done)."""
        from PIL import Image

        body, tag = body_of(request), secrets.token_hex(8)
        with Watch(self, tag, request):  # the server's progress on this job, relayed to ``events``
            answer = self.call("POST", f"/kandinsky/v1/{request.mode}", body, tag)
        for item in answer["images"]:
            image = Image.open(io.BytesIO(base64.b64decode(item["png"])))
            image.load()
            made = dataclasses.replace(request, seed=item["seed"], num_images=1)
            yield RemoteResult(image, item["seed"], made, item["metadata"].get("timings", {}), item.get("score"),
                               local_metadata(item["metadata"], made))
        if answer.get("interrupted"):
            raise KandinskyError("the job was interrupted on the server: finished images were kept")


class Watch:
    """While a job's request waits for its answer, a thread looks at the server's status every ``EVERY``
    seconds and tells ``remote.events`` where the job (found by its tag) stands: the image it is on and each
    stage's step, as a local run would. A stage that ended between two looks is reported ended."""

    def __init__(self, remote: Remote, tag: str, request):
        self.remote, self.tag, self.seeds = remote, tag, request.image_seeds() if request.seed is not None else []
        self.stop, self.image, self.stage = threading.Event(), 0, None  # stage: (name, total) being reported
        self.thread = threading.Thread(target=self._follow, name="kandinsky-remote-progress", daemon=True)

    def __enter__(self):
        if self.remote.events is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if exc[0] is None:
            self._end_stage()

    def _follow(self) -> None:
        while not self.stop.wait(EVERY):
            try:
                running = self.remote.call("GET", "/kandinsky/v1/status").get("running") or {}
            except KandinskyError:  # the job's own answer reports a server gone away
                continue
            if running.get("job") == self.tag:
                self._heard(running)

    def _heard(self, p: dict) -> None:
        events = self.remote.events
        if p.get("image", 0) >= 1 and p["image"] != self.image:
            self._end_stage()
            self.image = p["image"]
            seed = self.seeds[self.image - 1] if self.image <= len(self.seeds) else 0
            events.image(self.image, p.get("images", 1), seed)
        if p.get("stage") and p.get("total"):
            if self.stage and self.stage[0] != p["stage"]:
                self._end_stage()
            self.stage = (p["stage"], p["total"])
            events.progress(p["stage"], p["done"], p["total"])

    def _end_stage(self) -> None:
        if self.stage is not None:
            self.remote.events.progress(self.stage[0], self.stage[1], self.stage[1])
            self.stage = None


def local_metadata(meta: dict, request) -> dict:
    """The server's metadata, with what this machine knows better: the label and the inputs' paths."""
    mine = record(request)
    inputs = dict(meta.get("inputs") or {})
    for key, value in mine["inputs"].items():
        theirs = inputs.get(key)
        if theirs is None or (isinstance(theirs, list) and None in theirs):
            inputs[key] = value
    settings = {**meta.get("settings", {}), "prompt": mine["settings"]["prompt"]}
    return {**meta, "settings": settings, "inputs": inputs}
