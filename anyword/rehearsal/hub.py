"""A Hugging Face hub on 127.0.0.1: serves repositories from local folders the way huggingface.co does, so that
``huggingface_hub`` (``HF_ENDPOINT``), transformers and diffusers download, cache, resume and verify for real, with
no other address contacted. Files that live outside the hub (SAM's checkpoints) are served under their own paths.

What it answers (what ``huggingface_hub`` 2.x asks): ``GET /api/models/{repo}[/revision/{rev}]`` (the repository's
commit and file list), ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (files with sizes, git blob ids, and LFS
sha256 for weight files), ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``/``X-Linked-Size`` for LFS files, ``Range`` requests for resumed downloads), and 404s carrying the
hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``). Every request is recorded
(:attr:`LocalHub.requests`); :meth:`LocalHub.cut_after` makes the next download of a file stop part-way, as a
dropped connection does, and :meth:`LocalHub.corrupt` alters its bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".jpg", ".png")  # stored in git-lfs on the hub


@dataclass(frozen=True)
class Served:
    """One request the hub answered: method, path and status."""

    method: str
    path: str
    status: int


@dataclass
class _Repo:
    folder: Path
    commit: str
    files: dict[str, Path]


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _commit(files: dict[str, Path]) -> str:
    digest = hashlib.sha1()
    for name, path in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class LocalHub:
    """The hub: ``repos`` maps repository ids to folders holding their files as published; ``files`` maps URL
    paths (``/segment_anything/sam_vit_h_4b8939.pth``) to files served as they are. :meth:`start` serves them."""

    repos: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    requests: list[Served] = field(default_factory=list)
    _cuts: dict[str, int] = field(default_factory=dict)
    _corrupt: set[str] = field(default_factory=set)

    def start(self) -> LocalHub:
        self._repos = {repo: self._index(folder) for repo, folder in self.repos.items()}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def cut_after(self, path: str, size: int) -> None:
        """The next GET of ``path`` (a URL path) sends ``size`` bytes, then closes the connection."""
        self._cuts[path] = size

    def commit(self, repo: str) -> str:
        """The commit id the hub gives ``repo`` (a digest of its files)."""
        return self._repos[repo].commit

    def corrupt(self, path: str) -> None:
        """The next GET of ``path`` sends bytes that differ from the file (its announced size and digest stay):
        what a flaky proxy or a tampered mirror does."""
        self._corrupt.add(path)

    @staticmethod
    def _index(folder: Path) -> _Repo:
        files = _files(folder)
        return _Repo(folder, _commit(files), files)

    # --- answering ------------------------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        status, headers, payload = self._route(path, handler.headers.get("Range"))
        headers.setdefault("Content-Length", str(len(payload)))
        self.requests.append(Served(handler.command, path, status))
        cut = self._cuts.pop(path, None) if body else None
        if body and path in self._corrupt and payload:
            self._corrupt.discard(path)
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if cut is not None:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if body and payload:
            handler.wfile.write(payload if cut is None else payload[:cut])
        if cut is not None:
            handler.close_connection = True

    def _route(self, path: str, byte_range: str | None) -> tuple[int, dict, bytes]:
        if path in self.files:
            return self._send(self.files[path].read_bytes(), byte_range, {})
        api = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+)|/tree/([^/]+)(?:/(.*))?)?", path)
        if api:
            repo_id, revision, tree_revision, folder = api.groups()
            return self._api(repo_id, revision or tree_revision or "main", tree_revision is not None, folder or "")
        resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if resolve:
            return self._file(*resolve.groups(), byte_range)
        return self._error(404, "RepoNotFound")

    def _repo(self, repo_id: str, revision: str) -> _Repo | tuple[int, dict, bytes]:
        repo = self._repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        return repo

    def _api(self, repo_id: str, revision: str, tree: bool, folder: str) -> tuple[int, dict, bytes]:
        repo = self._repo(repo_id, revision)
        if not isinstance(repo, _Repo):
            return repo
        if tree:  # recursive listings only (what snapshot_download asks for), under ``folder``
            inside = {n: p for n, p in repo.files.items() if not folder or n.startswith(folder.rstrip("/") + "/")}
            entries = [self._entry(name, path) for name, path in inside.items()]
            folders = sorted({str(Path(name).parent) for name in inside} - {"."})
            entries += [{"type": "directory", "oid": "0" * 40, "path": folder} for folder in folders]
            data = entries
        else:
            data = {"id": repo_id, "sha": repo.commit, "private": False,
                    "siblings": [{"rfilename": name} for name in repo.files]}  # fmt: skip
        return 200, {"Content-Type": "application/json"}, json.dumps(data).encode()

    @staticmethod
    def _entry(name: str, path: Path) -> dict:
        data = path.read_bytes()
        entry = {"type": "file", "oid": _blob_id(data), "size": len(data), "path": name}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _file(self, repo_id: str, revision: str, name: str, byte_range: str | None) -> tuple[int, dict, bytes]:
        repo = self._repo(repo_id, revision)
        if not isinstance(repo, _Repo):
            return repo
        if name not in repo.files:
            return self._error(404, "EntryNotFound")
        data = repo.files[name].read_bytes()
        headers = {"X-Repo-Commit": repo.commit}
        if name.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{_blob_id(data)}"'
        return self._send(data, byte_range, headers)

    @staticmethod
    def _send(data: bytes, byte_range: str | None, headers: dict) -> tuple[int, dict, bytes]:
        start = 0
        if byte_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range.strip())
            start = int(match.group(1)) if match else 0
        part = data[start:]
        headers = {**headers, "Content-Length": str(len(part)), "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return 206, headers, part
        return 200, headers, part

    @staticmethod
    def _error(status: int, code: str) -> tuple[int, dict, bytes]:
        body = json.dumps({"error": code}).encode()
        headers = {"X-Error-Code": code, "Content-Type": "application/json", "Content-Length": str(len(body))}
        return status, headers, body
