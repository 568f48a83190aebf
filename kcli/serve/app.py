"""The ASGI application: routes of the three APIs, the web page at ``/``, errors as one JSON line.

Starlette, not FastAPI: request bodies come from Kandinsky's own settings schema (``kcli.pipelines.settings``)
and the A1111/OpenAI field tables, checked by hand with one-line messages; FastAPI's pydantic models would be
a second schema to keep in step, with error bodies of another shape. Starlette gives the routing,
multipart forms and static files with a small dependency tree; uvicorn serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from kcli.errors import KandinskyError
from kcli.serve.errors import ApiError, one_line
from kcli.serve.models import Checkpoint, Models
from kcli.serve.security import MAX_BODY, Guard
from kcli.serve.worker import Worker, collect

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    checkpoints: list[Checkpoint]
    load: dict = field(default_factory=dict)  # the Loading settings every checkpoint opens with (device, dtype ...)
    api_key: str | None = None
    cors: list[str] = field(default_factory=list)
    queue: int = 16  # jobs that may wait behind the running one
    max_body: int = MAX_BODY


def create_app(config: ServerConfig, models: Models | None = None) -> Starlette:
    from kcli.serve import a1111, openai_api, own

    worker = Worker(None, config.queue)
    models = models or Models(config.checkpoints, config.load, events=worker)
    worker.models = models
    middleware = []
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=config.cors, allow_methods=["*"],
                                     allow_headers=["*"]))
    middleware.append(Middleware(Guard, api_key=config.api_key, max_body=config.max_body))
    routes = [*a1111.routes(), *openai_api.routes(), *own.routes(),
              Mount("/", app=StaticFiles(directory=STATIC, html=True), name="static")]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.stop()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={Exception: _error, HTTPException: _error, KandinskyError: _error})
    app.state.worker, app.state.models, app.state.config = worker, models, config
    return app


async def _error(request: Request, error: Exception) -> JSONResponse:
    if isinstance(error, HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)
    status = getattr(error, "status", 400) if isinstance(error, KandinskyError) else 500
    if type(error).__name__ == "OutOfMemoryError":
        return JSONResponse({"error": "out of GPU memory: try a smaller size or fewer images"}, status_code=507)
    return JSONResponse({"error": one_line(error)}, status_code=status)


async def read_json(request: Request):
    import json

    raw = await request.body()
    try:
        return json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError("the body is not valid JSON") from None


async def submit(request: Request, name: str, job):
    """Queue ``job(models)`` on the worker and wait for its result (a full queue is a 503 at once). A client
    may name the job (header ``X-Kandinsky-Job``, 8 to 64 hex digits) to find it in ``/kandinsky/v1/status``."""
    tag = request.headers.get("x-kandinsky-job", "")
    if tag and not (8 <= len(tag) <= 64 and all(c in "0123456789abcdef" for c in tag)):
        raise ApiError("the header X-Kandinsky-Job must be 8 to 64 lowercase hex digits")
    return await asyncio.wrap_future(request.app.state.worker.submit(name, job, tag))


async def generate(request: Request, made, checkpoint: str | None = None):
    """Run the pipeline request ``made`` on the worker: (results, interrupted)."""
    models = request.app.state.models
    if checkpoint is not None:
        models.check_name(checkpoint)

    def job(models):
        if checkpoint is not None:
            models.select(checkpoint)
        return collect(models.for_request(made).run(made))

    return await submit(request, made.mode, job)
