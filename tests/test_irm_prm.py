"""IRM and PRM datasets from a pipeline run on the deterministic test backend: structure, balance, robust judge
parsing, and the TRL formats (RewardTrainer really trains a step on ``irm_pairs``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from evolkit.judging import JudgeParseError, find_json_object
from evolkit.records import IRMPair, IRMRanking, PRMExample
from evolkit.stages.irm import parse_irm_judgement
from evolkit.stages.prm import parse_prm_judgement
from tests.doubles import fake_backend

RUN_CONFIG = {
    "name": "irmprm",
    "seed": 0,
    "backend": fake_backend(),
    "evolver_backend": fake_backend("det-evolver-2"),
    "seeds": [{"source": "gsm8k", "n": 10}, {"source": "math", "n": 10}],
    "stages": {
        "sft": {"k": 4, "fewshot": 0},
        "evolve": {"rounds": [{"pool": "seeds", "children_per_parent": 1.0}], "k": 3,
                   "decontamination": {"enabled": False}, "plots": False},
        "irm": {"n_instructions": 16, "variants_per_evolver": 2},
        "prm": {"sources": ["sft", "evolve"], "labellers": ["judge", "montecarlo"], "rollouts": 4,
                "max_solutions": 30},
    },
}


def build_run(folder: Path, config: dict | None = None) -> Path:
    """Run seeds -> sft -> evolve -> irm -> prm on the deterministic backend into ``folder``; returns it."""
    from evolkit.config import RunConfig
    from evolkit.pipeline import run_all

    run_all(RunConfig.model_validate(config or RUN_CONFIG), folder, show_progress=False)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from evolkit.store import RunStore

    return RunStore(build_run(tmp_path_factory.mktemp("irmprm") / "run"))


# ----------------------------------------------------------------------------------------------------------- IRM
def test_irm_rankings_structure(run):
    rows = run.load("irm", "irm_rankings")
    summary = run.stage_info("irm")["summary"]
    assert rows and len(rows) == summary["rankings"]
    evolvers = set(summary["evolvers"])
    assert evolvers == {"evolve:deterministic", "evolve:det-evolver-2"}  # two evolver models
    assert summary["single_evolver"] is False and summary["variants_per_evolver"] == 2
    for r in rows:
        IRMRanking.model_validate(r)
        vs = r["variants"]
        assert 2 <= len(vs) <= 4  # 2 per evolver, minus those eliminated
        assert sorted(v["rank"] for v in vs) == list(range(1, len(vs) + 1))
        assert {v["id"] for v in vs} <= set("ABCD")
        assert len({v["evolver"] for v in vs}) >= 2 and {v["evolver"] for v in vs} <= evolvers
        for ev in evolvers:  # distinct operations within an evolver's variants
            ops = [v["operation"] for v in vs if v["evolver"] == ev]
            assert len(set(ops)) == len(ops)
        assert all(1 <= v[c] <= 10 for v in vs for c in ("definition", "precision", "integrity"))
        assert r["judge"] == "deterministic" and r["label_source"] == "model"
        assert r["consistent"] is True and r["agreement"] == 1.0  # swap on, inconsistent ones excluded
        assert r["instruction"] not in {v["text"] for v in vs}
    # both sources of instructions are used
    ids = {r["instruction_id"] for r in rows}
    assert any(i.startswith("evol-") for i in ids) and any(not i.startswith("evol-") for i in ids)


def test_irm_position_bias_and_failures_are_accounted(run):
    s = run.stage_info("irm")["summary"]
    judgements = run.load("irm", "judgements")
    assert len(judgements) == s["judgements"] == 2 * (s["instructions"] - sum(s["instructions_skipped"].values()))
    assert {j["order"] for j in judgements} == {"forward", "reverse"}
    for j in judgements:
        if j["order"] == "reverse":
            fwd = next(x for x in judgements if x["instruction_id"] == j["instruction_id"] and x["order"] == "forward")
            assert j["shown"] == fwd["shown"][::-1]
    # the deterministic judge has a little position bias: swapped-order judging catches it
    assert s["excluded"].get("inconsistent_order", 0) >= 1
    assert s["rankings"] + sum(s["excluded"].values()) == s["instructions"] - sum(s["instructions_skipped"].values())
    failed = [j for j in judgements if not j["ok"]]
    assert sum(s["parse_failures"].values()) == len(failed)
    assert all(j["reason"] and j["raw"] is not None for j in failed)


def test_irm_pairs_trl_format(run):
    rankings = {r["id"]: r for r in run.load("irm", "irm_rankings")}
    pairs = run.load("irm", "irm_pairs")
    assert len(pairs) == sum(len(r["variants"]) * (len(r["variants"]) - 1) // 2 for r in rankings.values())
    for p in pairs:
        IRMPair.model_validate(p)
        r = rankings[p["ranking_id"]]
        rank = {v["text"]: v["rank"] for v in r["variants"]}
        assert rank[p["chosen"]] < rank[p["rejected"]]
        assert p["margin"] == 0.0 and p["label_source"] == "model"


def test_reward_trainer_accepts_irm_pairs(run, tmp_path):
    """TRL's own RewardTrainer tokenizes the pairs (implicit prompt: chosen/rejected) and trains one step on them."""
    pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast
    from trl import RewardConfig, RewardTrainer

    pairs = run.load("irm", "irm_pairs")
    words = sorted({w for p in pairs for t in (p["chosen"], p["rejected"]) for w in t.split()})
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=0, eos_token_id=2, bos_token_id=2))
    ds = Dataset.from_list(pairs)
    args = RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=4, report_to=[],
                        logging_steps=1, save_strategy="no", use_cpu=True, dataset_num_proc=None)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    first = trainer.train_dataset[0]
    assert first["chosen_ids"][-1] == tok.eos_token_id and first["rejected_ids"][-1] == tok.eos_token_id
    assert len(trainer.train_dataset) == len(pairs)
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0


def test_parse_irm_judgement_is_robust():
    ids = ["A", "B", "C"]
    good = {"scores": {i: {"definition": 5, "precision": "6/10", "integrity": 7.5} for i in ids}, "ranking": ["B", "A", "C"]}
    text = "Sure! Here is my verdict:\n```json\n" + json.dumps(good) + "\n```\nHope this helps."
    got = parse_irm_judgement(text, ids)
    assert got["ranking"] == ["B", "A", "C"] and got["scores"]["A"]["precision"] == 6.0
    # ids spelled differently, trailing comma, curly quotes
    loose = '{"ranking": ["[b]", "Version A", "c",], “scores”: {}}'
    got = parse_irm_judgement(loose, ids)
    assert got["ranking"] == ["B", "A", "C"] and "incomplete_scores" in got["notes"]
    # ranking derived from complete scores
    sc = {"scores": {"A": {"definition": 1, "precision": 1, "integrity": 1},
                     "B": {"definition": 9, "precision": 9, "integrity": 9},
                     "C": {"definition": 5, "precision": 5, "integrity": 5}}}
    assert parse_irm_judgement(json.dumps(sc), ids)["ranking"] == ["B", "C", "A"]
    for bad, reason in [
        ("The second one is better.", "no_json"),
        ("{not json at all", "invalid_json"),
        ('{"ranking": ["A", "B", "D"]}', "unknown_id"),
        ('{"ranking": ["A", "B"]}', "incomplete_ranking"),
        ('{"ranking": ["A", "A", "B"]}', "duplicate_id"),
        ('{"scores": {"A": {"definition": 11}}, "ranking": ["A", "B", "C"]}', "bad_score"),
        ('{"verdict": "A"}', "missing_ranking"),
        ("", "empty"),
    ]:
        with pytest.raises(JudgeParseError) as e:
            parse_irm_judgement(bad, ids)
        assert e.value.reason == reason, bad
    assert find_json_object('noise {"a": {"b": [1, 2]}} {"c": 3}') == {"a": {"b": [1, 2]}}


def test_parse_prm_judgement_is_robust():
    got = parse_prm_judgement('```\n{"steps": [{"step": 2, "label": "Wrong"}, {"step": 1, "label": "correct", '
                              '"confidence": 0.9}, {"step": 3, "label": "neutral"}]}\n```', 3)
    assert got["labels"] == ["correct", "incorrect", "neutral"] and got["confidence"] == [0.9, None, None]
    assert parse_prm_judgement('{"labels": ["correct", "incorrect"]}', 2)["labels"] == ["correct", "incorrect"]
    for bad, reason, kw in [
        ('{"steps": [{"step": 1, "label": "correct"}]}', "missing_steps", {}),
        ('{"steps": [{"step": 1, "label": "correct"}, {"step": 1, "label": "correct"}]}', "duplicate_step", {}),
        ('{"steps": [{"step": 3, "label": "correct"}]}', "bad_step", {}),
        ('{"steps": [{"step": 1, "label": "maybe"}, {"step": 2, "label": "correct"}]}', "bad_label", {}),
        ('{"steps": ["neutral", "correct"]}', "bad_label", {"allow_neutral": False}),
        ("no idea", "no_json", {}),
    ]:
        with pytest.raises(JudgeParseError) as e:
            parse_prm_judgement(bad, 2, **kw)
        assert e.value.reason == reason, bad


# ----------------------------------------------------------------------------------------------------------- PRM
def test_prm_rows_structure_and_balance(run):
    rows = run.load("prm", "prm")
    s = run.stage_info("prm")["summary"]
    assert s["balanced"] is True and s["final_correct"] == s["final_incorrect"] == 15
    by_lab = {lab: [r for r in rows if r["labeller"] == lab] for lab in ("judge", "montecarlo")}
    assert len(by_lab["judge"]) == 30 and len(by_lab["montecarlo"]) == 30
    assert Counter(r["final_correct"] for r in by_lab["judge"]) == {True: 15, False: 15}
    assert {r["source"] for r in by_lab["judge"]} == {"sft", "evolve"}  # SFT and evolution solutions
    for r in rows:
        PRMExample.model_validate(r)
        assert isinstance(r["prompt"], str) and r["prompt"]
        assert 2 <= len(r["completions"]) == len(r["labels"])
        assert all(isinstance(x, bool) for x in r["labels"])
        assert r["label_source"] == "model"
    flat = [x for r in by_lab["judge"] for x in r["labels"]]
    assert 0.2 < sum(flat) / len(flat) < 0.9  # both labels well represented
    for r in by_lab["montecarlo"]:
        assert len(r["step_scores"]) == len(r["labels"]) and all(0 <= x <= 1 for x in r["step_scores"])
        assert r["labels"][-1] == r["final_correct"]  # the last step is the solution itself
        assert r["labels"] == [x > 0 for x in r["step_scores"]]  # hard estimation
    # judge vs Monte-Carlo agreement is reported
    cmp = s["judge_vs_montecarlo"]
    assert cmp["solutions"] == 30 and 0 <= cmp["accuracy"] <= 1


def test_prm_monte_carlo_rollouts_checked(run):
    rolls = run.load("prm", "rollouts")
    assert rolls and all(r["ok"] and r["samples"] == 4 and 0 <= r["hits"] <= 4 for r in rolls)
    # a sound prefix of a correct solution mostly reaches the gold answer; a prefix stating a wrong value never does
    by_sol = {}
    for r in rolls:
        by_sol.setdefault(r["solution_id"], []).append(r)
    rows = {r["id"].rsplit(":", 1)[0]: r for r in run.load("prm", "prm") if r["labeller"] == "montecarlo"}
    assert any(all(x) for x in (r["labels"] for r in rows.values()))
    assert any(not x[0] or not all(x) for x in (r["labels"] for r in rows.values()))


def test_stepwise_format_loads_with_the_declared_features(run, tmp_path):
    """TRL's stepwise-supervision format is prompt: str, completions: list[str], labels: list[bool] (one per step).

    TRL 1.16 (pinned here) no longer ships stepwise processing (its PRM trainer was removed upstream), so the contract
    is checked with the datasets features TRL's format defined, loading the run's Parquet file as a user would."""
    from datasets import Features, Sequence, Value, load_dataset

    feats = Features({"prompt": Value("string"), "completions": Sequence(Value("string")),
                      "labels": Sequence(Value("bool"))})
    ds = load_dataset("parquet", data_files=str(run.root / "prm" / "prm.parquet"), split="train")
    ds = ds.select_columns(["prompt", "completions", "labels"]).cast(feats)
    assert ds.features == feats
    assert all(len(c) == len(lab) for c, lab in zip(ds["completions"], ds["labels"]))


def test_stage_commands_and_resume(run, tmp_path):
    """`evolkit irm` / `evolkit prm` run the stages through the CLI; a second run over the same folder resumes
    from the shards with the same final rows."""
    from evolkit.cli import main
    from evolkit.store import RunStore

    cfg = tmp_path / "cfg.yaml"
    small = json.loads(json.dumps(RUN_CONFIG))
    small["stages"]["irm"]["n_instructions"] = 4
    small["stages"]["prm"] = {"sources": ["sft", "evolve"], "max_solutions": 6}
    cfg.write_text(yaml.safe_dump(small, sort_keys=False))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "-o", str(out), "--no-progress"]) == 0
    st = RunStore(out)
    before = (st.load("irm", "irm_rankings"), st.load("prm", "prm"))
    assert main(["irm", str(cfg), "-o", str(out), "--force", "--no-progress"]) == 0
    assert main(["prm", str(cfg), "-o", str(out), "--force", "--no-progress"]) == 0
    assert (st.load("irm", "irm_rankings"), st.load("prm", "prm")) == before
    assert all(r["labeller"] == "judge" for r in before[1])


def test_second_evolver_backend(tmp_path):
    """With evolver_backend configured, the second evolver is that model (same prompt style), not a second style."""
    from evolkit.store import RunStore

    cfg = {"name": "evo2", "backend": fake_backend(),
           "evolver_backend": fake_backend("second-evolver"),
           "seeds": [{"source": "gsm8k", "n": 5}],
           "stages": {"irm": {"n_instructions": 5, "variants_per_evolver": 1, "sources": ["seeds"], "swap": False}}}
    st = RunStore(build_run(tmp_path / "run", cfg))
    s = st.stage_info("irm")["summary"]
    assert s["evolvers"] == ["evolve:deterministic", "evolve:second-evolver"]
    models = {v["evolver"]: v["model"] for v in st.load("irm", "variants")}
    assert models == {"evolve:deterministic": "deterministic", "evolve:second-evolver": "second-evolver"}
    rows = st.load("irm", "irm_rankings")
    assert rows and all(r["agreement"] is None and r["consistent"] for r in rows)  # judged once (swap off)
    assert s["rankings"] + sum(s["excluded"].values()) == 5


def test_one_evolver_model_is_refused_unless_allowed(tmp_path):
    """The recipe ranks variants of two evolver models: one model (even with two prompt styles) needs
    allow_single_evolver, and the summary says so."""
    from evolkit.errors import ConfigError
    from evolkit.store import RunStore

    cfg = {"name": "one", "backend": fake_backend(), "seeds": [{"source": "gsm8k", "n": 4}],
           "stages": {"irm": {"n_instructions": 4, "sources": ["seeds"],
                              "evolvers": [{"style": "evolve"}, {"style": "rewrite"}]}}}
    with pytest.raises(ConfigError, match="two evolver models"):
        from evolkit.config import validate

        validate(cfg, "the config")
    cfg["stages"]["irm"]["allow_single_evolver"] = True
    st = RunStore(build_run(tmp_path / "allowed", cfg))
    s = st.stage_info("irm")["summary"]
    assert s["single_evolver"] is True and s["evolver_models"] == 1
    variants = st.load("irm", "variants")
    assert len(variants) == 4 * 2 * 2  # each of the two styles writes variants_per_evolver (2) per instruction


def test_prm_labels_the_policys_own_solutions(tmp_path):
    """sources: [policy]: the policy model solves seed and evolved problems; the judge labels those steps; each row
    names the model that wrote the solution and the one that labelled it."""
    from evolkit.store import RunStore

    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["judge_backend"] = fake_backend("det-judge")
    cfg["policy_backend"] = fake_backend("det-policy")
    cfg["stages"]["prm"] = {"sources": ["policy"], "policy_k": 2, "policy_max_problems": 12, "max_solutions": 10,
                            "labellers": ["judge", "montecarlo"], "rollouts": 2, "balance": False}
    st = RunStore(build_run(tmp_path / "run", cfg))
    sols = st.load("prm", "policy_solutions")
    assert sols and {s["model"] for s in sols} == {"det-policy"}
    assert len({s["problem_id"] for s in sols}) == 12 and len(sols) == 24
    assert any(s["problem_id"].startswith("evol-") for s in sols)  # evolved problems too
    rows = st.load("prm", "prm")
    assert rows and {r["source"] for r in rows} == {"policy"}
    assert {r["solution_model"] for r in rows} == {"det-policy"}
    assert {r["labeller_model"] for r in rows if r["labeller"] == "judge"} == {"det-judge"}
    assert {r["labeller_model"] for r in rows if r["labeller"] == "montecarlo"} == {"det-policy"}  # its rollouts
    s = st.stage_info("prm")["summary"]
    assert s["solution_source"] == ["policy"] and s["policy_model"] == "det-policy"
    assert s["labeller_models"] == {"judge": "det-judge", "montecarlo": "det-policy"}


def test_prm_policy_source_needs_a_policy(tmp_path):
    from evolkit.errors import ConfigError

    cfg = json.loads(json.dumps(RUN_CONFIG))
    cfg["stages"] = {"prm": {"sources": ["policy"]}}
    with pytest.raises(ConfigError, match="policy_backend"):
        from evolkit.config import validate

        validate(cfg, "the config")  # refused when the config loads, before any work
