"""`evolkit publish` to a local folder: layout, `datasets.load_dataset` round trip, card, validation, splits, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fixture_run import build_fixture_run, tree_digest

SPLIT = {"min_split_rows": 10, "test_size": 0.2}


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> Path:
    return build_fixture_run(tmp_path_factory.getbasetemp() / "publish-fixture")


@pytest.fixture()
def run_copy(fixture_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(fixture_run, dst)
    return dst


@pytest.fixture(scope="session")
def published(fixture_run, tmp_path_factory):
    from evolkit.publish import publish_run

    out = tmp_path_factory.mktemp("published") / "ds"
    before = tree_digest(fixture_run)
    result = publish_run(fixture_run, local=out, **SPLIT)
    assert tree_digest(fixture_run) == before, "publishing must only read the run folder"
    return out, result


def _source_rows(run: Path, config: str) -> tuple[str, list[dict]]:
    """The rows the publisher should take for a config (first source the manifest lists), normalised."""
    from evolkit.publish import SPECS, validate_rows
    from evolkit.store import RunStore, read_parquet

    outputs = RunStore(run).outputs()
    for stage, name in SPECS[config].sources:
        if name in outputs.get(stage, {}):
            return f"{stage}/{name}", validate_rows(config, read_parquet(outputs[stage][name]))
    raise AssertionError(f"no source for {config}")


def _decode(config: str, rows: list[dict]) -> list[dict]:
    from evolkit.publish import json_columns

    jc = json_columns(config)
    return [{k: (json.loads(v) if k in jc and v is not None else v) for k, v in r.items()} for r in rows]


def test_layout_and_load_dataset_round_trip(published, fixture_run):
    import datasets

    from evolkit.publish import arrow_schema
    from evolkit.records import PUBLISHED

    out, result = published
    assert list(result.configs) == list(PUBLISHED)  # all six configs, in the table's order
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "provenance.json"} <= files
    assert any(f.startswith("images/") and f.endswith(".png") for f in files)
    for config, counts in result.configs.items():
        for split in counts:
            assert f"data/{config}/{split}-00000-of-00001.parquet" in files
    assert not [f for f in files if not f.startswith(("data/", "images/")) and f not in ("README.md",
                                                                                         "provenance.json")]

    for config, counts in result.configs.items():
        ds = datasets.load_dataset(str(out), config)
        assert {s: ds[s].num_rows for s in ds} == counts, config
        columns = list(PUBLISHED[config].model_fields)
        for split in ds:
            assert ds[split].column_names == columns == arrow_schema(config).names
        loaded = _decode(config, [r for s in ds for r in ds[s].to_list()])
        if config == "rl_prompts":
            assert loaded and all(r["gold_answer"] and r["prompt"].endswith("### Response:") for r in loaded)
            continue
        _, expected = _source_rows(fixture_run, config)
        assert sorted(loaded, key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"]), config
    # load_dataset without a config gives the default one (sft)
    assert datasets.load_dataset(str(out))["train"].num_rows == result.configs["sft"]["train"]


def test_splits_are_grouped_by_root_problem_and_seeded(fixture_run, published, tmp_path):
    import datasets

    from evolkit.publish import Lineage, publish_run
    from evolkit.store import RunStore

    out, result = published
    lineage = Lineage(RunStore(fixture_run))
    key = {"sft": "problem_id", "evol": "id", "irm_rankings": "instruction_id", "prm": "problem_id",
           "rl_prompts": "id"}
    sides: dict[str, set[str]] = {"train": set(), "test": set()}
    split_configs = [c for c, counts in result.configs.items() if "test" in counts and c in key]
    assert {"sft", "evol", "rl_prompts"} <= set(split_configs)
    for config in split_configs:
        ds = datasets.load_dataset(str(out), config)
        for split in ds:
            sides[split] |= {lineage.root_of(r) for r in ds[split][key[config]]}
    assert sides["test"] and sides["train"]
    assert not sides["train"] & sides["test"], "a root problem straddles train and test"
    for config, counts in result.configs.items():  # tiny configs: train only
        if sum(counts.values()) < SPLIT["min_split_rows"]:
            assert list(counts) == ["train"]

    same = publish_run(fixture_run, local=tmp_path / "same", **SPLIT)
    assert same.configs == result.configs
    for f in (out / "data").rglob("*.parquet"):
        assert (tmp_path / "same" / f.relative_to(out)).read_bytes() == f.read_bytes()
    other = publish_run(fixture_run, local=tmp_path / "other", seed=12345, **SPLIT)
    assert other.configs != result.configs


def test_card_parses_and_states_what_it_must(published, fixture_run):
    from huggingface_hub import DatasetCard, DatasetCardData

    out, result = published
    card = DatasetCard.load(out / "README.md")
    assert isinstance(card.data, DatasetCardData)
    data = card.data.to_dict()
    assert DatasetCardData(**data).to_dict() == data
    assert data["license"] == "cc-by-sa-3.0"  # the sft config mixes in CC BY-SA open-domain rows
    assert data["language"] == ["en"]
    assert "text-generation" in data["task_categories"]
    assert data["size_categories"] == ["n<1K"]
    assert {"openai/gsm8k", "databricks/databricks-dolly-15k"} <= set(data["source_datasets"])
    assert "math" in data["tags"] and data["pretty_name"] == "evolkit: fixture"
    assert [c["config_name"] for c in data["configs"]] == list(result.configs)
    assert data["configs"][0].get("default") is True
    sft_cfg = data["configs"][0]
    assert [f["split"] for f in sft_cfg["data_files"]] == list(result.configs["sft"])

    text = card.text
    for heading in ("## Configs", "## Recipe and stages", "## Models and sampling", "## Seed sources",
                    "## Growth and filtering", "## Review status", "## Decontamination", "## Intended use",
                    "## License", "## Provenance"):
        assert heading in text, heading
    assert "WizardMath" in text and "seeds → sft" in text
    assert "share-alike" in text.lower() and "CC BY-SA 3.0" in text and "MIT" in text
    assert "- `sft`: **CC BY-SA 3.0**, share-alike: 3 of its" in text
    assert "- `evol`: **MIT**" in text and "- `rl_prompts`: **MIT**" in text
    assert "det-teacher" in text and "temperature=0.7" in text
    for img in {line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")}:
        assert (out / img).is_file(), img
    assert "images/evolve/" in text
    assert "No human review stage ran" in text
    assert "benchmark_test.jsonl" in text or "decontamination" in text.lower()

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["generator"] == "evolkit" and prov["run"]["name"] == "fixture"
    assert prov["config"]["backend"]["model"] == "det-teacher"
    assert {"datasets", "huggingface-hub", "pyarrow", "python"} <= set(prov["packages"])
    assert {c: v["splits"] for c, v in prov["configs"].items()} == result.configs
    for rel, info in prov["files"].items():
        if rel != "provenance.json":
            assert info["bytes"] == (out / rel).stat().st_size


def test_mit_only_configs_get_mit(fixture_run, tmp_path):
    from huggingface_hub import DatasetCard

    from evolkit.publish import publish_run

    res = publish_run(fixture_run, local=tmp_path / "mit", configs=["evol", "prm", "rl_prompts"], **SPLIT)
    assert list(res.configs) == ["evol", "prm", "rl_prompts"] and res.license == "mit"
    card = DatasetCard.load(tmp_path / "mit" / "README.md")
    assert card.data.license == "mit"
    assert "share-alike" not in card.text.lower()
    assert not (tmp_path / "mit" / "data" / "sft").exists()


def test_no_secret_reaches_the_published_files(run_copy, tmp_path, monkeypatch):
    from evolkit.publish import publish_run

    secret = "sk-test-secret-value-123456"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    cfg = run_copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("name: fixture", f"name: fixture\nnote: key {secret}"))
    publish_run(run_copy, local=tmp_path / "out", **SPLIT)
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_invalid_rows_name_config_row_and_field(run_copy, tmp_path):
    from evolkit.publish import PublishError, publish_run, validate_rows
    from evolkit.store import RunStore, write_parquet

    store = RunStore(run_copy)
    where, _ = _source_rows(run_copy, "sft")
    rows = store.load(*where.split("/"))
    rows[16]["completion"] = None
    rows[2]["kind"] = "poetry"
    write_parquet(run_copy / f"{where}.parquet", rows)
    before = tree_digest(run_copy)
    with pytest.raises(PublishError) as e:
        publish_run(run_copy, local=tmp_path / "out", **SPLIT)
    msg = str(e.value)
    assert f"config sft, row 17 (id {rows[16]['id']!r}), field 'completion': None is not of type 'string'" in msg
    assert f"config sft, row 3 (id {rows[2]['id']!r}), field 'kind': 'poetry' is not one of ['math', " in msg
    assert "nothing was written" in msg
    assert not (tmp_path / "out").exists()
    assert tree_digest(run_copy) == before

    # Rows that are not from Parquet can also lack fields or carry unknown ones; nested fields are named by path.
    good = validate_rows("sft", rows[:2])
    bad = [dict(good[0], surprise=1), {k: v for k, v in good[1].items() if k != "prompt"}]
    with pytest.raises(PublishError) as e:
        validate_rows("sft", bad)
    assert f"config sft, row 1 (id {good[0]['id']!r}), field 'surprise': not a field of this config" in str(e.value)
    assert f"config sft, row 2 (id {good[1]['id']!r}), field 'prompt': missing (required)" in str(e.value)
    ranking = {"id": "r1", "instruction_id": "i", "instruction": "q",
               "variants": [{"id": "a", "text": "t", "evolver": "e", "rank": 1},
                            {"id": "b", "text": "t", "evolver": "e", "rank": "2"}]}
    with pytest.raises(PublishError, match=r"row 1 \(id 'r1'\), field 'variants.1.rank': '2' is not of type 'integer'"):
        validate_rows("irm_rankings", [ranking])
    with pytest.raises(PublishError, match=r"25 invalid value\(s\)(.|\n)*\.\.\. and 5 more"):
        validate_rows("sft", [dict(good[0], completion=None)] * 25)


def test_checks_beyond_the_schema(run_copy, tmp_path):
    from evolkit.publish import PublishError, publish_run, validate_rows
    from evolkit.store import RunStore, write_parquet

    store = RunStore(run_copy)
    where, _ = _source_rows(run_copy, "prm")
    rows = store.load(*where.split("/"))
    rows[1]["labels"] = rows[1]["labels"] + [True, False]
    write_parquet(run_copy / f"{where}.parquet", rows)
    with pytest.raises(PublishError, match=r"config prm, row 2 \(id .*\), field 'labels': \d+ labels for \d+ steps"):
        publish_run(run_copy, local=tmp_path / "out", **SPLIT)
    pair = {"id": "p", "ranking_id": "r", "chosen": "same", "rejected": "same"}
    from evolkit.publish import SPECS

    with pytest.raises(PublishError, match="config irm_pairs, row 1 \\(id 'p'\\), field 'rejected': equals 'chosen'"):
        validate_rows("irm_pairs", [pair], check=SPECS["irm_pairs"].check)


def test_republish_replaces_folder_and_drops_stale_files(fixture_run, tmp_path):
    from evolkit.publish import PublishError, publish_run

    out = tmp_path / "ds"
    publish_run(fixture_run, local=out, **SPLIT)
    first = tree_digest(out)
    publish_run(fixture_run, local=out, **SPLIT)
    assert tree_digest(out) == first, "re-publishing an unchanged run gives the same bytes"
    publish_run(fixture_run, local=out, configs=["sft", "prm"], **SPLIT)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["prm", "sft"]
    assert not list(tmp_path.glob(".ds.*")), "no staging leftovers"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(PublishError, match="not an evolkit publish folder"):
        publish_run(fixture_run, local=foreign, **SPLIT)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_other_runs_publish_needs_overwrite(fixture_run, run_copy, tmp_path):
    from evolkit.publish import PublishError, publish_run

    out = tmp_path / "ds"
    publish_run(fixture_run, local=out, **SPLIT)
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["stages"]["seeds"]["finished_at"] = "2000-01-01T00:00:00Z"  # another run
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="another run.*--overwrite"):
        publish_run(run_copy, local=out, **SPLIT)
    publish_run(run_copy, local=out, overwrite=True, **SPLIT)


def test_dry_run_writes_nothing(fixture_run, tmp_path):
    from evolkit.publish import publish_run

    res = publish_run(fixture_run, local=tmp_path / "ds", dry_run=True, **SPLIT)
    assert not (tmp_path / "ds").exists()
    text = res.hint
    assert text.startswith("dry run: nothing was written or pushed")
    assert "README.md" in text and "data/sft/train-00000-of-00001.parquet" in text


def test_separate_folders_per_config(fixture_run, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    from evolkit.publish import publish_run

    res = publish_run(fixture_run, local=tmp_path / "sep", separate_repos=True, **SPLIT)
    assert sorted(p.name for p in (tmp_path / "sep").iterdir()) == sorted(res.configs)
    licenses = {}
    for config in res.configs:
        card = DatasetCard.load(tmp_path / "sep" / config / "README.md")
        assert [c["config_name"] for c in card.data.configs] == [config]
        licenses[config] = card.data.license
        assert datasets.load_dataset(str(tmp_path / "sep" / config), config)["train"].num_rows == \
            res.configs[config]["train"]
    assert licenses["sft"] == "cc-by-sa-3.0" and licenses["evol"] == licenses["prm"] == "mit"


def test_reviewed_output_is_preferred_and_reported(run_copy, tmp_path):
    from huggingface_hub import DatasetCard

    from evolkit.publish import publish_run
    from evolkit.store import RunStore

    store = RunStore(run_copy)
    where, rows = _source_rows(run_copy, "prm")
    for i, r in enumerate(rows):
        if i % 2 == 0:
            r.update(label_source="human", labeller="human")
    rows[1].update(labeller=rows[1]["labeller"] + "+human")  # some steps reviewed
    report = {  # the shape of evolkit.review.resolve's PRM report
        "solutions": len(rows), "human_solutions": len(rows) // 2, "partial_solutions": 1,
        "steps": {"human": 30, "model": 12}, "annotators": [{"a": "ann1", "b": "ann2", "steps": 30, "agreement": 0.9,
                                                             "kappa3": 0.8}],
        "judge_vs_human": {"steps": 30, "accuracy": 0.8, "per_class": {"correct": {"precision": 0.9}}},
        "plot": "review/agreement_prm.png",
    }
    store.finish("review", {"prm": rows}, {"prm": report})
    res = publish_run(run_copy, local=tmp_path / "ds", **SPLIT)
    assert sum(res.configs["prm"].values()) == len(rows)
    text = DatasetCard.load(tmp_path / "ds" / "README.md").text
    human = sum(r["label_source"] == "human" for r in rows)
    assert "A human review stage ran" in text and "#### Review of `prm`" in text
    assert "| ann1 | ann2 | 30 | 0.9 | 0.8 |" in text
    assert "**judge_vs_human**: steps: 30, accuracy: 0.8, per_class: (correct: (precision: 0.9))" in text
    assert (f"| `prm` | {len(rows)} | `review/prm` | {100 * human / len(rows):.1f}% ({human} rows; 1 more partly "
            f"reviewed)") in text
    assert "expert-generated" in DatasetCard.load(tmp_path / "ds" / "README.md").data.annotations_creators


def test_publish_section_of_the_run_config(run_copy, tmp_path):
    import yaml
    from huggingface_hub import DatasetCard

    from evolkit.publish import PublishError, publish_run

    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["publish"] = {"pretty_name": "Fixture Math", "configs": ["sft", "evol"], "min_split_rows": 10,
                      "repo": "alice/from-config"}
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = publish_run(run_copy, local=tmp_path / "ds")  # an explicit target replaces the config's repo: no push
    assert list(res.configs) == ["sft", "evol"] and res.repos == [] and res.local == [tmp_path / "ds"]
    assert DatasetCard.load(tmp_path / "ds" / "README.md").data.pretty_name == "Fixture Math"
    cfg["publish"] = {"test_size": 2}
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(PublishError, match="publish.test_size"):
        publish_run(run_copy, local=tmp_path / "ds2")
    with pytest.raises(PublishError, match="unknown config"):
        publish_run(run_copy, local=tmp_path / "ds2", configs=["sft", "nope"], test_size=0.1)


def test_cli_publish_default_target_and_errors(run_copy, tmp_path, capsys):
    from evolkit.cli import main

    assert main(["publish", str(run_copy), "--min-split-rows", "10", "--configs", "sft,evol"]) == 0
    out = capsys.readouterr().out
    target = run_copy / "dataset"
    assert (target / "README.md").is_file() and sorted(p.name for p in (target / "data").iterdir()) == ["evol", "sft"]
    assert "published 2 config(s)" in out and f"load_dataset({str(target)!r}, 'sft')" in out

    assert main(["publish", str(run_copy), "--local", str(tmp_path / "x"), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and not (tmp_path / "x").exists()

    assert main(["publish", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_rows_are_validated_against_the_schema_files(fixture_run, tmp_path, monkeypatch):
    from evolkit import publish
    from evolkit.records import PUBLISHED, SCHEMA_DIR, json_schema

    for config in PUBLISHED:  # the committed files are what `python -m evolkit.records` writes
        assert json.loads((SCHEMA_DIR / f"{config}.schema.json").read_text()) == json.loads(
            json.dumps(json_schema(config), sort_keys=True))
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schemas)
    sft = json.loads((schemas / "sft.schema.json").read_text())
    sft["properties"]["instruction"]["maxLength"] = 5
    (schemas / "sft.schema.json").write_text(json.dumps(sft))
    monkeypatch.setattr(publish, "SCHEMA_DIR", schemas)
    with pytest.raises(publish.PublishError, match=r"(?s)config sft, row 1 .*field 'instruction': .* is too long.*"
                                                   r"schemas/sft.schema.json differs from evolkit.records"):
        publish.publish_run(fixture_run, local=tmp_path / "out", **SPLIT)
    assert not (tmp_path / "out").exists()


def test_fast_checker_never_accepts_what_jsonschema_rejects(fixture_run):
    import copy
    import random

    from jsonschema import Draft202012Validator

    from evolkit.publish import fast_checker, load_schema
    from evolkit.records import PUBLISHED

    rng = random.Random(0)
    odd = [None, 0, 1.5, True, "x", [], ["a"], [None], {}, {"k": 1}, [{"id": 1}], "human", "upward"]
    for config in PUBLISHED:
        schema = load_schema(config)
        fast, slow = fast_checker(schema), Draft202012Validator(schema)
        assert fast is not None, f"{config}: the records' schema left the fast subset"
        if config == "rl_prompts":
            rows = [{"id": "a", "prompt": "p", "instruction": "i", "source": "gsm8k", "gold_answer": "3"}]
        else:
            _, rows = _source_rows(fixture_run, config)
        checked = 0
        for row in rows[:20]:
            assert fast(row) and slow.is_valid(row)
            for _ in range(40):
                bad = copy.deepcopy(row)
                target = bad
                key = rng.choice(list(bad))
                if isinstance(bad[key], list) and bad[key] and isinstance(bad[key][0], dict) and rng.random() < 0.5:
                    target = bad[key][0]
                    key = rng.choice(list(target))
                action = rng.random()
                if action < 0.15:
                    del target[key]
                elif action < 0.25:
                    target["unexpected"] = 1
                else:
                    target[key] = rng.choice(odd)
                if fast(bad):
                    assert slow.is_valid(bad), (config, bad)
                checked += 1
        assert checked
