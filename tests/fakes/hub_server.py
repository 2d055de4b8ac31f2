"""A fake Hugging Face Hub for tests: the part of the HTTP API ``huggingface_hub.HfApi`` uses to
create a dataset repo and a branch, read a file, list paths and commit files over the LFS
"basic" transfer (Xet disabled).

:class:`FakeHubServer` listens on ``127.0.0.1`` (a free port) in a background thread::

    with FakeHubServer() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_...")

It keeps every repo's files per branch, counts what was sent (``lfs_uploads``: LFS objects
PUT, ``commits``: commits made, ``sent``: paths committed), and records each request's method,
path and ``Authorization`` header (``requests``; LFS uploads go to their own URL, unrecorded).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeHubServer", "FakeRepo"]


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _state(files: dict[str, bytes]) -> str:
    """A commit id for a branch's files (changes whenever a file does)."""
    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted(files):
        digest.update(f"{path}\0{_git_oid(files[path])}\0".encode())
    return digest.hexdigest()


@dataclass
class FakeRepo:
    """One dataset repository: its visibility and files per branch."""

    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: int = 0


class FakeHubServer:
    """The fake Hub; see the module docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_uploads: list[str] = []
        self.sent: list[str] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def commits(self) -> int:
        """Commits made, over every repo."""
        return sum(repo.commits for repo in self.repos.values())


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers=headers)

    def _not_found(self, code: str, head: bool = False) -> None:
        self._send(
            404,
            json.dumps({"error": code}).encode(),
            headers={"X-Error-Code": code, "X-Error-Message": code},
            head=head,
        )

    def _files(self, repo_id: str, revision: str) -> dict[str, bytes] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return None
        return repo.branches.get(revision)

    def _record(self) -> None:
        with self.hub.lock:
            self.hub.requests.append(
                (self.command, urlsplit(self.path).path, self.headers.get("Authorization"))
            )

    # -- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._resolve(head=True)

    def do_GET(self) -> None:
        self._resolve(head=False)

    def _resolve(self, *, head: bool) -> None:
        self._record()
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")]
        # /datasets/{owner}/{name}/resolve/{revision}/{path...}
        if len(parts) < 7 or parts[1] != "datasets" or parts[4] != "resolve":
            self._not_found("NotFound", head)
            return
        repo_id, revision, path = f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:])
        with self.hub.lock:
            if repo_id not in self.hub.repos:
                self._not_found("RepoNotFound", head)
                return
            files = self._files(repo_id, revision)
            if files is None:
                self._not_found("RevisionNotFound", head)
                return
            data = files.get(path)
            commit = _state(files)
        if data is None:
            self._not_found("EntryNotFound", head)
            return
        etag = f'"{_git_oid(data)}"'
        self._send(
            200,
            data,
            content_type="application/octet-stream",
            headers={"ETag": etag, "X-Repo-Commit": commit},
            head=head,
        )

    def do_PUT(self) -> None:
        # /lfs-upload/{oid}
        body = self._body()
        oid = urlsplit(self.path).path.rsplit("/", 1)[-1]
        assert hashlib.sha256(body).hexdigest() == oid, "LFS upload with the wrong oid"
        with self.hub.lock:
            self.hub.lfs[oid] = body
            self.hub.lfs_uploads.append(oid)
        self._send(200)

    def do_POST(self) -> None:
        self._record()
        body = self._body()
        path = urlsplit(self.path).path
        parts = [unquote(p) for p in path.split("/")]
        with self.hub.lock:
            if path == "/api/repos/create":
                self._create_repo(json.loads(body))
            elif path == "/api/validate-yaml":
                self._json(200, {"warnings": [], "errors": []})
            elif path.endswith(".git/info/lfs/objects/batch"):
                self._lfs_batch(json.loads(body))
            elif len(parts) >= 6 and parts[1] == "api" and parts[2] == "datasets":
                repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
                if repo_id not in self.hub.repos:
                    self._not_found("RepoNotFound")
                elif action == "branch":
                    self._create_branch(repo_id, revision)
                elif self._files(repo_id, revision) is None:
                    self._not_found("RevisionNotFound")
                elif action == "preupload":
                    self._preupload(repo_id, revision, json.loads(body))
                elif action == "paths-info":
                    self._paths_info(repo_id, revision, parse_qs(body.decode()))
                elif action == "commit":
                    self._commit(repo_id, revision, body)
                else:
                    self._not_found("NotFound")
            else:
                self._not_found("NotFound")

    def _create_repo(self, payload: dict[str, Any]) -> None:
        assert payload.get("type") == "dataset", payload
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.hub.repos:
            url = f"{self.hub.endpoint}/datasets/{repo_id}"
            self._json(409, {"error": "You already created this dataset repo", "url": url})
            return
        private = payload.get("visibility") == "private" or payload.get("private") is True
        self.hub.repos[repo_id] = FakeRepo(private=private)
        self._json(200, {"url": f"{self.hub.endpoint}/datasets/{repo_id}"})

    def _create_branch(self, repo_id: str, branch: str) -> None:
        branches = self.hub.repos[repo_id].branches
        if branch in branches:
            self._json(409, {"error": "Reference already exists"})
            return
        branches[branch] = dict(branches["main"])
        self._json(200, {})

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        files = self._files(repo_id, revision) or {}
        out = []
        for item in payload["files"]:
            mode = "regular" if item["path"].endswith(".md") else "lfs"
            existing = files.get(item["path"])
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if mode == "lfs" else _git_oid(existing)
            out.append(
                {"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": out})

    def _lfs_batch(self, payload: dict[str, Any]) -> None:
        objects = []
        for item in payload["objects"]:
            entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.hub.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{item['oid']}"}
                }
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _paths_info(self, repo_id: str, revision: str, form: dict[str, list[str]]) -> None:
        files = self._files(repo_id, revision) or {}
        out = []
        for path in form.get("paths", []):
            data = files.get(path)
            if data is None:
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "path": path,
                "oid": _git_oid(data),
                "size": len(data),
            }
            if not path.endswith(".md"):
                sha = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
            out.append(entry)
        self._json(200, out)

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        files = self._files(repo_id, revision)
        assert files is not None
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                files[value["path"]] = self.hub.lfs[value["oid"]]
            elif item["key"] != "header":
                raise AssertionError(f"unexpected commit operation {item['key']}")
            if item["key"] in ("file", "lfsFile"):
                self.hub.sent.append(value["path"])
        self.hub.repos[repo_id].commits += 1
        oid = hashlib.sha1(body, usedforsecurity=False).hexdigest()
        self._json(
            200,
            {"commitUrl": f"{self.hub.endpoint}/datasets/{repo_id}/commit/{oid}", "commitOid": oid},
        )
