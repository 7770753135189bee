"""schemas/*.schema.json are generated from the pydantic records; this fails as soon as the two drift apart.

Fix a failure by running ``python -m evolkit.records`` and committing the rewritten files (after checking that the record
change is intended: the schemas describe the published datasets).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from evolkit.records import PUBLISHED, SCHEMA_DIR, SFTExample, json_schema, write_schemas

HINT = "schemas/ is out of date with evolkit/records.py: run `python -m evolkit.records` and commit the result"


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_schema_file_matches_record_model(config: str) -> None:
    path = SCHEMA_DIR / f"{config}.schema.json"
    assert path.exists(), f"{path} is missing. {HINT}"
    assert json.loads(path.read_text()) == json_schema(config), f"{path} differs from the {config} record. {HINT}"


def test_no_stray_schema_files() -> None:
    expected = {f"{c}.schema.json" for c in PUBLISHED}
    present = {p.name for p in Path(SCHEMA_DIR).glob("*.schema.json")}
    assert present == expected, f"stray or missing schema files: {sorted(present ^ expected)}. {HINT}"


def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    for config in PUBLISHED:
        name = f"{config}.schema.json"
        assert (tmp_path / name).read_text() == (SCHEMA_DIR / name).read_text(), f"{name}: {HINT}"


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_schemas_are_valid_json_schema(config: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{config}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"evolkit/{config}.schema.json"


def test_a_record_validates_and_a_wrong_one_does_not() -> None:
    schema = json.loads((SCHEMA_DIR / "sft.schema.json").read_text())
    row = SFTExample(id="p:0", problem_id="p", source="gsm8k", instruction="q", output="a", prompt="P", completion=" a").row()
    jsonschema.validate(row, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**row, "unexpected": 1}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in row.items() if k != "output"}, schema)


def test_the_check_catches_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field added to a record model changes its schema, so the comparison above would fail."""
    from pydantic import create_model

    before = json_schema("sft")
    drifted = create_model("SFTExample", __base__=SFTExample, new_field=(int, 0))
    monkeypatch.setitem(PUBLISHED, "sft", drifted)
    after = json_schema("sft")
    assert after != before and "new_field" in after["properties"]
    assert after != json.loads((SCHEMA_DIR / "sft.schema.json").read_text())
