"""The main job: the embedded default recipe (seeds -> sft -> evolve -> irm -> prm on SmolLM2-135M on CPU) and its
publication give every dataset, each with rows (the README's first command; its speed is measured by
benchmarks/bench_default.py, not asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolkit.cli import main

pytestmark = pytest.mark.slow


def test_the_default_recipe_publishes_all_six_configs(tmp_path: Path) -> None:
    import datasets

    run, out = tmp_path / "run", tmp_path / "published"
    assert main(["run", "-o", str(run), "--no-progress"]) == 0
    assert main(["publish", str(run), "--local", str(out)]) == 0
    for config in ("sft", "evol", "irm_rankings", "irm_pairs", "prm", "rl_prompts"):
        ds = datasets.load_dataset(str(out), config)
        assert sum(len(split) for split in ds.values()) > 0, config
    card = (out / "README.md").read_text()
    assert "one evolver model" in card  # the demo's single model is stated, as its recipe says
