"""A small Hugging Face Hub API test server (stdlib only).

It implements just the HTTP surface that ``huggingface_hub`` (2.4) and ``datasets`` (5.2) use to
create a repo, upload files and commit (preupload, LFS batch + PUT of LFS objects, NDJSON commit with
inline base64 files), read repo/revision info, list trees, get paths info, validate README YAML, and
download files through ``/resolve/``. Xet is never advertised: clients must run with
``HF_HUB_DISABLE_XET=1`` (there is no fallback from a Xet upload to LFS on the client side).

Storage is a folder: ``<root>/blobs/<sha256>`` holds file contents (content addressed, shared by all
repos) and ``<root>/repos/<type>s/<namespace>/<name>.json`` holds a repo's metadata, its branches and
every commit with the full ``path -> blob`` manifest of that commit (one snapshot per commit).

Auth: ``tokens`` maps Bearer tokens to user names; ``orgs`` maps an organisation name to its members.
A user may write to its own namespace and to the organisations it belongs to. Errors follow the Hub:
401 (no or unknown token), 403 (no write access to the namespace), 404 with ``X-Error-Code``
(``RepoNotFound``/``RevisionNotFound``/``EntryNotFound``), 409 (repo exists), 412 (stale
``parentCommit``). ``HubServer.fail_next()`` or ``POST /_test/fail_next`` injects an error status.

Run standalone: ``python -m tests.hubserver --port 8080 --token tok-write=alice``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Same spirit as the .gitattributes the Hub puts in a new repo: these are stored with LFS.
LFS_PATTERNS = [
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lz4",
    "*.mds",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*.jpg",
    "*.jpeg",
    "*.png",
    "*.webp",
    "*.gif",
    "*.mp3",
    "*.wav",
    "*.flac",
    "*.ogg",
    "*.mp4",
    "*.tfrecord",
]
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


class HttpError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # additional JSON body fields


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _front_matter(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    return m.group(1) if m else None


def _parse_card_data(text: str) -> dict | None:
    """YAML metadata of a README (None if absent or if PyYAML is not importable)."""
    block = _front_matter(text)
    if block is None:
        return None
    try:
        import yaml
    except ImportError:  # the server itself is stdlib-only; metadata parsing is best effort
        return None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


@dataclass
class FailRule:
    status: int
    count: int = 1
    path_contains: str | None = None
    method: str | None = None
    message: str = "Injected failure"
    error_code: str | None = None


class HubServer:
    """In-process Hub API server. ``HubServer(root, {"tok": "alice"}).start()`` then use ``.url``."""

    def __init__(
        self,
        root: str | os.PathLike,
        tokens: dict[str, str],
        port: int = 0,
        host: str = "127.0.0.1",
        orgs: dict[str, list[str]] | None = None,
        tree_page_size: int = 1000,
        lfs_threshold: int = 10 * 1024 * 1024,
        verbose: bool = False,
    ):
        self.root = Path(root)
        self.tokens = dict(tokens)
        self.orgs = {k: list(v) for k, v in (orgs or {}).items()}
        self.host, self.port = host, port
        self.tree_page_size = tree_page_size
        self.lfs_threshold = lfs_threshold
        self.verbose = verbose
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._fail_rules: list[FailRule] = []
        self._pending_uploads: dict[str, tuple[str, int]] = {}  # nonce -> (sha256, size)
        self._repos: dict[tuple[str, str], dict] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hubserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def fail_next(
        self,
        status: int,
        count: int = 1,
        path_contains: str | None = None,
        method: str | None = None,
        message: str = "Injected failure",
        error_code: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status``.

        Note that the client retries some calls (preupload, LFS, tree listing: 408/429/5xx, up to 5
        retries with backoff); target the commit endpoint (``path_contains="/commit/"``) for a quick 500.
        """
        with self._lock:
            self._fail_rules.append(
                FailRule(status, count, path_contains, method.upper() if method else None, message, error_code)
            )

    def clear_failures(self) -> None:
        with self._lock:
            self._fail_rules.clear()

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        with self._lock:
            return self._repos[(repo_type, repo_id)]["refs"][branch]

    def _take_failure(self, method: str, path: str) -> FailRule | None:
        with self._lock:
            for rule in self._fail_rules:
                if (rule.method is None or rule.method == method) and (
                    rule.path_contains is None or rule.path_contains in path
                ):
                    rule.count -= 1
                    if rule.count <= 0:
                        self._fail_rules.remove(rule)
                    return rule
        return None

    # ------------------------------------------------------------------ storage
    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / f"{repo_id}.json"

    def _load(self) -> None:
        for path in (self.root / "repos").glob("*/*/*.json"):
            repo = json.loads(path.read_text())
            self._repos[(repo["type"], repo["id"])] = repo

    def _save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo))
        os.replace(tmp, path)

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _store_blob(self, data: bytes, expected_sha256: str | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise HttpError(400, f"Uploaded content has sha256 {sha}, expected {expected_sha256}")
        path = self._blob_path(sha)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha

    def _entry(self, data: bytes, lfs: bool) -> dict:
        sha = self._store_blob(data)
        oid = git_blob_oid(lfs_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return {"size": len(data), "sha256": sha, "oid": oid, "lfs": lfs}

    def _new_commit(self, repo: dict, parent: str | None, files: dict, title: str, message: str, author: str) -> str:
        sha = hashlib.sha1(f"{parent}\n{title}\n{uuid.uuid4()}".encode()).hexdigest()
        repo["commits"][sha] = {
            "parent": parent,
            "title": title,
            "message": message,
            "author": author,
            "date": _now(),
            "files": files,
        }
        return sha

    @staticmethod
    def _is_lfs_path(path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)

    # ------------------------------------------------------------------ auth / lookup
    def user_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return user

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, []))

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and not self.can_write(user, repo["namespace"])):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        if user is None:
            raise HttpError(401, "You must be authenticated to write to a repository")
        repo = self.get_repo(repo_type, repo_id, user)
        if not self.can_write(user, repo["namespace"]):
            raise HttpError(403, f"You don't have write access to {repo_type} repo {repo_id}")
        return repo

    @staticmethod
    def resolve_rev(repo: dict, rev: str) -> str:
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            matches = [sha for sha in repo["commits"] if sha.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ------------------------------------------------------------------ views
    def _history(self, repo: dict, sha: str):
        while sha is not None:
            commit = repo["commits"][sha]
            yield sha, commit
            sha = commit["parent"]

    def _last_commit(self, repo: dict, sha: str, path: str, is_dir: bool) -> dict:
        def sub(files: dict) -> dict:
            if is_dir:
                return {p: e["oid"] for p, e in files.items() if p.startswith(path + "/")}
            return {path: files[path]["oid"]} if path in files else {}

        for csha, commit in self._history(repo, sha):
            parent = commit["parent"]
            if parent is None or sub(commit["files"]) != sub(repo["commits"][parent]["files"]):
                return {"id": csha, "title": commit["title"], "date": commit["date"]}
        raise AssertionError("unreachable")

    @staticmethod
    def _dirs(files: dict) -> set[str]:
        dirs = set()
        for p in files:
            parts = p.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    def _file_info(self, repo: dict, sha: str, path: str, entry: dict, expand: bool) -> dict:
        info: dict[str, Any] = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            pointer = lfs_pointer(entry["sha256"], entry["size"])
            info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
        if expand:
            info["lastCommit"] = self._last_commit(repo, sha, path, is_dir=False)
        return info

    def _dir_info(self, repo: dict, sha: str, path: str, files: dict, expand: bool) -> dict:
        children = sorted(f"{p}:{e['oid']}" for p, e in files.items() if p.startswith(path + "/"))
        oid = hashlib.sha1("\n".join(children).encode()).hexdigest()
        info: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            info["lastCommit"] = self._last_commit(repo, sha, path, is_dir=True)
        return info

    def tree(self, repo: dict, sha: str, path: str, recursive: bool, expand: bool) -> list[dict]:
        files = repo["commits"][sha]["files"]
        dirs = self._dirs(files)
        if path and path not in dirs:
            raise HttpError(404, f"Directory not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        prefix = path + "/" if path else ""
        out: list[dict] = []

        def walk(base: str) -> None:
            children: dict[str, bool] = {}  # name -> is_dir
            for p in list(files) + list(dirs):
                if p.startswith(base) and p != base.rstrip("/"):
                    rest = p[len(base) :]
                    if "/" not in rest:
                        children[p] = p in dirs
            for child in sorted(children):
                if children[child]:
                    out.append(self._dir_info(repo, sha, child, files, expand))
                    if recursive:
                        walk(child + "/")
                else:
                    out.append(self._file_info(repo, sha, child, files[child], expand))

        walk(prefix)
        return out

    def repo_json(self, repo: dict, sha: str, blobs: bool, expand: list[str]) -> dict:
        commit = repo["commits"][sha]
        files = commit["files"]
        siblings = []
        for path in sorted(files):
            entry = files[path]
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
                    sib["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": pointer_size}
            siblings.append(sib)
        data: dict[str, Any] = {
            "_id": repo["_id"],
            "id": repo["id"],
            "author": repo["namespace"],
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo["createdAt"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e["size"] for e in files.values()),
        }
        if "README.md" in files:
            card = _parse_card_data(self._blob_path(files["README.md"]["sha256"]).read_text(errors="replace"))
            if card is not None:
                data["cardData"] = card
        if repo["type"] == "model":
            data["modelId"] = repo["id"]
        if expand:
            data = {k: v for k, v in data.items() if k in ("_id", "id") or k in expand}
        return data


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the subclass created by HubServer.start()
    protocol_version = "HTTP/1.1"
    server_version = "evolkit-test-hub/1.0"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:
        if self.hub.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, status: int, obj: Any, headers: dict | None = None, ctype: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), headers, ctype)

    def _error(self, err: HttpError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message, **err.extra}, headers)

    def _dispatch(self, method: str) -> None:
        self._status = 0
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.raw_query = split.query
        self.segs = [unquote(s) for s in split.path.strip("/").split("/")] if split.path.strip("/") else []
        try:
            self.body = self._read_body()
            rule = None if split.path.startswith("/_test/") else self.hub._take_failure(method, split.path)
            if rule is not None:
                raise HttpError(rule.status, rule.message, rule.error_code)
            self.user = self.hub.user_for(self.headers.get("Authorization"))
            if not self._route(method):
                self.hub.unhandled.append((method, self.path))
                raise HttpError(404, f"Not implemented by the test hub: {method} {split.path}")
        except HttpError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:  # surface server bugs as 500 with the message
            self._error(HttpError(500, f"Test hub error: {type(exc).__name__}: {exc}"))
            if self.hub.verbose:
                raise
        finally:
            self.hub.requests.append((method, self.path, self._status))

    def _route(self, method: str) -> bool:
        s = self.segs
        if s[:2] == ["_test", "fail_next"] and method == "POST":
            self.hub.fail_next(**json.loads(self.body or b"{}"))
            self._json(200, {"ok": True})
        elif s == ["api", "whoami-v2"] and method == "GET":
            self._whoami()
        elif s == ["api", "validate-yaml"] and method == "POST":
            self._validate_yaml()
        elif s == ["api", "repos", "create"] and method == "POST":
            self._create_repo()
        elif s == ["api", "repos", "delete"] and method == "DELETE":
            self._delete_repo()
        elif len(s) >= 4 and s[0] == "api" and s[1] in REPO_TYPES:
            return self._repo_api(method, REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:])
        elif len(s) == 3 and s[:2] == ["_lfs", "upload"] and method == "PUT":
            self._lfs_put(s[2])
        else:
            repo_type, rest = ("model", s)
            if s and s[0] in ("datasets", "spaces"):
                repo_type, rest = REPO_TYPES[s[0]], s[1:]
            if len(rest) >= 4 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
                repo_id = f"{rest[0]}/{rest[1][:-4]}"
                if rest[5:] == ["batch"] and method == "POST":
                    self._lfs_batch(repo_type, repo_id)
                elif rest[5:] == ["verify"] and method == "POST":
                    self._lfs_verify(repo_type, repo_id)
                else:
                    return False
            elif len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                self._resolve(repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
            else:
                return False
        return True

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> bool:
        hub = self.hub
        if not rest and method == "GET":
            rest = ["revision", "main"]
        action, rev = (rest[0], rest[1]) if len(rest) >= 2 else (rest[0] if rest else "", "")
        if action == "revision" and method == "GET":
            repo = hub.get_repo(repo_type, repo_id, self.user)
            sha = hub.resolve_rev(repo, rev)
            expand = parse_qs(self.raw_query).get("expand", []) + parse_qs(self.raw_query).get("expand[]", [])
            self._json(200, hub.repo_json(repo, sha, _truthy(self.query.get("blobs")), expand))
        elif action == "preupload" and method == "POST":
            self._preupload(repo_type, repo_id, rev)
        elif action == "commit" and method == "POST":
            self._commit(repo_type, repo_id, rev)
        elif action == "tree" and method == "GET":
            self._tree(repo_type, repo_id, rev, "/".join(rest[2:]).strip("/"))
        elif action == "paths-info" and method == "POST":
            self._paths_info(repo_type, repo_id, rev)
        elif action == "commits" and method == "GET":
            repo = hub.get_repo(repo_type, repo_id, self.user)
            history = [
                {
                    "id": sha,
                    "title": c["title"],
                    "message": c["message"],
                    "authors": [{"user": c["author"]}],
                    "date": c["date"],
                }
                for sha, c in hub._history(repo, hub.resolve_rev(repo, rev))
            ]
            self._json(200, history)
        elif action == "refs" and method == "GET":
            repo = hub.get_repo(repo_type, repo_id, self.user)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo["refs"].items()]
            self._json(200, {"branches": branches, "tags": [], "converts": []})
        else:
            return False
        return True

    # ------------------------------------------------------------------ endpoints
    def _whoami(self) -> None:
        if self.user is None:
            raise HttpError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": o, "roleInOrg": "write"} for o, m in self.hub.orgs.items() if self.user in m]
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            },
        )

    def _validate_yaml(self) -> None:
        content = json.loads(self.body or b"{}").get("content", "")
        block = _front_matter(content)
        errors: list[dict] = []
        if block is not None:
            try:
                import yaml
            except ImportError:  # stdlib-only server: without PyYAML, accept any metadata
                yaml = None
            if yaml is not None:
                try:
                    data = yaml.safe_load(block)
                    if data is not None and not isinstance(data, dict):
                        errors.append({"message": "YAML metadata must be a mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"Invalid YAML: {exc}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def _create_repo(self) -> None:
        hub = self.hub
        payload = json.loads(self.body or b"{}")
        if self.user is None:
            raise HttpError(401, "You must be authenticated to create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HttpError(400, f"Unsupported repo type: {repo_type}")
        namespace, name = payload.get("organization") or self.user, payload.get("name") or ""
        if not (NAME_RE.match(namespace) and NAME_RE.match(name)) or ".." in name:
            raise HttpError(400, f"Invalid repo name: {namespace}/{name}")
        if not hub.can_write(self.user, namespace):
            raise HttpError(403, f"You don't have the rights to create a {repo_type} under the namespace {namespace!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                raise HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = {
                "_id": uuid.uuid4().hex[:24],
                "id": repo_id,
                "type": repo_type,
                "namespace": namespace,
                "private": private,
                "createdAt": _now(),
                "refs": {},
                "commits": {},
            }
            files = {".gitattributes": hub._entry(GITATTRIBUTES, lfs=False)}
            repo["refs"]["main"] = hub._new_commit(repo, None, files, "initial commit", "", self.user)
            hub._repos[(repo_type, repo_id)] = repo
            hub._save(repo)
        self._json(200, {"url": url, "name": repo_id, "id": repo["_id"]})

    def _delete_repo(self) -> None:
        hub = self.hub
        payload = json.loads(self.body or b"{}")
        if self.user is None:
            raise HttpError(401, "You must be authenticated to delete a repository")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name')}"
        with hub._lock:
            hub.writable_repo(repo_type, repo_id, self.user)
            del hub._repos[(repo_type, repo_id)]
            hub._repo_file(repo_type, repo_id).unlink(missing_ok=True)
        self._json(200, {})

    def _preupload(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub = self.hub
        if _truthy(self.query.get("create_pr")):
            raise HttpError(400, "create_pr is not supported by the test hub")
        repo = hub.writable_repo(repo_type, repo_id, self.user)
        current = repo["commits"][repo["refs"][rev]]["files"] if rev in repo["refs"] else {}
        out = []
        for f in json.loads(self.body or b"{}").get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample", ""))
            lfs = size >= hub.lfs_threshold or hub._is_lfs_path(path) or b"\0" in sample
            info = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = current.get(path)
            if existing is not None:
                info["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
            out.append(info)
        self._json(200, {"files": out, "commitOid": repo["refs"].get(rev)})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        hub = self.hub
        hub.writable_repo(repo_type, repo_id, self.user)
        payload = json.loads(self.body or b"{}")
        if payload.get("operation") != "upload":
            raise HttpError(400, "Only the LFS 'upload' operation is supported by the test hub")
        objects = []
        verify = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
            if not SHA256_RE.match(oid) or size < 0:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid object"}})
                continue
            blob = hub._blob_path(oid)
            if blob.exists() and blob.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # already stored: nothing to upload
                continue
            nonce = secrets.token_hex(16)
            with hub._lock:
                hub._pending_uploads[nonce] = (oid, size)
            objects.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{hub.url}/_lfs/upload/{oid}?nonce={nonce}", "header": {}},
                        "verify": {"href": verify, "header": {}},
                    },
                }
            )
        self._json(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        hub = self.hub
        with hub._lock:
            pending = hub._pending_uploads.pop(self.query.get("nonce", ""), None)
        if pending is None or pending[0] != oid:
            raise HttpError(403, "Unknown or expired LFS upload URL")
        if len(self.body) != pending[1]:
            raise HttpError(400, f"Uploaded {len(self.body)} bytes, expected {pending[1]}")
        hub._store_blob(self.body, expected_sha256=oid)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        self.hub.writable_repo(repo_type, repo_id, self.user)
        payload = json.loads(self.body or b"{}")
        blob = self.hub._blob_path(str(payload.get("oid", "")))
        if not (SHA256_RE.match(blob.name) and blob.exists() and blob.stat().st_size == payload.get("size")):
            raise HttpError(404, "LFS object not found")
        self._json(200, {"success": True})

    def _commit(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub = self.hub
        if _truthy(self.query.get("create_pr")):
            raise HttpError(400, "create_pr is not supported by the test hub")
        repo = hub.writable_repo(repo_type, repo_id, self.user)
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "The first line of a commit payload must be its header")
        header = lines[0]["value"]
        with hub._lock:
            if rev not in repo["refs"]:
                raise HttpError(404, f"Invalid rev id: {rev} (commits are made on branches)", "RevisionNotFound")
            head = repo["refs"][rev]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent.lower()):
                raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = copy.deepcopy(repo["commits"][head]["files"])
            for op in lines[1:]:
                key, value = op.get("key"), op.get("value", {})
                path = str(value.get("path", "")).strip("/")
                if not path or ".." in path.split("/"):
                    raise HttpError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HttpError(400, f"Unsupported encoding: {value.get('encoding')}")
                    files[path] = hub._entry(base64.b64decode(value.get("content", "")), lfs=False)
                elif key == "lfsFile":
                    oid = str(value.get("oid", ""))
                    blob = hub._blob_path(oid)
                    if not SHA256_RE.match(oid) or not blob.exists():
                        raise HttpError(422, f"LFS object {oid} for {path} was not uploaded")
                    size = blob.stat().st_size
                    if value.get("size") not in (None, size):
                        raise HttpError(422, f"LFS object {oid} has size {size}, not {value.get('size')}")
                    pointer_oid = git_blob_oid(lfs_pointer(oid, size))
                    files[path] = {"size": size, "sha256": oid, "oid": pointer_oid, "lfs": True}
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HttpError(400, f"Unsupported commit operation: {key}")
            title = header.get("summary") or "Commit"
            sha = hub._new_commit(repo, head, files, title, header.get("description") or "", self.user)
            repo["refs"][rev] = sha
            hub._save(repo)
        commit_url = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
        self._json(
            200, {"success": True, "commitOid": sha, "commitUrl": commit_url, "hookOutput": "", "pullRequestUrl": None}
        )

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        hub = self.hub
        repo = hub.get_repo(repo_type, repo_id, self.user)
        sha = hub.resolve_rev(repo, rev)
        expand = _truthy(self.query.get("expand"))
        entries = hub.tree(repo, sha, path, _truthy(self.query.get("recursive")), expand)
        page_size = max(1, min(int(self.query.get("limit") or hub.tree_page_size), hub.tree_page_size))
        start = int(self.query.get("cursor") or 0)
        page = entries[start : start + page_size]
        headers = {"X-Repo-Commit": sha}
        if start + page_size < len(entries):
            params = {k: v for k, v in self.query.items() if k != "cursor"}
            params["cursor"] = str(start + page_size)
            next_url = f"{hub.url}{quote(urlsplit(self.path).path)}?{urlencode(params)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        self._json(200, page, headers)

    def _paths_info(self, repo_type: str, repo_id: str, rev: str) -> None:
        hub = self.hub
        repo = hub.get_repo(repo_type, repo_id, self.user)
        sha = hub.resolve_rev(repo, rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(self.body or b"{}")
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy((form.get("expand") or ["false"])[-1])
        files = repo["commits"][sha]["files"]
        dirs = hub._dirs(files)
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in files:
                out.append(hub._file_info(repo, sha, path, files[path], expand))
            elif path in dirs:
                out.append(hub._dir_info(repo, sha, path, files, expand))
        self._json(200, out, {"X-Repo-Commit": sha})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        hub = self.hub
        repo = hub.get_repo(repo_type, repo_id, self.user)
        sha = hub.resolve_rev(repo, rev)
        entry = repo["commits"][sha]["files"].get(path)
        if entry is None:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        size = entry["size"]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
                if start >= size or start > end:
                    unsatisfiable = {"Content-Range": f"bytes */{size}"}
                    raise HttpError(416, "Requested range not satisfiable", headers=unsatisfiable)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        self._send(status, b"", headers, ctype="application/octet-stream")
        if self.command == "GET" and length:
            with open(hub._blob_path(entry["sha256"]), "rb") as f:
                f.seek(start)
                remaining = length
                while remaining:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the evolkit test Hub server.")
    parser.add_argument("--root", default=None, help="storage folder (default: a new temporary folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--token", action="append", default=[], metavar="TOKEN=USER", help="repeatable (default: tok-write=alice)"
    )
    parser.add_argument("--org", action="append", default=[], metavar="ORG=USER1,USER2")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    tokens = dict(t.split("=", 1) for t in args.token) or {"tok-write": "alice"}
    orgs = {o.split("=", 1)[0]: o.split("=", 1)[1].split(",") for o in args.org}
    root = args.root or tempfile.mkdtemp(prefix="hubserver-")
    server = HubServer(root, tokens, port=args.port, host=args.host, orgs=orgs, verbose=args.verbose).start()
    print(f"Test hub serving {root} at {server.url}  (export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
