"""The whole RLEIF loop in one command, on CPU: the packaged tiny recipe with the data runs' teacher and judge served by
llama.cpp's server (the embedded SmolLM2, for speed) and the policy, the reward models and PPO trained from the embedded
model by the trainers. Every hand-off goes through a published dataset or a saved model; the PRM labels the SFT
policy's own solutions; a finished loop resumes to nothing; a changed step is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evolkit.cli import main
from evolkit.rleif import RECIPES, Loop, Recipe

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, llama_server) -> Path:
    data = yaml.safe_load((RECIPES / "rleif_tiny.yaml").read_text())
    served = {"kind": "openai", "model": llama_server.model, "base_url": llama_server.base_url, "max_concurrency": 4}
    for run in ("data", "reward_data"):
        data[run]["backend"] = served
        data[run]["sampling"]["max_tokens"] = 64
    data["reward_data"]["stages"]["prm"]["policy_max_problems"] = 4
    data["eval"]["limit"] = 3
    data["eval"]["max_tokens"] = 32
    path = tmp_path / "rleif.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_tiny_loop_runs_end_to_end_then_resumes_to_nothing(tmp_path: Path, llama_server,
                                                               capsys: pytest.CaptureFixture) -> None:
    recipe = _recipe(tmp_path, llama_server)
    out = tmp_path / "loop"
    assert main(["rleif", str(recipe), "-o", str(out), "--no-progress"]) == 0
    state = json.loads((out / "rleif.json").read_text())
    steps = list(state["steps"])
    assert steps == ["sft-data", "publish-sft-data", "train-sft", "reward-data", "publish-reward-data", "train-irm",
                     "train-prm", "train-ppo", "eval"]
    assert all(s["status"] == "done" for s in state["steps"].values())

    # Hand-offs: published datasets and saved models, each naming what it was made from.
    import datasets

    sft = datasets.load_dataset(str(out / "published" / "sft-data"), "sft", split="train")
    assert len(sft) > 0
    record = json.loads((out / "models" / "sft" / "evolkit_trainer.json").read_text())
    assert "sft-data" in json.dumps(record)
    prm = datasets.load_dataset(str(out / "published" / "reward-data"), "prm")
    rows = [r for split in prm.values() for r in split]
    assert rows and {r["source"] for r in rows} == {"policy"}
    assert {r["solution_model"] for r in rows} == {str(out / "models" / "sft")}  # the policy's own solutions
    rl = datasets.load_dataset(str(out / "published" / "reward-data"), "rl_prompts")
    assert sum(len(s) for s in rl.values()) >= 8  # seeds + evolved problems
    ppo = json.loads((out / "models" / "ppo" / "evolkit_trainer.json").read_text())
    assert str(out / "models" / "irm") in json.dumps(ppo) and str(out / "models" / "prm") in json.dumps(ppo)
    report = json.loads((out / "eval" / "summary.json").read_text())  # the PPO policy, WizardMath's protocol
    assert report["checker"] == "wizardmath" and report["problems"] == 3
    assert report["protocol"]["stop"] == ["Instruction:", "Instruction", "Response:", "Response"]
    assert str(out / "models" / "ppo") in json.dumps(report["settings"])

    # Resumed, a finished loop does nothing; a changed trainer step is refused.
    before = (out / "rleif.json").read_text()
    assert main(["rleif", str(recipe), "-o", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "rleif.json").read_text() == before
    changed = yaml.safe_load(recipe.read_text())
    changed["train"]["sft"]["args"] = {"max_steps": 1}
    recipe.write_text(yaml.safe_dump(changed))
    capsys.readouterr()
    assert main(["rleif", str(recipe), "-o", str(out), "--resume", "--no-progress"]) == 2
    assert "train-sft" in capsys.readouterr().err


def test_the_packaged_recipes_validate() -> None:
    from evolkit.rleif import load_recipe

    for name in ("rleif_tiny", "rleif_7b"):
        r = load_recipe(name)
        assert isinstance(r, Recipe) and Loop(r).steps()[0][0] == "sft-data"
