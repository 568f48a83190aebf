"""``kandinsky serve``: the models loaded once, behind the APIs existing clients speak.

    from kcli.serve.app import ServerConfig, create_app
    from kcli.serve.models import Checkpoint
    app = create_app(ServerConfig([Checkpoint("2.2", model="2.2")], load={"device": "cuda"}))
    uvicorn.run(app, host="127.0.0.1", port=7860)

- ``app``: the ASGI application (Starlette), its routes and error shape;
- ``worker``: the one thread that owns the device, and its bounded queue;
- ``models``: the checkpoints the server was started with, each loaded once;
- ``a1111``, ``openai_api``, ``own``: AUTOMATIC1111's API, OpenAI's images API, Kandinsky's own JSON API;
- ``security``: the API key, body limits, the rules for binding other hosts;
- ``images``: base64 pictures in (with the pixel limit) and PNGs with metadata out;
- ``static/``: the web editor served at ``/``.

- ``client``: the command line's ``--server``: a job sent to a running server, results as a local run's.

Imports ``kcli.pipelines`` only (never ``kcli.cli``). Starlette and uvicorn come with the ``serve`` extra and
are imported by ``app`` alone, so the client works without them.
"""
