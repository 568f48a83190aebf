"""A loopback stand-in for the Hugging Face hub: the part of its HTTP protocol that downloads use.

It serves local folders as model repositories, on 127.0.0.1 only, from a thread of the test process, and
stops by itself after ``lifetime`` seconds if a test forgets to. What huggingface_hub 2.x and kcli ask of it:

- ``GET /api/models/{repo}/revision/{rev}``: ``{"id", "sha", "siblings"}`` (the commit a branch points to);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true``: the file listing, paginated through a
  ``Link: <...>; rel="next"`` header like the hub's (small pages here, so the pagination is exercised);
- ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit`` and ``ETag`` (git blob
  sha1 for plain files; for LFS files the sha256, also in ``X-Linked-Etag`` / ``X-Linked-Size``), and
  ``Range`` requests answered with 206;
- errors as the hub sends them: 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound.

Fault injection: ``drop_after(repo, path, nbytes, times)`` cuts the connection after ``nbytes`` of that
file's body, ``times`` times. Every request is logged in ``requests`` (method, path, Range, Authorization).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model")


@dataclass
class File:
    path: str
    source: Path
    size: int
    git_oid: str
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Repo:
    id: str
    commit: str
    files: dict[str, File] = field(default_factory=dict)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def describe(folder: Path) -> dict[str, File]:
    """Every file of a folder as the hub would list it."""
    files = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            rel = p.relative_to(folder).as_posix()
            files[rel] = File(rel, p, len(data), git_blob_sha1(data), hashlib.sha256(data).hexdigest(),
                              p.suffix in LFS_SUFFIXES)
    return files


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


class HubServer:
    def __init__(self, lifetime: float = 600, page_size: int = 7):
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.page_size = page_size
        self.lifetime = lifetime
        self._drops: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content ---------------------------------------------------------------------------------------

    def add(self, repo_id: str, folder: Path, commit: str | None = None) -> Repo:
        files = describe(folder)
        commit = commit or hashlib.sha1(
            (repo_id + "".join(f.path + f.git_oid for f in files.values())).encode()).hexdigest()
        self.repos[repo_id] = Repo(repo_id, commit, files)
        return self.repos[repo_id]

    def drop_after(self, repo_id: str, path: str, nbytes: int, times: int = 1) -> None:
        self._drops[(repo_id, path)] = [nbytes, times]

    def downloads(self, path: str = "", repo: Repo | None = None) -> list[Request]:
        """The file GETs, of one file (path inside the repository) of one repository if given."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(path)
                and (repo is None or r.path.startswith(f"/{repo.id}/resolve/"))]

    # -- life cycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._timer.cancel()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    # -- routing -----------------------------------------------------------------------------------------

    def _route(self, body: bool) -> None:
        hub = self.server_hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        with hub._lock:
            hub.requests.append(Request(self.command, path, self.headers.get("Range"),
                                        self.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo_id, kind, rev, rest = "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:])
            repo = self._repo(repo_id, rev)
            if repo is None:
                return
            if kind == "revision":
                return self._json({"id": repo.id, "sha": repo.commit,
                                   "siblings": [{"rfilename": p} for p in repo.files]}, repo, body)
            return self._tree(repo, rest, parse_qs(url.query), body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo("/".join(parts[:2]), parts[3])
            if repo is None:
                return
            return self._file(repo, "/".join(parts[4:]), body)
        self._error(404, None, "Not found")

    def _repo(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.server_hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
        elif rev not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", repo)
            repo = None
        return repo

    # -- answers -----------------------------------------------------------------------------------------

    def _error(self, status: int, code: str | None, message: str, repo: Repo | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, obj, repo: Repo, body: bool, extra: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", repo.commit)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _tree(self, repo: Repo, under: str, query: dict, body: bool) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for f in repo.files.values():
            if under and not f.path.startswith(under.rstrip("/") + "/"):
                continue
            rel = f.path[len(under.rstrip("/")) + 1:] if under else f.path
            dirs = rel.split("/")[:-1]
            prefix = under.rstrip("/") + "/" if under else ""
            for i in range(1, len(dirs) + 1 if recursive else min(len(dirs), 1) + 1):
                folders.add(prefix + "/".join(dirs[:i]))
            if not recursive and dirs:
                continue
            entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.server_hub.page_size]
        extra = {}
        if start + self.server_hub.page_size < len(entries):
            host, port = self.server.server_address[:2]
            link = (f"http://{host}:{port}/api/models/{repo.id}/tree/{repo.commit}"
                    f"{'/' + quote(under) if under else ''}?recursive={str(recursive).lower()}"
                    f"&cursor={start + self.server_hub.page_size}")
            extra["Link"] = f'<{link}>; rel="next"'
        self._json(page, repo, body, extra)

    def _file(self, repo: Repo, path: str, body: bool) -> None:
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on main", repo)
        data = f.source.read_bytes()
        start, end = 0, len(data)
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first or 0)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                return self._error(416, None, "Range not satisfiable", repo)
            status = 206
        chunk = data[start:end]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.etag}"')
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        drop = self.server_hub._drops.get((repo.id, path))
        with self.server_hub._lock:
            cut = drop is not None and drop[1] > 0
            if cut:
                drop[1] -= 1
        if cut:
            self.wfile.write(chunk[: max(0, drop[0] - start)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


def registry_toml(models: dict[str, dict[str, Repo]], default: str | None = None, pin: bool = True) -> str:
    """A registry (the format of weights/registry.toml) for repositories this server holds: every file,
    with exact sizes and, for LFS files, sha256; ``models`` maps a name to {"prior", "decoder", "inpaint"}."""
    lines = [f'default = "{default or next(iter(models))}"', ""]
    repos: dict[str, Repo] = {}
    for name, parts in models.items():
        lines.append(f'[models."{name}"]')
        lines.append(f'description = "tiny test model {name}"')
        for part, repo in parts.items():
            lines.append(f'{part} = "{repo.id}"')
            repos[repo.id] = repo
        lines.append("")
    for repo in repos.values():
        lines.append(f'[repos."{repo.id}"]')
        if pin:
            lines.append(f'revision = "{repo.commit}"')
        lines.append("files = [")
        for f in repo.files.values():
            sha = f', sha256 = "{f.sha256}"' if f.lfs else ""
            lines.append(f'  {{ path = "{f.path}", size = {f.size}{sha} }},')
        lines.append("]")
        lines.append("")
    return "\n".join(lines)
