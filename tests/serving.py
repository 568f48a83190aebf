"""A ``kandinsky serve`` subprocess on loopback and a free port, for tests and benchmarks: started, waited for
until it answers, and stopped when the ``with`` block (or the test session) ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, env: dict | None = None, key: str | None = None, host: str = "127.0.0.1",
                 device: str = "cpu"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", *map(str, args), "--host", host, "--port", str(self.port), "--device", device]
        self.env = {**os.environ, "COLUMNS": "200", **(env or {})}
        self.key = key
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "kcli", *self.args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if self.get("/kandinsky/v1/status", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not answer in time")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def get(self, path: str, **kw):
        return requests.get(self.url + path, headers={**self.headers(), **kw.pop("headers", {})},
                            timeout=kw.pop("timeout", 120), **kw)

    def post(self, path: str, body=None, **kw):
        return requests.post(self.url + path, json=body, headers={**self.headers(), **kw.pop("headers", {})},
                             timeout=kw.pop("timeout", 120), **kw)

    def status(self) -> dict:
        return self.get("/kandinsky/v1/status").json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
