"""Kandinsky's own JSON API: every mode of ``kcli.pipelines.requests``, with bodies from the settings schema.

    POST /kandinsky/v1/{generate|image-to-image|fuse|vary|inpaint|outpaint}
        {"prompt": "...", "seed": 7, "steps": 30, "image": "<base64>", "mask": "<base64>", ...}
    -> {"images": [{"png": "<base64 PNG with metadata>", "seed": 7, "metadata": {...}}], "interrupted": false}
    GET  /kandinsky/v1/status   the checkpoints, how often models were loaded, the queue, the running job's
                                progress (its mode, the client's X-Kandinsky-Job name, image, stage, step)
    GET  /kandinsky/v1/schema   each mode's fields, types, defaults and bounds (for the web page)

A body's keys are the request's settings (those a batch line or a flag may set); pictures are base64;
``fuse``'s items are texts or ``{"image": "<base64>"}``. Keys the schema does not know, values of the wrong
type, and settings that would name a file on the server are refused with a 400, before the queue.
``checkpoint`` picks one of the server's checkpoints for this request.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kcli.pipelines.requests import REQUESTS, Fuse
from kcli.pipelines.settings import base_type, settings_of, spec_of
from kcli.serve.errors import ApiError
from kcli.serve.images import decode_image

MODES = {cls.mode: cls for cls in REQUESTS}
REFUSED = {  # settings that would make the server read or write its own files
    "linear_prior": "names a file on the server", "depth_model": "names a model folder on the server",
    "save_hint": "writes a file on the server",
}


def fields_of(cls) -> dict[str, dataclasses.Field]:
    """The settings a body may set for ``cls``: all but those only recorded, and the refused ones."""
    return {f.name: f for f in settings_of(cls)
            if not (spec_of(f).commands is not None and not spec_of(f).commands) and f.name not in REFUSED}


def request_from_body(cls, body: dict, extra_keys: tuple = ()):
    """The request ``cls`` that ``body`` describes, checked (``Request.check``) before it is queued."""
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    fields = fields_of(cls)
    values = {}
    for key, value in body.items():
        if key in extra_keys:
            continue
        if key in REFUSED:
            raise ApiError(f"{key} is not accepted by the server: it {REFUSED[key]}")
        if key not in fields:
            raise ApiError(f"unknown field {key!r} for {cls.mode} (known: {', '.join(fields)})")
        if value is not None:
            values[key] = convert(fields[key], value, cls)
    request = cls(**values)
    request.check()
    return request


def convert(f: dataclasses.Field, value, cls):
    """A JSON value as the setting's type; pictures decoded from base64."""
    kind = base_type(f.type)
    if kind is Path:
        return decode_image(value, f.name)
    if kind is tuple and cls is Fuse and f.name == "items":
        if not isinstance(value, list):
            raise ApiError("items must be a list of texts and {\"image\": base64} objects")
        return tuple(_item(v) for v in value)
    if kind in (tuple, list):
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise ApiError(f"{f.name} must be a list of numbers")
        return tuple(float(v) for v in value)
    if kind is float and _is_number(value):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind in (int, str, bool) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ApiError(f"{f.name} must be {names.get(kind, kind.__name__)}, got {type(value).__name__}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _item(value):
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return value["text"]
    if isinstance(value, dict) and set(value) == {"image"}:
        return decode_image(value["image"], "items image")
    raise ApiError("each item must be a text or {\"image\": base64}")


def schema() -> dict:
    """Each mode's fields: type, default, bounds and help (the web page draws its settings from this)."""
    out = {}
    for mode, cls in MODES.items():
        fields = {}
        for name, f in fields_of(cls).items():
            spec, kind = spec_of(f), base_type(f.type)
            default = None if f.default is dataclasses.MISSING else f.default
            fields[name] = {"type": "image" if kind is Path else kind.__name__, "default": default,
                            "min": spec.min, "max": spec.max, "help": spec.help}
        out[mode] = fields
    return out


# ---- routes ----------------------------------------------------------------------------------------------

async def run_mode(http):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from kcli.serve.app import generate, read_json

    mode = http.path_params["mode"]
    if mode not in MODES:
        raise ApiError(f"unknown mode {mode!r}: use {', '.join(MODES)}", 404)
    body = await read_json(http)
    checkpoint = body.pop("checkpoint", None) if isinstance(body, dict) else None
    made = await run_in_threadpool(request_from_body, MODES[mode], body)
    made = made.seeded()
    results, interrupted = await generate(http, made, checkpoint)
    images = await run_in_threadpool(_encoded, results)
    return JSONResponse({"images": images, "interrupted": interrupted})


def _encoded(results) -> list[dict]:
    from kcli.serve.images import png_base64

    return [{"png": png_base64(r.image, r.metadata), "seed": r.seed, "metadata": r.metadata, "score": r.score}
            for r in results]


async def status(http):
    from starlette.responses import JSONResponse

    import kcli

    app = http.app
    worker, models = app.state.worker, app.state.models
    with worker.lock:
        s = worker.state
        running = {"mode": s.job, "job": s.tag or None, "image": s.image, "images": s.images, "stage": s.stage,
                   "done": s.done, "total": s.total} if s.job else None
        finished = s.finished
    return JSONResponse({"version": kcli.__version__, "checkpoint": models.current, "checkpoints": models.names(),
                         "loads": models.loads, "queue": {"waiting": worker.waiting(), "size": worker.jobs.maxsize},
                         "running": running, "finished": finished})


async def get_schema(http):
    from starlette.responses import JSONResponse

    return JSONResponse(schema())


def routes() -> list:
    from starlette.routing import Route

    return [Route("/kandinsky/v1/status", status, methods=["GET"]),
            Route("/kandinsky/v1/schema", get_schema, methods=["GET"]),
            Route("/kandinsky/v1/{mode}", run_mode, methods=["POST"])]
