"""Trainer internals without models: reward arithmetic, PPO math, data expansion, argument parsing, model cards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import torch

from trainers import card, common, data, model_names, ppo_core, rewards, rl

CONFIGS = Path(__file__).resolve().parent.parent / "trainers" / "configs"

# ------------------------------------------------------------------------------------------------ reward r = rI x rA


def test_reward_arithmetic_on_fixed_scores():
    # r_I = sigmoid(IRM score)
    assert rewards.instruction_reward(0.0) == 0.5
    assert rewards.instruction_reward(0.5) == pytest.approx(1 / (1 + math.exp(-0.5)))  # 0.622459
    assert rewards.instruction_reward(-2.0) == pytest.approx(0.11920292202)
    assert rewards.instruction_reward(-800.0) == pytest.approx(0.0)  # no overflow
    # r_A = min or product of the PRM's step probabilities
    steps = [0.9, 0.8, 0.5]
    assert rewards.answer_reward(steps, "min") == 0.5
    assert rewards.answer_reward(steps, "prod") == pytest.approx(0.36)
    assert rewards.answer_reward([], "min") == 0.0
    assert rewards.answer_reward([], "prod", empty=0.25) == 0.25
    with pytest.raises(ValueError):
        rewards.answer_reward(steps, "mean")
    # r = r_I * r_A
    assert rewards.rleif_reward(rewards.instruction_reward(0.5), rewards.answer_reward(steps, "min")) == pytest.approx(
        0.6224593312 * 0.5)
    assert rewards.rleif_reward(rewards.instruction_reward(0.5), rewards.answer_reward(steps, "prod")) == (
        pytest.approx(0.6224593312 * 0.36))


class StubIRM:
    def __init__(self, table):
        self.table, self.calls = table, []

    def scores(self, texts):
        self.calls.append(list(texts))
        return [self.table[t] for t in texts]


class StubPRM:
    def __init__(self, table):
        self.table, self.problems = table, []

    def step_probabilities(self, problems, solutions):
        self.problems += list(problems)
        return [self.table[s] for s in solutions]


def test_rleif_reward_callable_multiplies_per_completion():
    irm = StubIRM({"q1": 0.0, "q2": 2.0})
    prm = StubPRM({"A": [0.9, 0.6], "B": [0.5], "C": []})
    fn = rewards.RLEIFReward(irm, prm, aggregation="min")
    assert fn.__name__ == "rleif_reward"
    logged = {}
    out = fn(prompts=["p1", "p1", "p2", "p2"], completions=["A", "B", "A", "C"], instruction=["q1", "q1", "q2", "q2"],
             gold_answer=["1", "1", "2", "2"], log_metric=lambda k, v: logged.__setitem__(k, v))
    s2 = 1 / (1 + math.exp(-2.0))  # 0.880797
    assert out == pytest.approx([0.5 * 0.6, 0.5 * 0.5, s2 * 0.6, s2 * 0.0])
    assert prm.problems == ["q1", "q1", "q2", "q2"]  # the PRM sees the instruction as the problem
    assert logged["rleif/r_I"] == pytest.approx((0.5 + 0.5 + s2 + s2) / 4)
    assert logged["rleif/r_A"] == pytest.approx((0.6 + 0.5 + 0.6 + 0.0) / 4)
    # r_I is cached per instruction: the IRM is asked once per distinct instruction
    fn(prompts=["p1"], completions=["B"], instruction=["q1"])
    assert sorted(t for call in irm.calls for t in call) == ["q1", "q2"]
    # product aggregation
    fn2 = rewards.RLEIFReward(StubIRM({"q2": 2.0}), StubPRM({"A": [0.9, 0.6]}), aggregation="prod")
    assert fn2(["p"], ["A"], instruction=["q2"]) == pytest.approx([s2 * 0.54])


def test_rleif_reward_reads_instruction_from_alpaca_prompt_and_handles_missing_models():
    from evolkit import prompts

    prompt = prompts.wizardmath_template("default").replace("{instruction}", "What is 2 + 3?")
    assert data.instruction_from_prompt(prompt) == "What is 2 + 3?"
    irm = StubIRM({"What is 2 + 3?": 1.0})
    fn = rewards.RLEIFReward(irm, None)
    assert fn([prompt], [[{"role": "assistant", "content": "5"}]]) == pytest.approx([1 / (1 + math.exp(-1.0))])
    prm = StubPRM({"5": [0.7]})
    fn = rewards.RLEIFReward(None, prm, prm_input="prompt")
    assert fn([prompt], ["5"]) == pytest.approx([0.7])
    assert prm.problems == [prompt]
    with pytest.raises(ValueError):
        rewards.RLEIFReward(aggregation="max")


# ------------------------------------------------------------------------------------------------------- PPO math


def test_gae_matches_hand_computation():
    rewards_ = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.3, 9.0]])  # row 2: last token is padding (value ignored)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = ppo_core.gae(rewards_, values, mask, gamma=1.0, lam=0.95)
    # row 1: delta = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.95*0.3 = 0.385, A0 = 0.1 + 0.95*0.385 = 0.46575
    assert adv[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    assert ret[0].tolist() == pytest.approx([0.96575, 0.985, 1.0])
    # row 2: episode ends at t=1 (V_2 := 0): delta1 = 0 - 0.3 = -0.3, delta0 = 0.5 + 0.3 - 0.2 = 0.6
    assert adv[1].tolist() == pytest.approx([0.6 + 0.95 * -0.3, -0.3, 0.0])
    assert ret[1].tolist() == pytest.approx([0.6 + 0.95 * -0.3 + 0.2, 0.0, 0.0])
    # gamma < 1
    adv, _ = ppo_core.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1, 1]]), 0.9, 0.5)
    assert adv[0].tolist() == pytest.approx([0.45, 1.0])  # A0 = 0 + 0.9*0 - 0 + 0.9*0.5*1


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.0, 1.5, 0.5, 0.7]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last token is padding
    loss, st = ppo_core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): [max(-1,-1), max(-1.5,-1.2), max(0.5,0.8)] = [-1, -1.2, 0.8]
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8) / 3)
    assert st["clipfrac"].item() == pytest.approx(2 / 3)
    assert st["ratio"].item() == pytest.approx((1.0 + 1.5 + 0.5) / 3)
    logr = torch.log(torch.tensor([1.0, 1.5, 0.5]))
    assert st["approxkl"].item() == pytest.approx(0.5 * (logr**2).mean().item())
    # unclipped region: gradient flows through the ratio
    new2 = torch.zeros(1, 2, requires_grad=True)
    loss2, st2 = ppo_core.policy_loss(new2, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2)
    loss2.backward()
    assert new2.grad[0].tolist() == pytest.approx([-1.0, 0.5])  # d/dlogp of mean(-A r) at r = 1
    assert st2["clipfrac"].item() == 0.0


def test_clipped_value_loss_matches_hand_computation():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, -0.1, 5.0]])
    ret = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, st = ppo_core.value_loss(new, old, ret, mask, cliprange_value=0.2)
    # clipped V = [0.2, -0.1]; (V-R)^2 = [0, 0.01]; (Vc-R)^2 = [0.64, 0.01]; 0.5 * mean(max) = 0.5 * 0.325
    assert loss.item() == pytest.approx(0.1625)
    assert st["clipfrac"].item() == pytest.approx(0.5)


def test_kl_estimators_and_token_rewards_match_hand_computation():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    assert ppo_core.kl_penalty(logp, ref, "k1").tolist()[0] == pytest.approx([math.log(2), 0.0])
    # k3 = exp(r) - r - 1 with r = log q - log p = log 0.5
    assert ppo_core.kl_penalty(logp, ref, "k3").tolist()[0] == pytest.approx([0.5 + math.log(2) - 1, 0.0])
    with pytest.raises(ValueError):
        ppo_core.kl_penalty(logp, ref, "k2")
    kl = torch.tensor([[0.0, -0.5, 0.5], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    r = ppo_core.token_rewards(torch.tensor([2.0, -1.0]), kl * mask, mask.float(), kl_coef=0.1)
    assert r[0].tolist() == pytest.approx([0.0, 0.05 + 2.0, 0.0])  # score on the last real token
    assert r[1].tolist() == pytest.approx([-0.1, -0.1, -0.1 - 1.0])


def test_response_mask_logprobs_entropy_and_whitening_match_hand_computation():
    resp = torch.tensor([[5, 7, 2, 9, 9], [5, 6, 6, 6, 6], [2, 3, 3, 3, 3]])
    m = ppo_core.response_mask(resp, [2])
    assert m.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]  # up to and including EOS
    assert ppo_core.first_true_indices(resp == 2).tolist() == [2, 5, 0]
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]]])
    lp = ppo_core.logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    assert lp.tolist()[0] == pytest.approx([math.log(0.25), math.log(0.5)])
    ent = ppo_core.entropy_from_logits(logits)
    p = [0.5, 1 / 6, 1 / 6, 1 / 6]
    assert ent.tolist()[0] == pytest.approx([math.log(4), -sum(x * math.log(x) for x in p)], rel=1e-5)
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mk = torch.tensor([[1, 1, 1, 0]])
    w = ppo_core.masked_whiten(x, mk)
    assert ppo_core.masked_mean(w, mk).item() == pytest.approx(0.0, abs=1e-6)
    assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)  # unbiased std of 1,2,3 is 1


# ------------------------------------------------------------------------------------------------------------ data


def _ranking():
    return {
        "id": "r1", "instruction_id": "i1", "instruction": "q", "label_source": "human",
        "variants": [
            {"id": "b", "text": "B", "evolver": "x", "rank": 2, "definition": 6, "precision": 6, "integrity": 6},
            {"id": "a", "text": "A", "evolver": "x", "rank": 1, "definition": 9, "precision": 8, "integrity": 7},
            {"id": "c", "text": "C", "evolver": "y", "rank": 3, "definition": None, "precision": None,
             "integrity": None},
            {"id": "d", "text": "D", "evolver": "y", "rank": 3},
        ],
    }


def test_ranking_pairs_are_evolkits_irm_pairs_with_rank_or_score_margins():
    from evolkit.stages.irm import pairs_from_ranking

    pairs = data.ranking_pairs(_ranking(), margin="scores")
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D")]
    # evolkit's judge-score margin: total score difference over the score span of the 3 criteria (1..10), where both
    # variants have all scores
    assert [p["margin"] for p in pairs] == pytest.approx([(24 - 18) / 27, 0.0, 0.0, 0.0, 0.0], abs=1e-4)
    published = [p.row() for p in pairs_from_ranking(_ranking(), "scores")]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        (p["chosen"], p["rejected"], p["margin"]) for p in published]
    ranks = data.ranking_pairs(_ranking(), margin="rank", margin_scale=0.5)
    assert [p["margin"] for p in ranks] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5])
    assert all(p["margin"] == 0 for p in data.ranking_pairs(_ranking(), margin="none"))
    # a variant repeating a better one's text gives no pair with it (same input on both sides: no gradient)
    row = _ranking()
    row["variants"].append({"id": "e", "text": "A", "evolver": "y", "rank": 4})
    assert ("A", "A") not in {(p["chosen"], p["rejected"]) for p in data.ranking_pairs(row, margin="rank")}
    assert len(data.ranking_pairs(row, margin="rank")) == 5 + 3  # B, C, D over E
    with pytest.raises(ValueError, match="margin"):
        data.ranking_pairs(_ranking(), margin="scale")


def test_reward_dataset_keeps_chosen_rejected_and_drops_all_zero_margins():
    from datasets import Dataset

    ds = data.reward_dataset(Dataset.from_list([_ranking()]), margin="rank")  # rank gaps 1, 2, 2, 1, 1
    assert ds.column_names == ["chosen", "rejected", "margin"] and len(ds) == 5
    no_margin = data.reward_dataset(Dataset.from_list([_ranking()]), margin="none")
    assert no_margin.column_names == ["chosen", "rejected"]  # all zero: same loss, dropped
    pairs = Dataset.from_list([{"id": "1", "ranking_id": "r", "chosen": "x", "rejected": "y", "margin": 1.5,
                                "label_source": "model"}])
    assert data.reward_dataset(pairs, margin_scale=2.0)["margin"] == [3.0]
    assert data.reward_dataset(pairs, use_margin=False).column_names == ["chosen", "rejected"]


# ------------------------------------------------------------------------------------------------ arguments / cards


def test_trl_parser_yaml_cli_precedence_cpu_defaults_and_misspelt_keys(tmp_path):
    from evolkit.errors import ConfigError
    from trainers import sft

    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.5\nmax_length: 64\ndataset_name: from-yaml\nenv:\n  EVOLKIT_TEST_ENV: 'on'\n")
    parser = sft.make_parser(device="cpu")
    s, t, m = parser.parse(["--config", str(cfg), "--max_length", "32", "--output_dir", str(tmp_path)])
    assert (t.learning_rate, t.max_length, s.dataset_name, s.dataset_config) == (0.5, 32, "from-yaml", "sft")
    assert t.completion_only_loss is True  # the script's default
    # CPU: TRL's GPU defaults switched off (gradient_checkpointing is transformers' deprecated alias, mirrored)
    assert t.bf16 is False and t.activation_checkpointing is False and t.gradient_checkpointing is False
    import os

    assert os.environ.pop("EVOLKIT_TEST_ENV") == "on"  # TrlParser applies the YAML's env: mapping
    # a GPU config smoke-tested on CPU: bf16 from the YAML is turned off with a warning
    cfg.write_text("bf16: true\nactivation_checkpointing: true\n")
    with pytest.warns(UserWarning, match="needs a GPU"):
        _, t, _ = sft.make_parser(device="cpu").parse(["--config", str(cfg), "--output_dir", str(tmp_path)])
    assert t.bf16 is False and t.activation_checkpointing is True  # explicit checkpointing is kept
    cfg.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        sft.make_parser(device="cpu").parse(["--config", str(cfg), "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="learning_rat"):  # no prefix matching of option names
        sft.make_parser(device="cpu").parse(["--learning_rat", "1", "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="no_such_flag"):
        sft.make_parser(device="cpu").parse(["--no_such_flag", "1", "--output_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        sft.make_parser(device="cpu").parse(["--config", str(tmp_path / "missing.yaml")])
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        sft.make_parser(device="cpu").parse(["--config", str(cfg), "--output_dir", str(tmp_path)])


def test_every_packaged_config_parses_with_its_script(tmp_path, recwarn, monkeypatch):
    from trainers import grpo, ppo, prm, reward, rloo, sft

    scripts = {"sft": sft, "reward": reward, "prm": prm, "ppo": ppo, "grpo": grpo, "rloo": rloo}
    config_class = {"sft": "SFTConfig", "reward": "RewardConfig", "prm": "PRMConfig", "ppo": "PPOConfig",
                    "grpo": "GRPOConfig", "rloo": "RLOOConfig"}
    seen = set()
    monkeypatch.chdir(tmp_path)
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name.startswith("deepspeed") or path.name.startswith("accelerate"):
            continue
        kind = path.name.split("_")[0]
        assert kind in scripts, f"{path.name}: name it <sft|reward|prm|ppo|grpo|rloo>_*.yaml"
        # by packaged file name (found in trainers/configs/) as well as by path
        for given in (str(path), path.name):
            out = scripts[kind].parse(["--config", given, "--output_dir", str(tmp_path / path.stem)])
            assert type(out[1]).__name__ == config_class[kind], path.name
        seen.add(kind)
    assert seen == set(scripts)


def test_deepspeed_accelerate_configs_name_their_zero_stage():
    import yaml

    cfg = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED"
    assert cfg["deepspeed_config"]["zero_stage"] == 3
    assert yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())["deepspeed_config"]["zero_stage"] == 2


def test_model_card_metadata_only_names_hub_ids(tmp_path):
    import yaml

    assert card.hub_id_or_none("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"
    assert card.hub_id_or_none(str(tmp_path)) is None
    assert card.hub_id_or_none("./local") is None
    assert card.hub_id_or_none("smollm2-135m-instruct") is None  # evolkit's embedded model, not a Hub repo
    path = card.write_model_card(tmp_path / "m", "prm", str(tmp_path), "user/evolkit-math", "prm",
                                   metrics={"train_loss": 0.5}, n_train_rows=3)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert "base_model" not in meta and meta["datasets"] == ["user/evolkit-math"]
    assert "process-reward-model" in meta["tags"] and meta["pipeline_tag"] == "token-classification"
    assert "| `train_loss` | 0.5 |" in text and "2308.09583" in text


def test_trainer_record_keeps_arguments_but_no_token(tmp_path):
    import json

    from trainers import sft

    _, t, m = sft.make_parser(device="cpu").parse(["--output_dir", str(tmp_path), "--hub_token", "hf_SeCrEt123",
                                                   "--learning_rate", "0.25"])
    path = card.write_record(tmp_path, {"stage": "sft", "args": {"training": card.args_dict(t),
                                                                 "model": card.args_dict(m)}})
    text = path.read_text()
    assert "hf_SeCrEt123" not in text and "hub_token" not in text
    rec = card.read_record(tmp_path)
    assert rec["stage"] == "sft" and rec["format"] == card.RECORD_FORMAT
    assert rec["args"]["training"]["learning_rate"] == 0.25 and "transformers" in rec["versions"]
    assert json.loads(text) == rec
    assert card.read_record(tmp_path / "nothing-here") is None


def test_rl_refuses_a_reward_model_folder_of_the_wrong_kind(tmp_path):
    import json

    from evolkit.errors import ConfigError

    prm_dir, irm_dir, lm_dir, lora_dir = (tmp_path / n for n in ("prm", "irm", "lm", "lora"))
    card.write_record(prm_dir, {"stage": "prm", "script": "trainers.prm"})
    card.write_record(irm_dir, {"stage": "irm", "script": "trainers.reward"})
    with pytest.raises(ConfigError, match="trained by trainers.prm"):
        rl.check_reward_model(str(prm_dir), "irm")
    assert rl.check_reward_model(str(irm_dir), "irm")["stage"] == "irm"
    assert rl.check_reward_model(str(prm_dir), "prm")["stage"] == "prm"
    # no record: the architecture decides; a causal LM would get an untrained head
    lm_dir.mkdir()
    (lm_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="not a trained PRM"):
        rl.check_reward_model(str(lm_dir), "prm")
    (lm_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForTokenClassification"]}))
    assert rl.check_reward_model(str(lm_dir), "prm") is None
    lora_dir.mkdir()
    (lora_dir / "adapter_config.json").write_text(json.dumps({"task_type": "TOKEN_CLS"}))
    with pytest.raises(ConfigError, match="SEQ_CLS"):
        rl.check_reward_model(str(lora_dir), "irm")
    assert rl.check_reward_model("some-user/some-irm", "irm") is None  # Hub ids are not checked


def test_model_names_resolve_like_the_transformers_backend(tmp_path):
    from evolkit.backends.transformers import DEFAULT_MODEL

    assert model_names.resolve_model(str(tmp_path)) == str(tmp_path)  # a local folder as is
    assert model_names.resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # a Hub id as is
    assert model_names.resolve_model(None) is None
    assert model_names.is_embedded_model(DEFAULT_MODEL)
    assert not model_names.is_embedded_model("Qwen/Qwen2.5-0.5B") and not model_names.is_embedded_model(None)


def test_dataset_record_counts_the_rows_the_trainer_dropped(caplog):
    from datasets import Dataset

    from trainers.sft import SFTScriptArguments

    given = Dataset.from_list([{"prompt": "p", "completion": str(i)} for i in range(5)])
    kept = given.select(range(3))
    args = SFTScriptArguments(dataset_name="published/x")
    with caplog.at_level("WARNING", logger="evolkit.trainers"):
        rec = common.dataset_record(args, given, kept, extra_field=1)
    assert (rec["rows"], rec["trained_rows"], rec["config"], rec["extra_field"]) == (5, 3, "sft", 1)
    assert "dropped 2 of 5 rows" in caplog.text
    assert "trained_rows" not in common.dataset_record(args, given)
