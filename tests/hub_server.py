"""A Hugging Face hub on 127.0.0.1 serving model folders of this machine: the part of the hub's HTTP API that
``huggingface_hub`` uses to look a model up and download it, with the hub's error codes.

Served, for each repository (``Repo``: a folder, whether it is gated, its branches):

``GET  /api/models/{id}[/revision/{rev}]``  the model's metadata: ``sha`` (the commit), ``siblings`` (its files),
                                            ``gated``, ``safetensors`` (the parameter count from the headers)
``GET  /api/models/{id}/tree/{rev}``        its files, with sizes and (for weights) LFS sha256
``HEAD|GET /{id}/resolve/{rev}/{file}``     a file, with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``

Errors as the hub gives them, in ``X-Error-Code``: ``RepoNotFound`` (401, as the hub answers a request without a
token), ``RevisionNotFound`` and ``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with one the
repository does not grant) on a gated repository's files; with ``down``, 503 to everything. Every request is logged (method, path, whether it carried
a token) in ``HubServer.requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from emoprobe.architecture import safetensors_params


@dataclass
class Repo:
    """A repository served from ``folder`` (every file in it, recursively); ``gated``: its files need a token in
    ``granted``; ``branches``: the names its one commit is reachable by; ``unservable``: files listed and described
    (HEAD) whose transfer (GET) fails, as a download that breaks off."""

    folder: Path
    gated: bool = False
    granted: tuple[str, ...] = ()
    branches: tuple[str, ...] = ("main",)
    unservable: tuple[str, ...] = ()

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(f"{repo_id}:{self.folder}".encode()).hexdigest()

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())


@dataclass
class Request:
    method: str
    path: str
    token: bool


@dataclass
class HubServer:
    repos: dict[str, Repo]
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    down: bool = False  # answer every request 503, as a hub that fails

    def __enter__(self) -> HubServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the requests are kept in server.requests
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head: bool):
                path = urlsplit(self.path).path  # each part unquoted where it is split off: a revision may hold "/"
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                server.requests.append(Request(self.command, path, bool(token)))
                status, headers, body = server.route(path, token, head)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if isinstance(body, bytes) else body.stat().st_size))
                self.end_headers()
                if head:
                    return
                if isinstance(body, bytes):
                    self.wfile.write(body)
                else:
                    with open(body, "rb") as handle:
                        while block := handle.read(1 << 20):
                            self.wfile.write(block)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # --- routing

    def route(self, path: str, token: str, head: bool):
        if self.down:
            return error(503, "", "the hub is down")
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            if "/tree/" in rest:
                repo_id, _, revision = rest.partition("/tree/")
                return self.tree(unquote(repo_id), unquote(revision.strip("/")))
            repo_id, _, revision = rest.partition("/revision/")
            return self.info(unquote(repo_id), unquote(revision) or "main")
        if "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            return self.file(unquote(repo_id), unquote(revision), unquote(filename), token, head)
        return error(404, "NotFound", f"no route {path}")

    def lookup(self, repo_id: str, revision: str):
        """``(repo, None)`` or ``(None, error answer)``."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, error(401, "RepoNotFound", f"Repository Not Found for url: {repo_id}.")
        if revision not in (*repo.branches, repo.commit(repo_id)):
            return None, error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, None

    def info(self, repo_id: str, revision: str):
        repo, failure = self.lookup(repo_id, revision)
        if failure:
            return failure
        params = safetensors_params(repo.folder)
        body = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.commit(repo_id), "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "tags": [], "downloads": 0,
                "likes": 0, "library_name": "transformers", "siblings": [{"rfilename": f} for f in repo.files()],
                **({"safetensors": {"parameters": {"F32": params}, "total": params}} if params else {})}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def tree(self, repo_id: str, revision: str):
        repo, failure = self.lookup(repo_id, revision)
        if failure:
            return failure
        entries = []
        for name in repo.files():
            size = (repo.folder / name).stat().st_size
            entry = {"type": "file", "path": name, "size": size, "oid": oid(repo.folder / name)}
            if name.endswith(".safetensors"):
                entry["lfs"] = {"oid": sha256(repo.folder / name), "size": size, "pointerSize": 134}
            entries.append(entry)
        return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()

    def file(self, repo_id: str, revision: str, filename: str, token: str, head: bool):
        repo, failure = self.lookup(repo_id, revision)
        if failure:
            return failure
        if repo.gated and token not in repo.granted:
            return error(403 if token else 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        target = repo.folder / filename
        if not target.is_file():
            return error(404, "EntryNotFound", f"{filename} does not exist on {revision}")
        if filename in repo.unservable and not head:
            return error(404, "EntryNotFound", f"{filename}: the transfer failed")
        etag = sha256(target) if filename.endswith(".safetensors") else oid(target)
        return 200, {"X-Repo-Commit": repo.commit(repo_id), "ETag": f'"{etag}"',
                     "Content-Type": "application/octet-stream"}, target


def error(status: int, code: str, message: str):
    return status, {"X-Error-Code": code, "X-Error-Message": message,
                    "Content-Type": "application/json"}, json.dumps({"error": message}).encode()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def oid(path: Path) -> str:
    """git's blob id of a file, as the hub gives for files not stored in LFS."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
