"""`evolkit publish` to a local folder: layout, `datasets.load_dataset` round trip, card, validation, splits, CLI."""

from __future__ import annotations

import hashlib
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
        for split in counts:  # data/<config>/<split>-00000-of-00001-<16 hex digits of the file's SHA-256>.parquet
            [name] = [f for f in files if f.startswith(f"data/{config}/{split}-00000-of-00001-")]
            digest = name.rsplit("-", 1)[1].removesuffix(".parquet")
            assert len(digest) == 16 and hashlib.sha256((out / name).read_bytes()).hexdigest().startswith(digest)
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
    assert "README.md" in text and "data/sft/train-00000-of-00001-" in text


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
    monkeypatch.setattr(publish.validate, "SCHEMA_DIR", schemas)
    with pytest.raises(publish.PublishError, match=r"(?s)config sft, row 1 .*field 'instruction': .* is too long.*"
                                                   r"schemas/sft.schema.json differs from evolkit.records"):
        publish.publish_run(fixture_run, local=tmp_path / "out", **SPLIT)
    assert not (tmp_path / "out").exists()


def test_validation_accepts_exactly_what_the_json_schema_accepts(fixture_run):
    """Pydantic (strict) validates first; it must never accept a row the JSON Schema rejects, and every row the schema
    rejects must fail validate_rows (with the schema's message)."""
    import copy
    import random

    from jsonschema import Draft202012Validator

    from evolkit.publish import PublishError, load_schema, validate_rows
    from evolkit.records import PUBLISHED

    rng = random.Random(0)
    odd = [None, 0, 1.5, 2.0, True, "x", [], ["a"], [None], {}, {"k": 1}, {1: "a"}, [{"id": 1}], "human", "upward"]
    for config, model in PUBLISHED.items():
        schema = load_schema(config)
        slow = Draft202012Validator(schema)
        if config == "rl_prompts":
            rows = [{"id": "a", "prompt": "p", "instruction": "i", "source": "gsm8k", "gold_answer": "3"}]
        else:
            _, rows = _source_rows(fixture_run, config)
        checked = 0
        for row in rows[:20]:
            assert slow.is_valid(row) and validate_rows(config, [row]) == [model.model_validate(row).row()]
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
                try:
                    model.model_validate(bad, strict=True)
                    strict_ok = True
                except Exception:
                    strict_ok = False
                if strict_ok:
                    assert slow.is_valid(bad), (config, bad)
                try:
                    validate_rows(config, [bad])
                    accepted = True
                except PublishError:
                    accepted = False
                if not slow.is_valid(bad):
                    assert not accepted, (config, bad)
                checked += 1
        assert checked


def _set_output(run: Path, stage: str, name: str, rows: list[dict] | None) -> None:
    """Write (or with None remove) one output of a finished stage, as the stage would list it in the manifest."""
    from evolkit.store import write_parquet

    manifest = json.loads((run / "manifest.json").read_text())
    outputs = manifest["stages"][stage]["outputs"]
    path = run / stage / f"{name}.parquet"
    if rows is None:
        outputs.pop(name, None)
        path.unlink(missing_ok=True)
    else:
        write_parquet(path, rows)
        outputs[name] = {"path": f"{stage}/{name}.parquet", "rows": len(rows)}
    (run / "manifest.json").write_text(json.dumps(manifest))


def _set_summary(run: Path, stage: str, **values) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"][stage].setdefault("summary", {}).update(values)
    (run / "manifest.json").write_text(json.dumps(manifest))


def _published_ids(folder: Path, config: str) -> set[str]:
    import datasets

    ds = datasets.load_dataset(str(folder), config)
    return {r["id"] for split in ds for r in ds[split]}


def test_sft_holds_seed_solutions_and_evolved_ones_only_when_asked(run_copy, tmp_path):
    from huggingface_hub import DatasetCard

    from evolkit.cli import main
    from evolkit.publish import publish_run
    from evolkit.store import RunStore

    store = RunStore(run_copy)
    seed_ids = {r["id"] for r in store.load("sft", "sft")}
    evolved = store.load("evolve", "sft_evolved")  # the evolve stage's output: the evolved problems' rows only
    assert evolved and all(r["round"] > 0 for r in evolved) and not {r["id"] for r in evolved} & seed_ids

    res = publish_run(run_copy, local=tmp_path / "default", **SPLIT)  # the default: as in the recipe
    assert _published_ids(tmp_path / "default", "sft") == seed_ids
    assert res.configs["sft"] and sum(res.configs["sft"].values()) == len(seed_ids)
    text = DatasetCard.load(tmp_path / "default" / "README.md").text
    assert "not included (publish setting `sft_include_evolved: false`" in text
    assert f"the run has {len(evolved)} such rows (`evolve/sft_evolved`)" in text
    prov = json.loads((tmp_path / "default" / "provenance.json").read_text())
    assert prov["configs"]["sft"]["source"] == "sft/sft"
    assert prov["configs"]["sft"]["selection"]["include_evolved"] is False

    publish_run(run_copy, local=tmp_path / "with", sft_include_evolved=True, **SPLIT)
    assert _published_ids(tmp_path / "with", "sft") == seed_ids | {r["id"] for r in evolved}
    text = DatasetCard.load(tmp_path / "with" / "README.md").text
    assert (f"included (publish setting `sft_include_evolved: true`): {len(evolved)} of the "
            f"{len(seed_ids) + len(evolved)} `sft` rows") in text

    # The run config's publish section sets it too; the command-line flag wins over nothing.
    cfg = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text(cfg + "publish:\n  sft_include_evolved: true\n")
    publish_run(run_copy, local=tmp_path / "config", **SPLIT)
    assert _published_ids(tmp_path / "config", "sft") == seed_ids | {r["id"] for r in evolved}
    (run_copy / "config.yaml").write_text(cfg)
    assert main(["publish", str(run_copy), "--local", str(tmp_path / "cli"), "--min-split-rows", "10",
                 "--configs", "sft"]) == 0
    assert _published_ids(tmp_path / "cli", "sft") == seed_ids
    assert main(["publish", str(run_copy), "--local", str(tmp_path / "cli2"), "--min-split-rows", "10",
                 "--configs", "sft", "--sft-include-evolved"]) == 0
    assert _published_ids(tmp_path / "cli2", "sft") == seed_ids | {r["id"] for r in evolved}

    # An older run folder: evolve/sft held the seed SFT rows and the evolved rows (those with round > 0).
    seed_rows = store.load("sft", "sft")
    _set_output(run_copy, "evolve", "sft_evolved", None)
    _set_output(run_copy, "evolve", "sft", seed_rows + evolved[:5])
    publish_run(run_copy, local=tmp_path / "old", sft_include_evolved=True, **SPLIT)
    assert _published_ids(tmp_path / "old", "sft") == seed_ids | {r["id"] for r in evolved[:5]}


def test_rl_prompts_are_every_seed_and_every_kept_evolved_problem(run_copy, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard

    from evolkit import prompts
    from evolkit.publish import publish_run
    from evolkit.store import RunStore, write_parquet

    store = RunStore(run_copy)
    seeds = store.load("seeds", "problems")
    evolved = store.load("evolve", "problems")
    evol = store.load("evolve", "evol")
    flag = evol[0]["id"]
    for r in evol:
        r["flagged"] = r["id"] == flag
    write_parquet(run_copy / "evolve" / "evol.parquet", evol)
    publish_run(run_copy, local=tmp_path / "flagged", **SPLIT)
    ds = datasets.load_dataset(str(tmp_path / "flagged"), "rl_prompts")
    rows = {r["id"]: r for split in ds for r in ds[split]}
    assert set(rows) == {p["id"] for p in seeds} | {p["id"] for p in evolved}
    assert len(rows) == len(seeds) + len(evolved)
    template = prompts.wizardmath_template("default")
    for p in seeds + evolved:
        r = rows[p["id"]]
        assert r["instruction"] == p["question"] and r["prompt"] == template.replace("{instruction}", p["question"])
        assert r["gold_answer"] == (None if p["id"] == flag else p["gold_answer"])
    assert all(rows[p["id"]]["source"] == p["source"] for p in seeds)
    text = DatasetCard.load(tmp_path / "flagged" / "README.md").text
    assert (f"**`rl_prompts`:** {len(seeds)} seed problems and {len(evolved)} kept evolved problems; 1 evolved "
            f"problems have no gold answer") in text


def test_card_reports_steps_prm_models_and_a_single_evolver(run_copy, tmp_path):
    from huggingface_hub import DatasetCard

    from evolkit.publish import publish_run
    from evolkit.store import RunStore, write_parquet

    _set_summary(run_copy, "sft", steps_per_solution={
        "gsm8k": {"n": 10, "mean": 2.8, "hist": {"1": 1, "2": 3, "10": 1, "3": 5}},
        "math": {"n": 4, "mean": 1.0, "hist": {"1": 4}}})
    _set_summary(run_copy, "evolve", steps_per_solution={"evol": {"n": 6, "mean": 3.0, "hist": {"3": 6}}})
    _set_summary(run_copy, "prm", solution_source="policy", solution_model="out/sft-policy",
                 labeller_models={"judge": "judge-model-x", "montecarlo": "out/sft-policy"})
    _set_summary(run_copy, "irm", single_evolver=True, evolvers=["qwen-evolver"])
    prm = RunStore(run_copy).load("prm", "prm")
    for i, r in enumerate(prm):
        r.update(source="policy", solution_model="out/sft-policy",
                 labeller_model="judge-model-x" if i % 2 else "out/sft-policy")
    write_parquet(run_copy / "prm" / "prm.parquet", prm)
    publish_run(run_copy, local=tmp_path / "ds", **SPLIT)
    text = DatasetCard.load(tmp_path / "ds" / "README.md").text
    assert "## Steps per solution" in text
    assert "**sft, gsm8k**: 10 solutions, mean 2.8 steps, 10.0% with one step." in text
    assert "| steps | 1 | 2 | 3 | 10 |\n| --- | --- | --- | --- | --- |\n| solutions | 1 | 3 | 5 | 1 |" in text
    assert "**sft, math**: 4 solutions, mean 1 steps, 100.0% with one step." in text
    assert "**evolve, evol**: 6 solutions" in text and "| solutions | 6 |" in text
    assert ("**PRM data.** The labelled solutions come from `policy`, written by out/sft-policy. Steps labelled by: "
            "judge judge-model-x, montecarlo out/sft-policy.") in text
    assert "these are the teacher's solutions" not in text
    half = sum(1 for i in range(len(prm)) if i % 2)
    assert f"| policy | out/sft-policy | judge | judge-model-x | {half} |" in text
    assert ("**IRM rankings.** The rankings compare variants of **one evolver model** (qwen-evolver), unlike the "
            "recipe's two") in text and "`allow_single_evolver: true`" in text
    assert "| in data (prm.solution_model) |  | out/sft-policy |" in text


def test_card_of_an_older_run_without_those_figures(run_copy, tmp_path):
    """A run folder made before the summaries held steps per solution, the PRM's solution source and the IRM's
    evolver models still publishes, and the card says what it can."""
    from evolkit.publish import publish_run

    manifest = json.loads((run_copy / "manifest.json").read_text())
    for info in manifest["stages"].values():
        summary = info.get("summary") or {}
        for key in ("steps_per_solution", "solution_source", "solution_model", "policy_model", "labeller_models",
                    "single_evolver", "evolver_models", "variants_per_evolver"):
            summary.pop(key, None)
    manifest["stages"]["irm"]["summary"]["evolvers"] = ["evolve:det-teacher", "rewrite:det-teacher"]
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    for p in run_copy.glob("*/summary.json"):
        p.unlink()
    out = tmp_path / "pub"
    publish_run(run_copy, local=out, **SPLIT)
    text = (out / "README.md").read_text()
    assert "## Steps per solution" not in text
    # Two "evolvers" that are two prompt styles of one model: the card says so.
    assert ("The rankings compare variants of **one evolver model** (det-teacher, as evolve:det-teacher, "
            "rewrite:det-teacher)") in text and "allow_single_evolver: true" not in text


def test_card_names_the_policy_and_the_two_evolvers(published):
    out, _ = published
    text = (out / "README.md").read_text()
    assert "## Steps per solution" in text
    assert "det-policy" in text and "det-evolver-2" in text


def test_no_absolute_local_path_in_card_or_provenance(published, fixture_run):
    from evolkit.publish import public_path, public_paths
    from evolkit.settings import data_dir

    out, _ = published
    base = str(fixture_run.parent)
    for name in ("README.md", "provenance.json"):
        text = (out / name).read_text()
        assert base not in text and "/tmp/" not in text, name
    text = (out / "README.md").read_text()
    assert "  path: open_domain.jsonl" in text and "benchmark_test.jsonl" in text
    assert public_path(str(data_dir() / "gsm8k" / "train.jsonl")) == "{data}/gsm8k/train.jsonl"
    assert public_path(str(fixture_run / "evolve" / "growth.png"), fixture_run) == "evolve/growth.png"
    local = str(fixture_run.parent / "x" / "y.jsonl")
    assert public_paths({"a": [f"see {local}:3 now", "http://h:8000/v1/x", "1/2", "{data}/m/t.jsonl",
                               "POST /v1/chat/completions: HTTP 500"]}) \
        == {"a": ["see y.jsonl:3 now", "http://h:8000/v1/x", "1/2", "{data}/m/t.jsonl",
                  "POST /v1/chat/completions: HTTP 500"]}


def test_no_key_in_any_published_file(run_copy, tmp_path, monkeypatch):
    """A run whose rows, summaries and config hold fake keys (named by the config's api_key_env in two roles, and the
    known variables): no published file holds one, not even inside Parquet pages, and no row is lost."""
    import pyarrow.parquet as pq
    import yaml

    from evolkit.publish import publish_run
    from evolkit.store import RunStore, write_parquet

    keys = {"EVOLKIT_TEST_STUB_KEY": "sk-stub-0123456789abcdefXYZ", "EVOLKIT_TEST_JUDGE_KEY": "judge-key-98765zyxw",
            "HF_TOKEN": "hf_faketoken0123456789", "ARGILLA_API_KEY": "argilla.apikey.00112233"}
    for k, v in keys.items():
        monkeypatch.setenv(k, v)
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["backend"]["api_key_env"] = "EVOLKIT_TEST_STUB_KEY"
    cfg["judge_backend"] = {"kind": "openai", "model": "judge-x", "api_key_env": "EVOLKIT_TEST_JUDGE_KEY"}
    cfg["name"] = "fixture"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg) + f"# {keys['HF_TOKEN']}\n")
    store = RunStore(run_copy)
    leak = " ".join(keys.values())
    for stage, name, fields in (("sft", "sft", ("completion", "output")), ("evolve", "evol", ("question",)),
                                ("evolve", "problems", ("question",)), ("seeds", "problems", ("question",)),
                                ("prm", "prm", ("prompt",))):
        rows = store.load(stage, name)
        for r in rows[:3]:
            for f in fields:
                r[f] = f"{r[f]} (echoed: {leak})"
        write_parquet(run_copy / stage / f"{name}.parquet", rows)
    _set_summary(run_copy, "sft", last_error=f"HTTP 401: invalid key {leak}")
    res = publish_run(run_copy, local=tmp_path / "out", **SPLIT)

    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    decoded = 0
    for f in files:
        data = f.read_bytes()
        texts = [data]
        if f.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(f).to_pylist(), ensure_ascii=False).encode())
            decoded += 1
        for t in texts:
            for v in keys.values():
                assert v.encode() not in t, (f, v)
    assert decoded == sum(len(c) for c in res.configs.values())
    sft = [r for f in (tmp_path / "out" / "data" / "sft").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(sft) == sum(res.configs["sft"].values()) and any("(echoed: ***" in r["completion"] for r in sft)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "HTTP 401: invalid key *** ***" in card
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["config"]["backend"]["api_key_env"] == "EVOLKIT_TEST_STUB_KEY"  # the variable's name is no secret


def test_republished_labels_are_what_load_dataset_reads(run_copy, tmp_path):
    """Re-publishing changed rows of the same size (a reviewer flips one PRM label) into the same folder: load_dataset
    must read the new rows, not its cache of the old ones (the data files' names carry their content hash)."""
    import datasets

    from evolkit.publish import publish_run
    from evolkit.store import RunStore, write_parquet

    out = tmp_path / "ds"
    publish_run(run_copy, local=out, configs=["prm"], **SPLIT)
    def labels() -> dict[str, list[bool]]:
        ds = datasets.load_dataset(str(out), "prm")
        return {r["id"]: r["labels"] for split in ds for r in ds[split]}

    first = labels()
    rows = RunStore(run_copy).load("prm", "prm")
    rows[0]["labels"] = [not x for x in rows[0]["labels"]]
    write_parquet(run_copy / "prm" / "prm.parquet", rows)
    publish_run(run_copy, local=out, configs=["prm"], **SPLIT)
    again = labels()
    assert again[rows[0]["id"]] == rows[0]["labels"] != first[rows[0]["id"]]
    assert {k: v for k, v in again.items() if k != rows[0]["id"]} == {k: v for k, v in first.items()
                                                                       if k != rows[0]["id"]}
