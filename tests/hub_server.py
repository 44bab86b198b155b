"""A small Hugging Face Hub on 127.0.0.1 for tests: the part of the HTTP API huggingface_hub's client uses.

The real client (httpx2) talks to it over real sockets, so uploads and downloads go through the same code
paths as against huggingface.co. Repos live in a temp folder: `blobs/<git-sha1>` holds file contents and
`repos/<type>s/<org>/<name>/repo.json` holds branches and commits (each commit is a full `{path: blob}` map).

Every file is answered `uploadMode: "regular"` at preupload, so nothing goes through LFS or Xet.

Use it from a test module with `pytest_plugins = ["hub_server"]` and the `hub_server` fixture; in-process
client code also needs the `hub_online` fixture (conftest sets HF_HUB_OFFLINE=1). Subprocesses get
`hub_server.env(hf_home)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

USER = "hftune-tester"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        commit: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.error_code, self.commit = status, message, error_code, commit
        self.extra = extra or {}


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    folder: Path
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"private": self.private, "branches": self.branches, "commits": self.commits}
        (self.folder / "repo.json").write_text(json.dumps(state, indent=1))

    def resolve(self, revision: str) -> str:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class HubState:
    """Repos, blobs and the request log; every mutation holds `lock`."""

    def __init__(self, root: Path, token: str):
        self.root = root
        self.token = token
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def put_blob(self, data: bytes) -> str:
        sha = git_blob_sha(data)
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_bytes(data)
        return sha

    def blob(self, sha: str) -> bytes:
        return (self.root / "blobs" / sha).read_bytes()

    def make_commit(self, repo: Repo, parent: str | None, files: dict[str, str], message: str) -> str:
        header = json.dumps([parent, sorted(files.items()), message, time.time_ns()]).encode()
        sha = hashlib.sha1(header).hexdigest()
        repo.commits[sha] = {
            "parent": parent,
            "message": message,
            "files": files,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        return sha

    def create_repo(self, repo_type: str, repo_id: str, private: bool, url: str) -> Repo:
        if (repo_type, repo_id) in self.repos:
            # The client reads the repo URL from the 409 body when exist_ok=True.
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        repo = Repo(repo_type, repo_id, private, self.root / "repos" / f"{repo_type}s" / repo_id)
        # The Hub starts every repo with one commit holding .gitattributes.
        files = {".gitattributes": self.put_blob(GITATTRIBUTES)}
        repo.branches["main"] = self.make_commit(repo, None, files, "initial commit")
        repo.save()
        self.repos[(repo_type, repo_id)] = repo
        return repo


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer
    timeout = 30  # a client that stops sending never holds a thread forever

    # -- plumbing -------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Quiet: the request log lives in `HubState.requests`."""

    @property
    def state(self) -> HubState:
        return self.server.state

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.state.requests.append((self.command, self.path, status))

    def _send_json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        # Read the whole body first so an error answer leaves the kept-alive connection in sync.
        self.body = self._read_body() if method == "POST" else b""
        try:
            self._check_credentials()
            self._route(method, segments, query)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            body = json.dumps({"error": err.message, **err.extra}).encode()
            self._send(err.status, body, {"Content-Type": "application/json", **headers})

    # -- auth -----------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _check_credentials(self) -> None:
        token = self._token()
        if token is not None and token != self.state.token:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_token(self) -> None:
        if self._token() != self.state.token:
            raise HubError(401, "You must be authenticated to do this: pass a valid token")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self._token() != self.state.token):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    # -- routing --------------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str], query: dict[str, str]) -> None:
        if seg[:2] == ["api", "whoami-v2"] and method == "GET":
            return self._whoami()
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if len(seg) >= 4 and seg[0] == "api" and seg[1] in ("models", "datasets", "spaces"):
            repo_type, repo_id, rest = seg[1][:-1], f"{seg[2]}/{seg[3]}", seg[4:]
            return self._repo_api(method, repo_type, repo_id, rest, query)
        # Downloads: /{org}/{name}/resolve/{rev}/{path} (datasets and spaces carry a prefix).
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = seg[0][:-1], seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise HubError(404, f"no such route in the test Hub: {method} {self.path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        with self.state.lock:
            if not rest and method == "GET":
                return self._info(self._repo(repo_type, repo_id), "main", query)
            action = rest[0] if rest else ""
            if action == "revision" and method == "GET" and len(rest) == 2:
                return self._info(self._repo(repo_type, repo_id), rest[1], query)
            if action == "tree" and method == "GET" and len(rest) >= 2:
                return self._tree(self._repo(repo_type, repo_id), rest[1], "/".join(rest[2:]), query)
            if action == "refs" and method == "GET":
                return self._refs(self._repo(repo_type, repo_id))
            if action == "preupload" and method == "POST" and len(rest) == 2:
                return self._preupload(self._writable(repo_type, repo_id), rest[1])
            if action == "commit" and method == "POST" and len(rest) == 2:
                return self._commit(self._writable(repo_type, repo_id), rest[1], query)
            if action == "branch" and method == "POST" and len(rest) == 2:
                return self._create_branch(self._writable(repo_type, repo_id), rest[1])
        raise HubError(404, f"no such route in the test Hub: {method} {self.path}")

    def _writable(self, repo_type: str, repo_id: str) -> Repo:
        self._require_token()
        return self._repo(repo_type, repo_id)

    # -- endpoints ------------------------------------------------------------------------------------
    def _whoami(self) -> None:
        if self._token() != self.state.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._send_json(
            {
                "type": "user",
                "name": USER,
                "fullname": "hftune tester",
                "orgs": [{"name": "org", "type": "org"}],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _validate_yaml(self) -> None:
        content = self._json_body().get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as err:
                errors.append({"message": f"invalid YAML: {err}"})
        self._send_json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def _create_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        name, org = payload.get("name"), payload.get("organization") or USER
        repo_type = payload.get("type") or "model"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.server.endpoint}/{prefix}{org}/{name}"
        with self.state.lock:
            self.state.create_repo(repo_type, f"{org}/{name}", private, url)
        self._send_json({"url": url, "name": f"{org}/{name}", "id": "0"})

    def _info(self, repo: Repo, revision: str, query: dict) -> None:
        sha = repo.resolve(revision)
        commit = repo.commits[sha]
        blobs = query.get("blobs") in ("true", "True", "1")
        siblings = []
        for path, blob in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=(self.state.root / "blobs" / blob).stat().st_size, blobId=blob)
            siblings.append(sibling)
        self._send_json(
            {
                "_id": repo.repo_id,
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "lastModified": commit["date"],
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, repo: Repo, revision: str, folder: str, query: dict) -> None:
        files = repo.commits[repo.resolve(revision)]["files"]
        recursive = query.get("recursive") in ("true", "True", "1")
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, blob in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Folders on the way down are listed too, as the Hub does with recursive=True.
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                sub = prefix + "/".join(parts[:depth])
                entries.setdefault(sub, {"type": "directory", "path": sub, "oid": git_blob_sha(sub.encode())})
            if recursive or len(parts) == 1:
                size = (self.state.root / "blobs" / blob).stat().st_size
                entries[path] = {"type": "file", "path": path, "size": size, "oid": blob}
        if prefix and not entries:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        self._send_json(list(entries.values()))

    def _refs(self, repo: Repo) -> None:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in repo.branches.items()
        ]
        self._send_json({"branches": branches, "converts": [], "tags": []})

    def _preupload(self, repo: Repo, revision: str) -> None:
        payload = self._json_body()
        files = repo.commits[repo.resolve(revision)]["files"]
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self._send_json({"files": answer, "commitOid": repo.resolve(revision)})

    def _commit(self, repo: Repo, revision: str, query: dict) -> None:
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the test Hub")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), None)
        if header is None:
            raise HubError(400, "commit payload has no header line")
        parent = repo.branches[revision]
        if header.get("parentCommit") and header["parentCommit"] != parent:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[parent]["files"])
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = self.state.put_blob(base64.b64decode(value["content"]))
            elif item["key"] == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif item["key"] == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(folder)}
            elif item["key"] != "header":
                raise HubError(400, f"the test Hub only takes regular files, got {item['key']!r}")
        sha = self.state.make_commit(repo, parent, files, header.get("summary", ""))
        repo.branches[revision] = sha
        repo.save()
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        url = f"{self.server.endpoint}/{prefix}{repo.repo_id}/commit/{sha}"
        self._send_json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def _create_branch(self, repo: Repo, branch: str) -> None:
        payload = self._json_body()
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = repo.resolve(payload.get("startingPoint") or "main")
        repo.save()
        self._send_json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.state.lock:
            repo = self._repo(repo_type, repo_id)
            sha = repo.resolve(revision)
            blob = repo.commits[sha]["files"].get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        data = self.state.blob(blob)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{blob}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "none",
        }
        self._send(200, data, headers)


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    endpoint: str


@dataclass
class HubServer:
    """A running test Hub: `endpoint`, `token`, and helpers to inspect what was stored."""

    root: Path
    token: str = field(default_factory=lambda: "hf_test_" + secrets.token_hex(12))
    _httpd: HubHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._httpd = HubHTTPServer(("127.0.0.1", 0), HubHandler)
        self._httpd.state = HubState(self.root, self.token)
        self._httpd.endpoint = self.endpoint
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def state(self) -> HubState:
        assert self._httpd is not None, "server not started"
        return self._httpd.state

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request answered, in order."""
        return self.state.requests

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Path -> content of every file of `repo_id` at `revision`."""
        repo = self.repo(repo_id, repo_type)
        blobs = repo.commits[repo.resolve(revision)]["files"]
        return {path: self.state.blob(blob) for path, blob in blobs.items()}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit messages from `revision` back to the repo's first commit."""
        repo = self.repo(repo_id, repo_type)
        sha, messages = repo.resolve(revision), []
        while sha is not None:
            messages.append(repo.commits[sha]["message"])
            sha = repo.commits[sha]["parent"]
        return messages

    def env(self, hf_home: Path, *, token: bool = True) -> dict[str, str]:
        """Variables a child process needs to use this server with an empty cache."""
        env = {"HF_ENDPOINT": self.endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0"}
        if token:
            env["HF_TOKEN"] = self.token
        return env


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A fresh test Hub for one test, stopped at teardown."""
    server = HubServer(root=tmp_path_factory.mktemp("hub")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_online(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """Lets this process's huggingface_hub reach the test Hub (and only it) for one test.

    huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT once at import, so the module constants are patched
    along with the environment; any stray request still goes to 127.0.0.1, never to huggingface.co.
    """
    from huggingface_hub import constants

    endpoint = hub_server.endpoint
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return hub_server
