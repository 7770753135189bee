"""`evolkit publish --repo`: pushes through the real huggingface_hub / datasets clients to the Hub-API test server.

``tests.plugins.hub`` points HF_ENDPOINT at the server (and sets HF_HUB_DISABLE_XET=1, a private HF_HOME) before either
client is imported; this module imports them only inside tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixture_run import build_fixture_run, tree_digest

SPLIT = {"min_split_rows": 10, "test_size": 0.2}


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> Path:
    return build_fixture_run(tmp_path_factory.getbasetemp() / "publish-fixture")


def _rows(ds) -> dict:
    return {split: (ds[split].column_names, ds[split].to_list()) for split in sorted(ds)}


def _commits(hub, repo_id: str) -> list[str]:
    return [c.title for c in hub.api().list_repo_commits(repo_id, repo_type="dataset")]


def test_push_then_load_dataset_from_the_hub(hub_server, fixture_run, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    from evolkit.publish import publish_run

    repo = hub_server.new_repo_id("evolkit")
    before = tree_digest(fixture_run)
    res = publish_run(fixture_run, local=tmp_path / "local", repo=repo, token=hub_server.token, **SPLIT)
    assert tree_digest(fixture_run) == before
    info = res.repos[0]
    assert info["repo_id"] == repo and info["created"] and info["changed"]
    assert info["commit"] == hub_server.head(repo)
    assert len(_commits(hub_server, repo)) == 2  # the repo's initial commit + exactly one publish commit

    remote_files = set(hub_server.api().list_repo_files(repo, repo_type="dataset"))
    local_files = {str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*") if p.is_file()}
    assert local_files <= remote_files and remote_files - local_files <= {".gitattributes"}
    assert any(f.startswith("images/evolve/") for f in remote_files)

    for config, counts in res.configs.items():
        remote = datasets.load_dataset(repo, config)
        local = datasets.load_dataset(str(tmp_path / "local"), config)
        assert {s: remote[s].num_rows for s in remote} == counts
        assert _rows(remote) == _rows(local), config
        for split in remote:
            assert remote[split].features == local[split].features

    card = DatasetCard.load(repo)
    assert [c["config_name"] for c in card.data.configs] == list(res.configs)
    assert card.data.license == "cc-by-sa-3.0"
    assert f'load_dataset("{repo}", "sft")' in card.text
    hint = res.hint
    assert repo in hint and f"load_dataset({str(tmp_path / 'local')!r}, 'sft')" in hint


def test_republish_is_one_commit_and_removes_stale_files(hub_server, fixture_run):
    from evolkit.publish import publish_run

    repo = hub_server.new_repo_id("evolkit")
    api = hub_server.api()
    publish_run(fixture_run, repo=repo, token=hub_server.token, **SPLIT)
    n = len(_commits(hub_server, repo))

    again = publish_run(fixture_run, repo=repo, token=hub_server.token, **SPLIT)
    assert not again.repos[0]["changed"] and len(_commits(hub_server, repo)) == n, "unchanged: no commit"
    assert "(unchanged)" in again.hint

    fewer = publish_run(fixture_run, repo=repo, token=hub_server.token, configs=["sft", "prm"], min_split_rows=10,
                        test_size=0.3)
    assert fewer.repos[0]["changed"] and len(_commits(hub_server, repo)) == n + 1
    files = set(api.list_repo_files(repo, repo_type="dataset"))
    assert {f.split("/")[1] for f in files if f.startswith("data/")} == {"sft", "prm"}
    assert any(f.startswith("images/evolve/") for f in files)  # plots belong to the run, not to a config
    assert set(fewer.repos[0]["deleted"]) and all(p.startswith(("data/", "images/")) for p in fewer.repos[0]["deleted"])


def test_token_from_environment_and_missing_token(hub_server, fixture_run, monkeypatch):
    from evolkit.publish import PublishError, publish_run

    repo = hub_server.new_repo_id("evolkit")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN .* `hf auth login`"):
        publish_run(fixture_run, repo=repo, configs=["sft"], **SPLIT)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    res = publish_run(fixture_run, repo=repo, configs=["sft"], **SPLIT)
    assert res.repos[0]["created"]


def test_hub_errors_are_clear_and_leave_the_run_intact(hub_server, fixture_run, tmp_path):
    from evolkit.publish import PublishError, publish_run

    before = tree_digest(fixture_run)
    kw = dict(configs=["sft", "evol"], **SPLIT)

    def fails(match: str, **extra) -> str:
        with pytest.raises(PublishError, match=match) as e:
            publish_run(fixture_run, **{**kw, **extra})
        assert "Traceback" not in str(e.value)
        return str(e.value)

    # 401: a token the Hub does not know
    fails(r"rejected the token \(HTTP 401.*HF_TOKEN", repo=hub_server.new_repo_id(), token="not-a-token")
    # 403: bob may not write to alice's namespace (nor to an org he is not in)
    fails(r"may not write to 'alice' \(HTTP 403", repo=hub_server.new_repo_id(), token=hub_server.other_token)
    fails(r"HTTP 403", repo=hub_server.new_repo_id(namespace=hub_server.org), token=hub_server.other_token)

    # 409: the repo exists and holds somebody else's files
    foreign = hub_server.create_dataset_repo("foreign")
    from huggingface_hub import CommitOperationAdd

    hub_server.api().create_commit(foreign, [CommitOperationAdd("notes.txt", b"not evolkit")], commit_message="m",
                                   repo_type="dataset")
    head = hub_server.head(foreign)
    fails(r"already exists and holds files evolkit did not publish .*--overwrite", repo=foreign,
          token=hub_server.token)
    assert hub_server.head(foreign) == head
    res = publish_run(fixture_run, repo=foreign, token=hub_server.token, overwrite=True, **kw)
    assert "notes.txt" in hub_server.api().list_repo_files(foreign, repo_type="dataset")  # only data/, images/ go
    assert res.repos[0]["changed"]

    # a repo published from another run
    other_run = tmp_path / "other-run"
    shutil.copytree(fixture_run, other_run)
    import json

    m = json.loads((other_run / "manifest.json").read_text())
    m["stages"]["seeds"]["finished_at"] = "2000-01-01T00:00:00Z"
    (other_run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PublishError, match="holds another run's data"):
        publish_run(other_run, repo=foreign, token=hub_server.token, **kw)

    # 412: a commit landed meanwhile (the commit call is refused); 409 on the commit: conflict
    repo = hub_server.new_repo_id("evolkit")
    hub_server.fail_next(412, path_contains="/commit/", message="A commit has happened since. Please refresh")
    fails(r"changed while publishing \(HTTP 412.*run publish again", repo=repo, token=hub_server.token)
    hub_server.fail_next(409, path_contains="/commit/", message="commit in progress")
    fails(r"conflict \(HTTP 409: commit in progress\)", repo=repo, token=hub_server.token)
    hub_server.fail_next(401, path_contains="/commit/", message="token expired")
    fails(r"HTTP 401", repo=repo, token=hub_server.token)
    hub_server.fail_next(403, path_contains="/preupload/", message="no write access")
    fails(r"HTTP 403", repo=repo, token=hub_server.token)
    assert len(_commits(hub_server, repo)) == 1  # created, never committed to
    assert tree_digest(fixture_run) == before
    publish_run(fixture_run, repo=repo, token=hub_server.token, **kw)  # and it works once the Hub does
    assert len(_commits(hub_server, repo)) == 2
    assert hub_server.server.unhandled == []


def test_real_concurrent_commit_gives_412(hub_server, fixture_run, monkeypatch):
    """A commit between reading the head and committing: the parent_commit check refuses ours."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from evolkit import publish
    from evolkit.publish import PublishError

    repo = hub_server.new_repo_id("evolkit")
    publish.publish_run(fixture_run, repo=repo, token=hub_server.token, configs=["sft"], **SPLIT)
    real = HfApi.create_commit

    def racing(self, repo_id, operations, **kwargs):
        real(self, repo_id, [CommitOperationAdd("other.txt", b"someone else")], commit_message="race",
             repo_type="dataset")
        return real(self, repo_id, operations, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", racing)
    with pytest.raises(PublishError, match="changed while publishing"):
        publish.publish_run(fixture_run, repo=repo, token=hub_server.token, configs=["sft", "evol"], **SPLIT)


def test_dry_run_shows_the_commit_and_pushes_nothing(hub_server, fixture_run):
    from evolkit.publish import publish_run

    repo = hub_server.new_repo_id("evolkit")
    res = publish_run(fixture_run, repo=repo, token=hub_server.token, dry_run=True, **SPLIT)
    assert f"would push to dataset repo {repo} (would be created) in one commit" in res.hint
    assert not hub_server.api().repo_exists(repo, repo_type="dataset")

    publish_run(fixture_run, repo=repo, token=hub_server.token, **SPLIT)
    head = hub_server.head(repo)
    res = publish_run(fixture_run, repo=repo, token=hub_server.token, dry_run=True, configs=["sft"], **SPLIT)
    text = res.hint
    assert f"{repo} (exists)" in text
    assert "unchanged data/sft/train-00000-of-00001-" in text.replace("  ", " ").replace("  ", " ")
    assert "changed   README.md" in text and "delete    data/evol/train-00000-of-00001-" in text
    assert hub_server.head(repo) == head

    res = publish_run(fixture_run, repo=hub_server.new_repo_id(), token="not-a-token", dry_run=True, **SPLIT)
    assert "remote state unknown" in res.hint and "HTTP 401" in res.hint


def test_unreachable_hub(hub_server, fixture_run, monkeypatch):
    from huggingface_hub import constants

    from evolkit.publish import PublishError, publish_run

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(PublishError, match=r"cannot reach the Hub at http://127.0.0.1:9 .*nothing was committed"):
        publish_run(fixture_run, repo=hub_server.new_repo_id(), token=hub_server.token, configs=["sft"], **SPLIT)
    res = publish_run(fixture_run, repo=hub_server.new_repo_id(), token=hub_server.token, configs=["sft"],
                      dry_run=True, **SPLIT)
    assert "remote state unknown: cannot reach the Hub" in res.hint


def test_private_repo(hub_server, fixture_run):
    from huggingface_hub.errors import RepositoryNotFoundError

    from evolkit.publish import publish_run

    repo = hub_server.new_repo_id("private")
    res = publish_run(fixture_run, repo=repo, token=hub_server.token, private=True, configs=["sft"], **SPLIT)
    assert res.repos[0]["private"] is True
    assert hub_server.api().dataset_info(repo).private is True
    with pytest.raises(RepositoryNotFoundError):
        hub_server.api(hub_server.other_token).dataset_info(repo)
    public = hub_server.create_dataset_repo("public")
    res = publish_run(fixture_run, repo=public, token=hub_server.token, private=True, configs=["sft"], **SPLIT)
    assert res.repos[0]["private"] is False and "--private only applies when creating it" in res.hint


def test_separate_repos(hub_server, fixture_run):
    import datasets

    from evolkit.publish import publish_run

    base = hub_server.new_repo_id("sep")
    res = publish_run(fixture_run, repo=base, token=hub_server.token, separate_repos=True,
                      configs=["sft", "irm_pairs"], **SPLIT)
    assert [r["repo_id"] for r in res.repos] == [f"{base}-sft", f"{base}-irm-pairs"]
    ds = datasets.load_dataset(f"{base}-irm-pairs", "irm_pairs")
    assert {s: ds[s].num_rows for s in ds} == res.configs["irm_pairs"]


def test_cli_push(hub_server, fixture_run, monkeypatch, capsys):
    from evolkit.cli import main

    repo = hub_server.new_repo_id("cli")
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    assert main(["publish", str(fixture_run), "--repo", repo, "--configs", "sft", "--min-split-rows", "10"]) == 0
    out = capsys.readouterr().out
    assert repo in out and f"load_dataset({repo!r}, 'sft')" in out
    assert not (fixture_run / "dataset").exists(), "--repo alone writes no local folder"

    monkeypatch.setenv("HF_TOKEN", "not-a-token")
    assert main(["publish", str(fixture_run), "--repo", hub_server.new_repo_id(), "--configs", "sft"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evolkit: error:") and "HTTP 401" in err and "Traceback" not in err
