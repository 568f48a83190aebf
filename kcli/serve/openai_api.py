"""OpenAI's images API, as the ``openai`` SDK, LibreChat and Open WebUI call it.

    POST /v1/images/generations   {"model", "prompt", "n", "size": "512x512", "response_format": "b64_json"}
    POST /v1/images/edits         multipart: image, mask (transparent pixels are repainted), prompt, n, size
    GET  /v1/models

``model`` names one of the server's checkpoints (left out: the current one). Images come back as
``b64_json`` PNGs carrying the command line's metadata; ``url`` responses are refused (the server keeps no
files). Kandinsky's own settings may be added to a body (the SDK's ``extra_body``): ``seed``, ``steps``,
``guidance``, ``prior_steps``, ``prior_guidance``, ``negative``, ``sampler``. Other fields (quality, style,
user ...) do not apply and are ignored.
"""

from __future__ import annotations

import time

from kcli.pipelines.requests import Inpaint, TextToImage
from kcli.serve.errors import ApiError
from kcli.serve.images import open_image, png_base64

EXTRA = {"seed": int, "steps": int, "guidance": float, "prior_steps": int, "prior_guidance": float,
         "negative": str, "sampler": str, "n": int, "prompt": str, "size": str, "model": str,
         "response_format": str}


def _typed(body: dict, form: bool) -> dict:
    out = {}
    for key, kind in EXTRA.items():
        value = body.get(key)
        if value is None:
            continue
        if form and kind is not str:  # multipart fields are text
            try:
                value = kind(value)
            except ValueError:
                raise ApiError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ApiError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
        out[key] = value
    return out


def _size(size: str | None) -> dict:
    if size in (None, "auto"):
        return {}
    width, sep, height = size.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise ApiError(f"size must be WIDTHxHEIGHT, e.g. 512x512, got {size!r}")
    return {"width": int(width), "height": int(height)}


def _settings(given: dict) -> dict:
    if given.get("response_format", "b64_json") != "b64_json":
        raise ApiError("only response_format b64_json is supported: the server keeps no files to link to")
    keys = ("seed", "steps", "guidance", "prior_steps", "prior_guidance", "negative", "sampler")
    return {"prompt": given.get("prompt", ""), "num_images": given.get("n", 1), **_size(given.get("size")),
            **{k: given[k] for k in keys if k in given}}


def _answer(results) -> dict:
    return {"created": int(time.time()),
            "data": [{"b64_json": png_base64(r.image, r.metadata), "revised_prompt": None} for r in results]}


# ---- routes ----------------------------------------------------------------------------------------------

async def generations(http):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from kcli.serve.app import generate, read_json

    body = await read_json(http)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    given = _typed(body, form=False)
    made = TextToImage(**_settings(given))
    made.check()
    results, _ = await generate(http, made.seeded(), given.get("model"))
    return JSONResponse(await run_in_threadpool(_answer, results))


async def edits(http):
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse

    from kcli.serve.app import generate

    form = await http.form(max_files=8, max_fields=64)
    uploads = [v for k, v in form.multi_items() if k in ("image", "image[]") and isinstance(v, UploadFile)]
    if not uploads:
        raise ApiError("images/edits needs an image file")
    given = _typed({k: v for k, v in form.items() if isinstance(v, str)}, form=True)
    image = open_image(await uploads[0].read(), "image")
    mask_file = form.get("mask")
    if mask_file is not None and not isinstance(mask_file, UploadFile):
        raise ApiError("mask must be a file")
    mask = open_image(await mask_file.read(), "mask") if mask_file is not None else image
    if mask_file is None and mask.mode not in ("RGBA", "LA") and not (mask.mode == "P" and "transparency" in mask.info):
        raise ApiError("without a mask, the image needs transparent pixels to mark what to repaint")
    made = Inpaint(image=image.convert("RGB"), mask=mask, **_settings(given))
    await run_in_threadpool(made.check)
    results, _ = await generate(http, made.seeded(), given.get("model"))
    return JSONResponse(await run_in_threadpool(_answer, results))


async def models(http):
    from starlette.responses import JSONResponse

    return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                     "owned_by": "kandinsky"} for n in http.app.state.models.names()]})


def routes() -> list:
    from starlette.routing import Route

    return [Route("/v1/images/generations", generations, methods=["POST"]),
            Route("/v1/images/edits", edits, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"])]
