"""Where a staged publish folder goes: a local folder (replaced atomically) or a Hub dataset repo (one commit).

The folder is moved into place (``--local``) or pushed in **one commit** (``--repo``): ``create_repo`` then
``create_commit`` with every file added and stale files of an earlier publish deleted, parented on the head read at
the start (a concurrent commit gives a clear conflict error instead of a silent merge). A target that holds another
run's publish, or files evolkit did not write, is only replaced with ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .specs import ConfigData, PublishError, short

#: Paths of a repo that a publish owns: files under these prefixes that the new publish lacks are deleted.
MANAGED_PREFIXES = ("data/", "images/")
GENERATOR = "evolkit"


@dataclass
class Build:
    """A staged publish folder and what is in it."""

    folder: Path
    datasets: list[ConfigData]
    files: dict[str, dict[str, Any]]  # path in repo -> {bytes, sha256, rows?}
    card: str
    provenance: dict[str, Any]
    license: str
    run: dict[str, Any]


def _is_publish_folder(path: Path) -> dict[str, Any] | None:
    p = path / "provenance.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def write_local(staged: Path, dest: Path, run: dict[str, Any], overwrite: bool = False) -> None:
    """Move a staged folder to ``dest``, replacing an earlier publish there (never a folder evolkit did not write)."""
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise PublishError(f"{dest}: exists and is not a folder")
        earlier = _is_publish_folder(dest)
        if any(dest.iterdir()) and earlier is None:
            raise PublishError(f"{dest}: folder exists and is not an evolkit publish folder (no provenance.json); "
                               f"choose an empty or new folder")
        if earlier is not None and earlier.get("run", {}).get("id") != run["id"] and not overwrite:
            raise PublishError(f"{dest}: holds a publish of another run ({earlier.get('run', {}).get('name')!r}); "
                               f"pass --overwrite to replace it or choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    final = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    shutil.rmtree(final)
    shutil.copytree(staged, final)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(final, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def _server_message(e: BaseException) -> str:
    msg = getattr(e, "server_message", None) or str(e).splitlines()[0]
    return short(msg, 300)


def hub_error(e: BaseException, repo_id: str, action: str, user: str | None = None) -> PublishError:
    """A clear, actionable message for an HTTP error of the Hub client."""
    status = _status(e)
    detail = _server_message(e)
    if status == 401:
        return PublishError(f"{action} {repo_id}: the Hub rejected the token (HTTP 401: {detail}). Set HF_TOKEN to a "
                            f"valid token with write access, or run `hf auth login`")
    if status == 403:
        who = f"user {user!r}" if user else "this token"
        return PublishError(f"{action} {repo_id}: {who} may not write to {repo_id.split('/')[0]!r} (HTTP 403: "
                            f"{detail}). Use a token with write permission to that user or organisation, or publish "
                            f"under your own namespace")
    if status == 404:
        return PublishError(f"{action} {repo_id}: not found or not visible with this token (HTTP 404: {detail})")
    if status == 409:
        return PublishError(f"{action} {repo_id}: conflict (HTTP 409: {detail}). The repo already exists or another "
                            f"commit is in progress; nothing was committed")
    if status == 412:
        return PublishError(f"{action} {repo_id}: the repo changed while publishing (HTTP 412: {detail}); someone "
                            f"else committed after this publish read it. Nothing was committed: run publish again")
    return PublishError(f"{action} {repo_id} failed ({'HTTP ' + str(status) if status else type(e).__name__}: "
                        f"{detail})")


def _is_network_error(e: BaseException) -> bool:
    mod = type(e).__module__.split(".")[0]
    return isinstance(e, (ConnectionError, TimeoutError)) or mod in ("httpx", "httpx2", "httpcore", "requests",
                                                                      "urllib3")


def _hub_call(repo_id: str, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a Hub client method; HTTP and network errors become :class:`PublishError` (409 is re-raised as is)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn(*args, **kwargs)
    except HfHubHTTPError as e:
        raise hub_error(e, repo_id, action) from None
    except PublishError:
        raise
    except Exception as e:
        if _is_network_error(e):
            raise PublishError(f"{action} {repo_id}: cannot reach the Hub at {constants.ENDPOINT} "
                               f"({type(e).__name__}: {short(e, 200)}); nothing was committed") from None
        raise


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_files(api: Any, repo_id: str, revision: str | None = None) -> dict[str, dict[str, Any]]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, revision=revision):
        if isinstance(e, RepoFile):
            out[e.path] = {"blob_id": e.blob_id, "sha256": e.lfs.sha256 if e.lfs else None, "size": e.size}
    return out


def _file_state(local: Path, rel: str, sha256: str, remote: dict[str, dict[str, Any]] | None) -> str:
    if remote is None:
        return "add"
    r = remote.get(rel)
    if r is None:
        return "new"
    if (r.get("sha256") and r["sha256"] == sha256) or r.get("blob_id") == git_blob_sha1(local / rel):
        return "unchanged"
    return "changed"


@dataclass
class PushPlan:
    repo_id: str
    exists: bool | None
    adds: list[tuple[str, str, int]]  # (path, state, bytes)
    deletes: list[str]
    note: str = ""


def _stale(remote: dict[str, Any], files: dict[str, Any]) -> list[str]:
    return sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in files)


def _check_owner(api: Any, repo_id: str, remote: dict[str, Any], run: dict[str, Any], head: str,
                 overwrite: bool) -> None:
    """An existing repo may be updated when it is empty or holds a publish of this very run (or with --overwrite)."""
    if overwrite or not (set(remote) - {".gitattributes"}):
        return
    earlier = None
    if "provenance.json" in remote:
        path = api.hf_hub_download(repo_id, "provenance.json", repo_type="dataset", revision=head)
        try:
            earlier = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError:
            earlier = None
    if not isinstance(earlier, dict) or earlier.get("generator") != GENERATOR:
        raise PublishError(f"dataset repo {repo_id} already exists and holds files evolkit did not publish "
                           f"(HTTP 409 on create). Choose another --repo, or pass --overwrite to publish into it "
                           f"(one commit; its history stays)")
    if (earlier.get("run") or {}).get("id") != run["id"]:
        raise PublishError(f"dataset repo {repo_id} already exists and holds another run's data (run "
                           f"{(earlier.get('run') or {}).get('name')!r}). Choose another --repo, or pass --overwrite "
                           f"to replace it (one commit; its history stays)")


def _api(token: str | None) -> tuple[Any, str]:
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN (a token with write access, "
                           "https://huggingface.co/settings/tokens) or run `hf auth login`")
    return HfApi(token=token), token


def plan_push(b: Build, repo_id: str, token: str | None) -> PushPlan:
    """What a push would do (for --dry-run): compares with the remote repo when it can be read."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    note, remote, exists = "", None, None
    try:
        api, _ = _api(token)
        try:
            head = api.dataset_info(repo_id).sha  # fails fast when the Hub is unreachable (tree listing retries)
            remote = _remote_files(api, repo_id, revision=head)
            exists = True
        except RepositoryNotFoundError:
            remote, exists = {}, False
    except PublishError as e:
        note = f"remote state unknown: {e}"
    except HfHubHTTPError as e:
        note = f"remote state unknown: {hub_error(e, repo_id, 'reading')}"
    except Exception as e:
        if not _is_network_error(e):
            raise
        note = f"remote state unknown: cannot reach the Hub ({type(e).__name__}: {short(e, 200)})"
    adds = [(p, _file_state(b.folder, p, f["sha256"], remote), f["bytes"]) for p, f in sorted(b.files.items())]
    return PushPlan(repo_id, exists, adds, _stale(remote or {}, b.files), note)


def push(b: Build, repo_id: str, token: str | None = None, private: bool = False, overwrite: bool = False,
         commit_message: str | None = None) -> dict[str, Any]:
    """Create the dataset repo if needed and push the folder in one commit. Returns {repo_id, commit, url, ...}."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api, _ = _api(token)
    created = False
    try:
        _hub_call(repo_id, "creating dataset repo", api.create_repo, repo_id, repo_type="dataset", private=private,
                  exist_ok=False)
        created = True
    except PublishError as e:
        if "(HTTP 409" not in str(e):
            raise
    except ValueError as e:  # malformed repo id (HFValidationError)
        raise PublishError(f"--repo {repo_id!r}: {e}") from None
    info = _hub_call(repo_id, "reading dataset repo", api.dataset_info, repo_id)
    head = info.sha
    remote = _hub_call(repo_id, "reading dataset repo", _remote_files, api, repo_id, revision=head)
    if not created:
        _hub_call(repo_id, "reading dataset repo", _check_owner, api, repo_id, remote, b.run, head, overwrite)
    ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(b.folder / p)) for p in sorted(b.files)]
    deletes = _stale(remote, b.files)
    ops += [CommitOperationDelete(path_in_repo=p) for p in deletes]
    counts = ", ".join(f"{d.name} {sum(d.counts().values())}" for d in b.datasets)
    message = commit_message or f"evolkit publish of run {b.run['name']} ({counts})"
    commit = _hub_call(repo_id, "pushing to", api.create_commit, repo_id, ops, commit_message=message,
                       repo_type="dataset", parent_commit=head,
                       commit_description=f"evolkit {__version__}, run id {b.run['id']}")
    is_private = bool(getattr(info, "private", private))
    note = ("the repo already existed and is public: --private only applies when creating it"
            if private and not created and not is_private else None)
    return {"repo_id": repo_id, "commit": commit.oid, "url": commit.commit_url,
            "created": created, "changed": commit.oid != head, "deleted": deletes, "private": is_private, "note": note}
