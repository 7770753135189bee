"""Round-trips through the real huggingface_hub / datasets clients against tests/hubserver.py."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

README = """---
license: mit
configs:
- config_name: alpha
  data_files:
  - split: train
    path: data/alpha/train-*.parquet
  - split: test
    path: data/alpha/test-*.parquet
- config_name: beta
  data_files:
  - split: train
    path: data/beta/train-*.parquet
  - split: test
    path: data/beta/test-*.parquet
---
# Test dataset

Two configs, two splits each.
"""


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _make_dataset_folder(folder: Path, n_alpha_train: int = 5) -> Path:
    (folder / "README.md").parent.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(README)
    salt = uuid.uuid4().hex  # unique content per folder, so LFS objects are really uploaded every time

    def alpha(n, off=0):
        return [{"id": off + i, "text": f"{salt} {off + i}", "score": i / 2} for i in range(n)]

    def beta(n):
        return [{"question": f"q{i} {salt}", "answer": f"a{i}", "tags": ["x"] * i} for i in range(n)]

    _write_parquet(folder / "data/alpha/train-00000-of-00001.parquet", alpha(n_alpha_train))
    _write_parquet(folder / "data/alpha/test-00000-of-00001.parquet", alpha(2, off=100))
    _write_parquet(folder / "data/beta/train-00000-of-00001.parquet", beta(4))
    _write_parquet(folder / "data/beta/test-00000-of-00001.parquet", beta(3))
    (folder / "notes.txt").write_text(f"a small regular (non-LFS) file {salt}\n")
    return folder


def _rows(ds) -> dict:
    return {split: (ds[split].column_names, ds[split].to_list()) for split in sorted(ds)}


@pytest.fixture()
def dataset_repo(hub_server, tmp_path):
    """A dataset repo with the folder uploaded once, and the local folder."""
    folder = _make_dataset_folder(tmp_path / "local")
    api = hub_server.api()
    repo_id = hub_server.new_repo_id("ds")
    api.create_repo(repo_id, repo_type="dataset")
    start = len(hub_server.server.requests)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message="first upload")
    calls = [(method, path.split("?")[0]) for method, path, _ in hub_server.server.requests[start:]]
    prefix = f"/datasets/{repo_id}.git/info/lfs/objects"
    for call in [
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/datasets/{repo_id}/preupload/main"),
        ("POST", f"{prefix}/batch"),
        ("POST", f"{prefix}/verify"),
        ("POST", f"/api/datasets/{repo_id}/commit/main"),
    ]:
        assert call in calls
    assert sum(1 for method, path in calls if method == "PUT" and path.startswith("/_lfs/upload/")) == 4
    return repo_id, folder


def test_env_points_at_test_hub(hub_server):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub_server.url == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_DISABLE_XET
    assert not constants.is_offline_mode()


def test_upload_update_and_load_dataset(hub_server, dataset_repo, tmp_path):
    import datasets
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id, folder = dataset_repo
    api = hub_server.api()
    files = set(api.list_repo_files(repo_id, repo_type="dataset"))
    assert {"README.md", "notes.txt", "data/alpha/train-00000-of-00001.parquet", ".gitattributes"} <= files

    info = api.dataset_info(repo_id, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["data/beta/test-00000-of-00001.parquet"].lfs is not None  # LFS batch + PUT path
    assert siblings["notes.txt"].lfs is None  # inline base64 path
    assert [c["config_name"] for c in info.card_data.configs] == ["alpha", "beta"]
    first_sha = info.sha

    # Update in one commit: new alpha train data (LFS), a changed regular file, a deletion.
    alpha_train = "data/alpha/train-00000-of-00001.parquet"
    _write_parquet(folder / alpha_train, [{"id": i, "text": f"new {i}", "score": 0.5} for i in range(7)])
    (folder / "notes.txt").write_text("changed\n")
    commit = api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd(alpha_train, folder / alpha_train),
            CommitOperationAdd("notes.txt", folder / "notes.txt"),
            CommitOperationDelete(".gitattributes"),
        ],
        commit_message="update alpha",
        parent_commit=first_sha,
    )
    assert commit.oid == hub_server.head(repo_id) != first_sha
    assert set(api.list_repo_files(repo_id, repo_type="dataset")) == files - {".gitattributes"}

    # Re-upload the folder with one changed file: preupload reports the remote oids, so only that
    # file is uploaded, in one commit; an unchanged re-upload makes no commit at all.
    beta_test = "data/beta/test-00000-of-00001.parquet"
    _write_parquet(folder / beta_test, [{"question": "q", "answer": "a", "tags": ["y"]}] * 5)
    start = len(hub_server.server.requests)
    again = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message="beta")
    assert sum(method == "PUT" for method, _, _ in hub_server.server.requests[start:]) == 1
    assert api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset").oid == again.oid
    history = api.list_repo_commits(repo_id, repo_type="dataset")
    assert [c.title for c in history] == ["beta", "update alpha", "first upload", "initial commit"]

    for config in ("alpha", "beta"):
        remote = datasets.load_dataset(repo_id, config)
        local = datasets.load_dataset(str(folder), config)
        assert sorted(remote) == ["test", "train"]
        assert _rows(remote) == _rows(local)
        assert remote["train"].features == local["train"].features
    assert datasets.load_dataset(repo_id, "alpha")["train"]["text"] == [f"new {i}" for i in range(7)]
    assert datasets.load_dataset(repo_id, "beta")["test"].num_rows == 5


def test_card_downloads_and_listing(hub_server, dataset_repo, tmp_path):
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    repo_id, folder = dataset_repo
    card = DatasetCard.load(repo_id)
    assert [c["config_name"] for c in card.data.configs] == ["alpha", "beta"]
    assert "Two configs" in card.text

    path = hf_hub_download(repo_id, "data/beta/train-00000-of-00001.parquet", repo_type="dataset")
    assert Path(path).read_bytes() == (folder / "data/beta/train-00000-of-00001.parquet").read_bytes()
    snap = Path(snapshot_download(repo_id, repo_type="dataset", local_dir=tmp_path / "snap"))
    for local in folder.rglob("*"):
        if local.is_file():
            assert (snap / local.relative_to(folder)).read_bytes() == local.read_bytes()

    api = HfApi()  # anonymous read of a public repo
    top = {e.path: type(e) for e in api.list_repo_tree(repo_id, repo_type="dataset")}
    assert top == {".gitattributes": RepoFile, "README.md": RepoFile, "notes.txt": RepoFile, "data": RepoFolder}
    full = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)]
    hub_server.server.tree_page_size = 2  # force Link-header pagination
    start = len(hub_server.server.requests)
    try:
        paged = [e.path for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, expand=True)]
    finally:
        hub_server.server.tree_page_size = 1000
    assert paged == full and "data/alpha/test-00000-of-00001.parquet" in full
    assert sum("cursor=" in path for _, path, _ in hub_server.server.requests[start:]) >= 4
    infos = api.get_paths_info(repo_id, ["README.md", "data/alpha", "missing.txt"], repo_type="dataset")
    assert [(type(i), i.path) for i in infos] == [(RepoFile, "README.md"), (RepoFolder, "data/alpha")]


def test_error_statuses_surface_as_client_errors(hub_server, dataset_repo):
    from huggingface_hub import CommitOperationAdd, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _ = dataset_repo
    api, other = hub_server.api(), hub_server.api(hub_server.other_token)
    add = lambda: [CommitOperationAdd("x.txt", b"x")]

    def raised(status, fn, *args, **kwargs):
        """Call fn, expect exactly HfHubHTTPError (not a subclass) carrying the HTTP status."""
        with pytest.raises(HfHubHTTPError) as excinfo:
            fn(*args, **kwargs)
        assert excinfo.type is HfHubHTTPError
        assert excinfo.value.response.status_code == status
        return str(excinfo.value)

    anonymous, bad_token = hub_server.api(False), hub_server.api("not-a-token")
    # 401: no token / unknown token (over http:// the client does not map 401 to RepositoryNotFoundError)
    raised(401, anonymous.create_repo, hub_server.new_repo_id(), repo_type="dataset")
    raised(401, anonymous.create_commit, repo_id, add(), commit_message="m", repo_type="dataset")
    assert "Invalid credentials" in raised(401, bad_token.dataset_info, repo_id)
    # 403: bob writes to alice's namespace / repo, or to an org he is not in
    raised(403, other.create_repo, hub_server.new_repo_id(namespace=hub_server.user), repo_type="dataset")
    raised(403, other.create_repo, hub_server.new_repo_id(namespace=hub_server.org), repo_type="dataset")
    raised(403, other.create_commit, repo_id, add(), commit_message="m", repo_type="dataset")
    api.create_repo(hub_server.new_repo_id(namespace=hub_server.org), repo_type="dataset")  # alice is a member
    # 409: repo exists (exist_ok=True is handled by the client)
    raised(409, api.create_repo, repo_id, repo_type="dataset")
    assert api.create_repo(repo_id, repo_type="dataset", exist_ok=True).repo_id == repo_id
    # 412: stale parent commit
    stale = api.list_repo_commits(repo_id, repo_type="dataset")[-1].commit_id
    commit = api.create_commit
    message = raised(412, commit, repo_id, add(), commit_message="m", repo_type="dataset", parent_commit=stale)
    assert "A commit has happened since" in message
    # 500 injected by the test switch
    hub_server.fail_next(500, path_contains="/commit/", message="boom")
    assert "boom" in raised(500, api.create_commit, repo_id, add(), commit_message="m", repo_type="dataset")
    # 404 flavours
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info(hub_server.new_repo_id())
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", repo_type="dataset")
    # private repos are invisible to other users
    private = hub_server.create_dataset_repo(private=True)
    with pytest.raises(RepositoryNotFoundError):
        other.dataset_info(private)
    assert api.dataset_info(private).private is True
    assert hub_server.server.unhandled == []
