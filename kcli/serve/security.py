"""What keeps a server safe to run: where it may listen, who may call it, how much it reads.

- It listens on the loopback address unless told otherwise; any other host needs an API key (or an explicit
  ``--insecure``), so a model is never opened to a network by accident.
- With a key, every route but the web page (``/`` and its static files) wants ``Authorization: Bearer KEY``.
- Bodies are limited (``max_body`` bytes, checked against Content-Length and again while reading), pictures by
  their pixel count before decoding (``kcli.serve.images``).
- No field names a path on the server (``kcli.serve.own.REFUSED``); checkpoints are chosen by name among those
  the server was started with (``kcli.serve.models``). CORS stays off unless ``--cors ORIGIN`` is given.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from kcli.errors import KandinskyError

API_PREFIXES = ("/sdapi/", "/v1/", "/kandinsky/")
MAX_BODY = 64 * 1024 * 1024  # bytes: a few large base64 pictures


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without a key, unless the user said --insecure."""
    if not is_loopback(host) and not api_key and not insecure:
        raise KandinskyError(f"serving on {host} opens the models to the network: give --api-key KEY (or "
                             "--insecure to allow anyone)")


def needs_key(path: str) -> bool:
    """Every API route; not the web page and its static files."""
    return path.startswith(API_PREFIXES) or path.rstrip("/") in ("/sdapi", "/v1", "/kandinsky")


async def answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class TooLarge(KandinskyError):
    status = 413


class Guard:
    """ASGI middleware: the API key, then the body limit."""

    def __init__(self, app, api_key: str | None = None, max_body: int = MAX_BODY):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and needs_key(scope["path"]):
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await answer(send, 401, "this server wants an API key: send Authorization: Bearer KEY")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await answer(send, 413, f"the body is larger than {self.max_body} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise TooLarge(f"the body is larger than {self.max_body} bytes")
            return message

        return await self.app(scope, limited, send)
