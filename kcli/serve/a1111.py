"""AUTOMATIC1111's web UI API, as ``webuiapi``, Open WebUI, SillyTavern and others call it.

txt2img and img2img map onto the pipeline's requests: ``prompt``, ``negative_prompt``, ``seed`` (-1 =
random), ``steps``, ``cfg_scale`` (the decoder's guidance), ``width``, ``height``, ``batch_size`` x ``n_iter``
images, ``sampler_name``; img2img's ``init_images`` and ``denoising_strength``; a ``mask`` makes it an inpaint
(``inpainting_mask_invert``, ``mask_blur``). Kandinsky's own ``prior_steps`` and ``prior_guidance`` may be
given too. Fields that do not apply are ignored and ``info`` names them (``ignored``); a sampler we do not
have falls back to the checkpoint's own and ``info`` says so (``sampler_fallback``).
"""

from __future__ import annotations

import json
import time

from kcli.pipelines import imagemeta
from kcli.pipelines.requests import SAMPLERS, ImageToImage, Inpaint, TextToImage
from kcli.serve.errors import ApiError
from kcli.serve.images import decode_image, png_base64

NUMBER = (int, float)
APPLIES = {  # A1111 field -> its type; what every request maps onto the pipeline
    "prompt": str, "negative_prompt": str, "seed": int, "steps": int, "cfg_scale": NUMBER, "width": int,
    "height": int, "batch_size": int, "n_iter": int, "sampler_name": str, "sampler_index": str, "scheduler": str,
    "prior_steps": int, "prior_guidance": NUMBER, "override_settings": dict,
}
IMG2IMG = {"init_images": list, "denoising_strength": NUMBER, "mask": str, "inpainting_mask_invert": int,
           "mask_blur": NUMBER}
DEFAULTS = {  # A1111's defaults of fields that do not apply: a field left at its default is not named
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "eta": 1.0, "s_noise": 1, "s_churn": 0, "s_tmin": 0,
    "s_tmax": 0, "override_settings_restore_afterwards": True, "send_images": True, "image_cfg_scale": 1.5,
    "inpaint_full_res": True, "initial_noise_multiplier": 1, "resize_mode": 0, "inpainting_fill": 1,
    "denoising_strength": 0.7, "sampler_index": "Euler", "script_name": None,
}
ALIASES = {  # A1111 sampler -> ours, in order of preference (Euler ones where the samplers exist)
    "Euler a": ("euler-a", "euler_a", "euler-ancestral", "euler-ancestral-discrete"),
    "Euler": ("euler",), "DDIM": ("ddim",), "DDPM": ("ddpm",), "DPM++ 2M": ("dpm++2m",),
    "DPM++ 2M Karras": ("dpm++2m-karras",),
}


def sampler_for(name: str | None, scheduler: str | None = None) -> tuple[str | None, str | None]:
    """(our sampler or None for the checkpoint's own, a note when the name fell back)."""
    if not name or name.lower() in ("default", "automatic"):
        return None, None
    if scheduler and scheduler.lower() == "karras" and not name.endswith("Karras"):
        name = f"{name} Karras"
    if name in SAMPLERS:
        return name, None
    for ours in ALIASES.get(name, ()):
        if ours in SAMPLERS:
            return ours, None
    return None, f"sampler {name!r} is not available: used the checkpoint's own"


def a1111_name(ours: str) -> str:
    return next((a for a, names in ALIASES.items() if ours in names), ours)


def _typed(body: dict, table: dict) -> dict:
    out = {}
    for key, kind in table.items():
        value = body.get(key)
        if value is None:
            continue
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            want = {int: "an integer", NUMBER: "a number", str: "a string", list: "a list", dict: "an object"}[kind]
            raise ApiError(f"{key} must be {want}, got {type(value).__name__}")
        out[key] = value
    return out


def ignored(body: dict, table: dict) -> list[str]:
    """Fields given with a value that would change something, which we do not apply."""
    return sorted(k for k, v in body.items() if k not in table and v not in (None, False, "", [], {}, 0)
                  and DEFAULTS.get(k, object()) != v)


def build(body: dict, img2img: bool):
    """(the pipeline request, what info reports besides the results)."""
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    table = {**APPLIES, **(IMG2IMG if img2img else {})}
    given = _typed(body, table)
    skip = ignored(body, table)
    sampler, fallback = sampler_for(given.get("sampler_name") or given.get("sampler_index"), given.get("scheduler"))
    seed = given.get("seed", -1)
    count = given.get("batch_size", 1) * given.get("n_iter", 1)
    common = {"prompt": given.get("prompt", ""), "negative": given.get("negative_prompt") or None,
              "seed": None if seed == -1 else seed, "num_images": count, "sampler": sampler,
              "width": given.get("width"), "height": given.get("height")}
    for ours, theirs in (("steps", "steps"), ("guidance", "cfg_scale"), ("prior_steps", "prior_steps"),
                         ("prior_guidance", "prior_guidance")):
        if theirs in given:
            common[ours] = given[theirs]
    if not img2img:
        made = TextToImage(**common)
    else:
        images = given.get("init_images") or []
        if not images:
            raise ApiError("img2img needs init_images (one base64 picture)")
        if len(images) > 1:
            skip.append("init_images[1:]")
        picture = decode_image(images[0], "init_images[0]")
        if "mask" in given:
            mask = decode_image(given["mask"], "mask")
            if given.get("mask_blur", 0) > 0:
                from PIL import ImageFilter

                mask = mask.convert("L").filter(ImageFilter.GaussianBlur(given["mask_blur"]))
            if "denoising_strength" in given:
                skip.append("denoising_strength")  # the inpainting decoder repaints from noise
            made = Inpaint(image=picture, mask=mask, invert_mask=bool(given.get("inpainting_mask_invert", 0)),
                           **common)
        else:
            made = ImageToImage(init=picture, strength=given.get("denoising_strength", 0.75), **common)
    made.check()
    checkpoint = (given.get("override_settings") or {}).get("sd_model_checkpoint")
    return made.seeded(), {"ignored": sorted(set(skip)), "sampler_fallback": fallback, "checkpoint": checkpoint,
                           "batch_size": given.get("batch_size", 1), "n_iter": given.get("n_iter", 1)}


def respond(body: dict, made, results, interrupted: bool, extra: dict, model: str) -> dict:
    metas = [r.metadata for r in results]
    first = metas[0] if metas else {"settings": {}}
    s = first["settings"]
    info = {
        "prompt": made.label, "all_prompts": [made.label] * len(results), "negative_prompt": made.negative or "",
        "all_negative_prompts": [made.negative or ""] * len(results),
        "seed": made.seed, "all_seeds": [r.seed for r in results], "subseed": -1, "all_subseeds": [-1] * len(results),
        "width": s.get("width"), "height": s.get("height"), "sampler_name": a1111_name(first.get("sampler", "")),
        "cfg_scale": made.guidance, "steps": made.steps, "batch_size": extra["batch_size"], "n_iter": extra["n_iter"],
        "denoising_strength": getattr(made, "strength", None), "sd_model_name": model, "sd_model_hash": None,
        "infotexts": [imagemeta.a1111_text(m) for m in metas], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "ignored": extra["ignored"], "interrupted": interrupted,
    }
    if extra["sampler_fallback"]:
        info["sampler_fallback"] = f"{extra['sampler_fallback']} ({first.get('sampler', 'default')})"
    parameters = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    return {"images": [png_base64(r.image, r.metadata) for r in results], "parameters": parameters,
            "info": json.dumps(info)}


# ---- routes ----------------------------------------------------------------------------------------------

async def _generate(http, img2img: bool):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from kcli.serve.app import generate, read_json

    body = await read_json(http)
    made, extra = await run_in_threadpool(build, body, img2img)
    results, interrupted = await generate(http, made, extra["checkpoint"])
    answer = await run_in_threadpool(respond, body, made, results, interrupted, extra, http.app.state.models.current)
    return JSONResponse(answer)


async def txt2img(http):
    return await _generate(http, False)


async def img2img(http):
    return await _generate(http, True)


async def sd_models(http):
    from starlette.responses import JSONResponse

    return JSONResponse([{"title": n, "model_name": n, "hash": None, "sha256": None, "filename": n, "config": None}
                         for n in http.app.state.models.names()])


async def options(http):
    from starlette.responses import JSONResponse

    from kcli.serve.app import read_json, submit

    models = http.app.state.models
    if http.method == "POST":
        body = await read_json(http)
        if not isinstance(body, dict):
            raise ApiError("the body must be a JSON object")
        name = body.get("sd_model_checkpoint")
        if name is not None:
            models.check_name(name)
            await submit(http, "options", lambda m: m.select(name))
        return JSONResponse({"ignored": sorted(k for k in body if k != "sd_model_checkpoint")})
    return JSONResponse({"sd_model_checkpoint": models.current, "sd_checkpoint_hash": None, "samples_format": "png"})


async def samplers(http):
    from starlette.responses import JSONResponse

    ours = [s for s in SAMPLERS if s != "default"]
    return JSONResponse([{"name": a1111_name(s), "aliases": [s], "options": {}} for s in ours])


async def progress(http):
    from starlette.responses import JSONResponse

    worker = http.app.state.worker
    with worker.lock:
        s = worker.state
        fraction, running = s.fraction(), bool(s.job)
        elapsed = time.time() - s.started if running else 0.0
        state = {"skipped": False, "interrupted": worker.interrupt.is_set() and running, "job": s.job,
                 "job_count": worker.waiting() + running, "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
                 "job_no": max(s.image - 1, 0), "sampling_step": s.done if running else 0,
                 "sampling_steps": s.total if running else 0}
        text = f"{s.stage} {s.done}/{s.total}" if running and s.stage else None
    eta = elapsed / fraction - elapsed if fraction > 0 else None
    return JSONResponse({"progress": fraction, "eta_relative": eta, "state": state, "current_image": None,
                         "textinfo": text})


async def interrupt(http):
    from starlette.responses import JSONResponse

    worker = http.app.state.worker
    if worker.state.job:
        worker.interrupt.set()
    return JSONResponse({})


async def png_info(http):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from kcli.serve.app import read_json

    body = await read_json(http)
    if not isinstance(body, dict) or "image" not in body:
        raise ApiError("png-info needs image (a base64 picture)")
    image = await run_in_threadpool(decode_image, body["image"], "image")
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    try:
        parameters = json.loads(items.get(imagemeta.JSON_KEY, "{}"))
    except json.JSONDecodeError:
        parameters = {}
    return JSONResponse({"info": items.get(imagemeta.A1111_KEY, ""), "items": items, "parameters": parameters})


def routes() -> list:
    from starlette.routing import Route

    return [Route("/sdapi/v1/txt2img", txt2img, methods=["POST"]),
            Route("/sdapi/v1/img2img", img2img, methods=["POST"]),
            Route("/sdapi/v1/sd-models", sd_models, methods=["GET"]),
            Route("/sdapi/v1/options", options, methods=["GET", "POST"]),
            Route("/sdapi/v1/samplers", samplers, methods=["GET"]),
            Route("/sdapi/v1/progress", progress, methods=["GET"]),
            Route("/sdapi/v1/interrupt", interrupt, methods=["POST"]),
            Route("/sdapi/v1/png-info", png_info, methods=["POST"])]
