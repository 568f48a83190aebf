"""``kandinsky serve``: load the models once and answer AUTOMATIC1111, OpenAI and Kandinsky API calls, with
the web editor at ``/``. The server itself is ``kcli.serve``; its load-time options come from the schema."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from kcli.cli import app
from kcli.cli.flags import _parameter
from kcli.pipelines.settings import Loading, settings_of

LOAD = ("prior", "decoder", "offline", "device", "dtype", "memory", "offload", "tile", "compile")
OWN = {  # the server's own options, after the schema's load-time ones
    "model": (list[str] | None, None, ("A registry model to serve (2.2 by default). Repeatable: requests switch "
                                       "among them by name (sd_model_checkpoint, OpenAI's model); one is "
                                       "loaded at a time.")),
    "inpaint_decoder": (str | None, None, ("With --prior/--decoder: the inpainting decoder that inpaint and "
                                           "outpaint use (a folder or hub id).")),
    "host": (str, "127.0.0.1", "Address to listen on. Any but loopback needs --api-key (or --insecure)."),
    "port": (int, 7860, "Port to listen on."),
    "api_key": (str | None, None, "Require Authorization: Bearer KEY on every API route (or KANDINSKY_API_KEY)."),
    "insecure": (bool, False, "Allow a non-loopback --host without an API key."),
    "cors": (list[str] | None, None, "Allow browser calls from this origin (repeatable); off by default."),
    "queue": (int, 16, "Jobs that may wait behind the running one; more get 503."),
}


def serve(**options) -> None:
    from kcli.cli.errors import user_errors

    with user_errors():
        _serve(**options)


def _serve(model, inpaint_decoder, host, port, api_key, insecure, cors, queue, **load) -> None:
    import os

    from kcli.cli import render
    from kcli.errors import KandinskyError

    try:
        import uvicorn

        from kcli.serve.app import ServerConfig, create_app
    except ImportError as e:
        raise KandinskyError(f"kandinsky serve needs the [serve] extra: pip install 'kandinsky-cli[serve]' ({e.name} "
                             "is missing)") from None
    from kcli.serve.models import Checkpoint, default_name
    from kcli.serve.security import check_binding

    api_key = api_key or os.environ.get("KANDINSKY_API_KEY") or None
    check_binding(host, api_key, insecure)
    if queue < 1:
        raise KandinskyError(f"--queue must be at least 1, got {queue}")
    named = {k: load.pop(k) for k in ("prior", "decoder")}
    models = list(dict.fromkeys(model or []))
    if models and (named["prior"] or named["decoder"]):
        raise KandinskyError("give --model or --prior/--decoder, not both")
    if named["prior"] or named["decoder"]:
        checkpoints = [Checkpoint("custom", inpaint_decoder=inpaint_decoder, **named)]
    else:
        from kcli.pipelines.store import load_registry

        for name in models:  # every name known before anything loads
            load_registry().get(name)
        checkpoints = [Checkpoint(name, model=name) for name in models or [default_name()]]
    _check_port(host, port)
    server = create_app(ServerConfig(checkpoints, load=load, api_key=api_key, cors=list(cors or []), queue=queue))
    server.state.models.open()  # before listening: a bad checkpoint fails here, in one line
    render.info(f"serving {', '.join(c.name for c in checkpoints)} on http://{host}:{port} (the web page at /, AUTOMATIC1111 at /sdapi/v1, OpenAI at "
                "/v1); Ctrl-C stops")
    uvicorn.run(server, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def _check_port(host: str, port: int) -> None:
    """Fail in one line, before the models load, when the address is taken or not ours."""
    import socket

    from kcli.errors import KandinskyError

    try:
        with socket.create_server((host.strip("[]"), port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as e:
        raise KandinskyError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _signature() -> inspect.Signature:
    fields = {f.name: f for f in settings_of(Loading)}
    params = [_parameter(fields[n], {}) for n in LOAD]
    for name, (hint, default, help_text) in OWN.items():
        flag = "--" + name.replace("_", "-")
        info = typer.Option(flag, help=help_text, rich_help_panel="Server")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[hint, info]))
    return inspect.Signature(params)


serve.__signature__ = _signature()
app.command("serve", help="Keep the models loaded and serve the AUTOMATIC1111 and OpenAI image APIs and the web "
            "editor.")(serve)
