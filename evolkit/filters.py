"""Elimination rules, deduplication and decontamination of problem texts: small pieces, one job each.

Used by the evolve stage on every round and reusable by any command that checks a set of problems (``evolkit
contamination`` ...). Nothing here calls a model or touches the run store.

* **Rules** (pure functions): :func:`find_artifact` (leftover prompt text such as ``#Rewritten Prompt#``),
  :func:`find_refusal`, a solution written instead of the problem (:data:`DEFAULT_SOLUTION_MARKERS`), :func:`length_issue`, :func:`shingle_jaccard` / :func:`no_gain` (an evolution that is a near copy
  of its parent), bundled by :class:`Eliminator` which returns the first failing rule as ``(reason, detail)``.
* **Text keys**: :func:`tokenize` (lower-case ``\\w+`` words), :func:`normalize_text` (the exact-duplicate key).
* **Batch hashing** (:class:`TextHasher`): every token gets a stable 64-bit hash (blake2b, cached); word n-grams are
  hashed with a polynomial rolling hash over whole batches in numpy, so no per-n-gram Python work is done.
* **MinHash** (:class:`MinHasher`): signatures of word-shingle sets computed for whole batches in numpy, bit-for-bit the
  values of ``datasketch.MinHash`` (scheme ``affine32``) fed with the same 32-bit shingle hashes; banded LSH
  (:class:`MinHashIndex`) with datasketch's optimal (bands, rows) for the threshold; every candidate is verified by its
  estimated Jaccard similarity before it counts.
* **Dedup** (:class:`Deduper`): exact (normalised text) and near-duplicate (MinHash LSH) over a growing pool; the first
  item seen is kept and each removal names the item it duplicates.
* **Decontamination** (:class:`Decontaminator`): against benchmark test files (GSM8k / MATH test by default) by exact
  normalised match, shared word n-grams (13 by default; a test problem shorter than that must appear whole) and MinHash
  near-duplicates. Each match names the test file, the test problem and the evidence (the shared n-gram or the
  similarity).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------------------------

#: Text left over from an evolution prompt (matched case-insensitively anywhere in the evolved problem).
DEFAULT_ARTIFACTS: tuple[str, ...] = (
    r"#\s*(?:rewritten|given|created|new|original)\s+(?:prompt|problem|question|instruction)\s*#",
    r"\b(?:given|rewritten|created)\s+(?:prompt|instruction)\b",
    r"\brewritten\s+(?:problem|question|version)\b",
    r"\b(?:original|given)\s+(?:math\s+)?problem\b",
    r"\bnew\s+(?:prompt|instruction)\b",
    r"^\s*(?:here\s+is|here's)\b.{0,60}\b(?:problem|question|version)\s*:",
    r"<\|(?:im_start|im_end|endoftext|assistant|user|system)\|>",
    r"###\s*(?:instruction|response)\s*:",
)

#: Refusals and meta-replies instead of a problem.
DEFAULT_REFUSALS: tuple[str, ...] = (
    r"\bI(?:'m| am)\s+(?:sorry|afraid|unable|not able)\b",
    r"\bI\s+(?:cannot|can't|can\s*not|won't)\s+(?:help|assist|do|provide|create|rewrite|comply|fulfil)",
    r"\bas\s+an\s+(?:ai|language\s+model)\b",
    r"\bI\s+apologi[sz]e\b",
    r"\b(?:cannot|can't)\s+(?:be\s+)?(?:rewritten|made\s+(?:harder|easier|simpler))\b",
)

#: A solution (or an answer) written instead of, or after, the problem.
DEFAULT_SOLUTION_MARKERS: tuple[str, ...] = (
    r"\bthe\s+(?:final\s+)?answer\s+is\b",
    r"^\s*#{4}\s*\S",
    r"\\boxed\s*\{",
    r"^\s*(?:\*\*)?(?:step\s*1\b|solution\s*:|answer\s*:)",
    r"^\s*(?:to\s+solve\s+(?:this|the)\b|let'?s\s+(?:solve|break|start|calculate)\b)",
)

_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.S)


def clean_evolved(text: str | None) -> str:
    """Whitespace, one surrounding code fence and one pair of surrounding quotes removed (nothing else is changed)."""
    t = (text or "").strip()
    m = _FENCE_RE.match(t)
    if m:
        t = m.group(1).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    return t


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.I | re.M) for p in patterns]


def find_pattern(text: str, patterns: Sequence[re.Pattern[str]]) -> str | None:
    """The first text matched by any pattern, or None."""
    for p in patterns:
        m = p.search(text)
        if m:
            return m.group(0)
    return None


def find_artifact(text: str, patterns: Iterable[str] = DEFAULT_ARTIFACTS) -> str | None:
    return find_pattern(text, _compile(patterns))


def find_refusal(text: str, patterns: Iterable[str] = DEFAULT_REFUSALS) -> str | None:
    return find_pattern(text, _compile(patterns))


def length_issue(text: str, min_chars: int, max_chars: int) -> str | None:
    n = len(text)
    if n < min_chars:
        return f"{n} chars < {min_chars}"
    if n > max_chars:
        return f"{n} chars > {max_chars}"
    return None


_WORD_RE = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, underscore; LaTeX commands keep their names, punctuation is dropped)."""
    return _WORD_RE.findall(text.lower())


def normalize_text(text: str) -> str:
    """The exact-duplicate key: the tokens joined by single spaces (case, spacing and punctuation do not count)."""
    return " ".join(tokenize(text))


def shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    toks = tokenize(text)
    if len(toks) < k:
        return {tuple(toks)} if toks else set()
    return {tuple(toks[i : i + k]) for i in range(len(toks) - k + 1)}


def shingle_jaccard(a: str, b: str, k: int = 3) -> float:
    """Exact Jaccard similarity of the word k-shingle sets of two texts (1.0 for two empty texts)."""
    sa, sb = shingles(a, k), shingles(b, k)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def no_gain(text: str, parent: str, threshold: float = 0.9, k: int = 3) -> str | None:
    """Detail string when ``text`` is (nearly) a copy of ``parent``: same normalised text, or shingle Jaccard >= threshold."""
    if normalize_text(text) == normalize_text(parent):
        return "same text as the parent"
    j = shingle_jaccard(text, parent, k)
    if j >= threshold:
        return f"near-identical to the parent (jaccard {j:.2f} >= {threshold})"
    return None


# Reasons, in the order the rules are checked (evolve adds request_failed, duplicates, contamination and answer ones).
EMPTY, REFUSAL, ARTIFACT, SOLUTION, LENGTH, NO_GAIN = (
    "empty", "refusal", "prompt_artifact", "solution_not_problem", "length", "no_information_gain",
)


@dataclass
class Eliminator:
    """The text rules for one evolved problem, checked in order: empty, refusal, prompt artifact, a solution instead of
    a problem, length, no gain (near-identical to the parent)."""

    artifacts: Sequence[str] = DEFAULT_ARTIFACTS
    refusals: Sequence[str] = DEFAULT_REFUSALS
    min_chars: int = 20
    max_chars: int = 4000
    parent_similarity: float = 0.9
    shingle: int = 3
    solution_markers: Sequence[str] = DEFAULT_SOLUTION_MARKERS
    _art: list[re.Pattern[str]] = field(init=False, repr=False)
    _ref: list[re.Pattern[str]] = field(init=False, repr=False)
    _sol: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._art = _compile(self.artifacts)
        self._ref = _compile(self.refusals)
        self._sol = _compile(self.solution_markers)

    def check(self, text: str, parent: str | None = None) -> tuple[str, str] | None:
        """``(reason, detail)`` of the first rule the text fails, or None when it passes all of them."""
        if not text.strip():
            return EMPTY, "empty output"
        hit = find_pattern(text, self._ref)
        if hit:
            return REFUSAL, hit
        hit = find_pattern(text, self._art)
        if hit:
            return ARTIFACT, hit
        hit = find_pattern(text, self._sol)
        if hit:
            return SOLUTION, hit
        issue = length_issue(text, self.min_chars, self.max_chars)
        if issue:
            return LENGTH, issue
        if parent is not None:
            detail = no_gain(text, parent, self.parent_similarity, self.shingle)
            if detail:
                return NO_GAIN, detail
        return None


# --------------------------------------------------------------------------------------------------------------------
# Batch hashing
# --------------------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling polynomial


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64) so the high bits of a polynomial hash are well spread."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@dataclass
class Encoded:
    """A batch of texts as one flat array of token hashes plus per-text offsets (and exact-duplicate keys)."""

    flat: np.ndarray  # uint64 token hashes, all texts concatenated
    lengths: np.ndarray  # int64 tokens per text
    starts: np.ndarray  # int64 offset of each text in flat
    keys: list[bytes]  # blake2b of each text's normalize_text()

    def __len__(self) -> int:
        return len(self.lengths)


def text_key(text: str) -> bytes:
    """A 16-byte digest of :func:`normalize_text` (the exact-duplicate key; same as :attr:`Encoded.keys`)."""
    return hashlib.blake2b(normalize_text(text).encode(), digest_size=16).digest()


class TextHasher:
    """Stable token hashes (blake2b, cached per token) and vectorised word n-gram hashes."""

    def __init__(self, max_cache: int = 2_000_000):
        self._cache: dict[str, int] = {}
        self.max_cache = max_cache

    def encode(self, texts: Sequence[str], chunk: int = 4096) -> Encoded:
        """Tokenise once: token hashes for n-grams / MinHash and the exact key of every text. Works through the texts
        in chunks so that only one chunk's token strings exist at a time."""
        cache = self._cache
        keys: list[bytes] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        parts: list[np.ndarray] = []
        findall = _WORD_RE.findall
        b2 = hashlib.blake2b
        for lo in range(0, len(texts), chunk):
            toks_all: list[str] = []
            for i in range(lo, min(len(texts), lo + chunk)):
                toks = findall(texts[i].lower())
                lengths[i] = len(toks)
                toks_all.extend(toks)
                keys.append(b2(" ".join(toks).encode(), digest_size=16).digest())
            if len(cache) > self.max_cache:
                cache.clear()
            for tok in set(toks_all).difference(cache):
                cache[tok] = int.from_bytes(b2(tok.encode(), digest_size=8).digest(), "little")
            parts.append(np.fromiter(map(cache.__getitem__, toks_all), dtype=np.uint64, count=len(toks_all)))
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        starts = np.zeros(len(texts), dtype=np.int64)
        if len(texts) > 1:
            np.cumsum(lengths[:-1], out=starts[1:])
        return Encoded(flat, lengths, starts, keys)

    @staticmethod
    def ngrams(enc: Encoded, n: int, exact_length: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hashes of every word n-gram that lies inside one text: ``(hashes, text index, position in flat)``.

        With ``exact_length`` only texts of exactly ``n`` tokens take part (their one n-gram is the whole text)."""
        total = len(enc.flat)
        m = total - n + 1
        if n <= 0 or m <= 0:
            e = np.empty(0, dtype=np.int64)
            return np.empty(0, dtype=np.uint64), e, e
        flat = enc.flat
        h = flat[:m].copy()
        for j in range(1, n):
            h *= _MUL
            h += flat[j : m + j]
        owner = np.repeat(np.arange(len(enc), dtype=np.int64), enc.lengths)[:m]
        pos = np.arange(m, dtype=np.int64)
        ends = enc.starts + enc.lengths
        valid = pos + n <= ends[owner]
        if exact_length:
            valid &= enc.lengths[owner] == n
        return _mix64(h[valid]), owner[valid], pos[valid]

    @staticmethod
    def subset(enc: Encoded, which: Sequence[int]) -> Encoded:
        """The encoding of the texts ``which`` (in that order)."""
        which = np.asarray(which, dtype=np.int64)
        if len(which) == 0:
            return Encoded(np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), [])
        lengths = enc.lengths[which]
        starts = np.zeros(len(which), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        idx = np.repeat(enc.starts[which] - starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        return Encoded(enc.flat[idx], lengths, starts, [enc.keys[i] for i in which.tolist()])

    @staticmethod
    def whole(tokens_hashes: Sequence[int]) -> int:
        """Hash of one short token sequence, equal to :meth:`ngrams` with ``n = len(tokens_hashes)``."""
        h = 0
        mul = int(_MUL)
        for i, t in enumerate(tokens_hashes):
            h = t if i == 0 else (h * mul + t) & _MASK64
        return int(_mix64(np.array([h], dtype=np.uint64))[0])


# --------------------------------------------------------------------------------------------------------------------
# MinHash and LSH
# --------------------------------------------------------------------------------------------------------------------

_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch pre-mixes every input hash with it in its affine32 scheme)."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> np.uint32(s1))
    h = h * np.uint32(m1)
    h = h ^ (h >> np.uint32(s2))
    h = h * np.uint32(m2)
    return h ^ (h >> np.uint32(s3))


class MinHasher:
    """MinHash signatures of word-shingle sets for whole batches.

    ``signatures(texts)[i]`` equals ``datasketch.MinHash(num_perm, seed)`` (scheme ``affine32``) updated with the 32-bit
    shingle hashes of text i (see :meth:`shingle_hashes`). Texts without tokens get the all-max signature and
    ``empty[i] = True``."""

    MAX = np.uint32(0xFFFFFFFF)

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 3, hasher: TextHasher | None = None,
                 workers: int | None = None, chunk_shingles: int = 16384):
        from datasketch import MinHash

        self.num_perm = num_perm
        self.seed = seed
        self.shingle = shingle
        self.hasher = hasher or TextHasher()
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self._a = np.asarray(a, dtype=np.uint32)
        self._b = np.asarray(b, dtype=np.uint32)
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.chunk_shingles = chunk_shingles

    def shingle_hashes(self, enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 shingle hashes, owning text index), sorted by owner. Texts shorter than the shingle size get one
        shingle made of all their tokens."""
        h, owner, _ = TextHasher.ngrams(enc, self.shingle)
        short = np.nonzero((enc.lengths > 0) & (enc.lengths < self.shingle))[0]
        if len(short):
            extra = [TextHasher.whole(enc.flat[enc.starts[i] : enc.starts[i] + enc.lengths[i]].tolist()) for i in short]
            h = np.concatenate([h, np.array(extra, dtype=np.uint64)])
            owner = np.concatenate([owner, short])
            order = np.argsort(owner, kind="stable")
            h, owner = h[order], owner[order]
        return (h >> np.uint64(32)).astype(np.uint32), owner

    def signatures_encoded(self, enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
        n = len(enc)
        sig = np.full((n, self.num_perm), self.MAX, dtype=np.uint32)
        hv, owner = self.shingle_hashes(enc)
        if len(hv) == 0:
            return sig, np.ones(n, dtype=bool)
        hv = _fmix32(hv)
        counts = np.bincount(owner, minlength=n)
        empty = counts == 0
        # Chunks of whole texts, about chunk_shingles shingles each.
        bounds = np.concatenate([[0], np.cumsum(counts)])
        cuts = [0]
        for i in range(1, n + 1):
            if bounds[i] - bounds[cuts[-1]] >= self.chunk_shingles or i == n:
                cuts.append(i)
        cuts = sorted(set(cuts))

        def work(lo: int, hi: int) -> None:
            s, e = bounds[lo], bounds[hi]
            if e == s:
                return
            # (perm, shingle) layout: the min-reduction then runs along contiguous rows.
            phv = self._a[:, None] * hv[None, s:e]
            phv += self._b[:, None]
            items = np.arange(lo, hi)
            items = items[counts[lo:hi] > 0]
            offs = bounds[items] - s
            sig[items] = np.minimum.reduceat(phv, offs, axis=1).T

        spans = list(zip(cuts[:-1], cuts[1:]))
        if self.workers > 1 and len(spans) > 1:
            with ThreadPoolExecutor(self.workers) as ex:
                list(ex.map(lambda se: work(*se), spans))
        else:
            for lo, hi in spans:
                work(lo, hi)
        return sig, empty

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.signatures_encoded(self.hasher.encode(texts))

    def set_sizes(self, enc: Encoded) -> np.ndarray:
        """Number of distinct shingles of each text (for containment estimates)."""
        hv, owner = self.shingle_hashes(enc)
        if len(hv) == 0:
            return np.zeros(len(enc), dtype=np.int64)
        key = np.sort((owner.astype(np.uint64) << np.uint64(32)) | hv.astype(np.uint64))
        uniq = key[np.concatenate([[True], key[1:] != key[:-1]])]
        return np.bincount((uniq >> np.uint64(32)).astype(np.int64), minlength=len(enc))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives at ``threshold`` (datasketch's optimiser)."""
    return _lsh_params(round(float(threshold), 4), int(num_perm))


_LSH_CACHE: dict[tuple[float, int], tuple[int, int]] = {}


def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    key = (threshold, num_perm)
    if key not in _LSH_CACHE:
        from datasketch.lsh import _optimal_param

        _LSH_CACHE[key] = tuple(_optimal_param(threshold, num_perm, 0.5, 0.5))  # type: ignore[assignment]
    return _LSH_CACHE[key]


class MinHashIndex:
    """Banded LSH over MinHash signatures, queried a whole batch at a time.

    Items are integers 0..n-1 in insertion order. Each band's rows are folded into one 64-bit key; candidate pairs are
    items sharing a key in any band, found by sorting keys (no per-item Python work). Every candidate pair is then
    verified with its estimated Jaccard similarity (the share of equal signature values)."""

    #: In a group of items sharing a band key, each item is paired with at most this many neighbours (sorted by id).
    MAX_GROUP_PAIRS = 64

    def __init__(self, threshold: float, num_perm: int):
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._sig = np.zeros((1024, num_perm), dtype=np.uint32)
        self._keys = np.zeros((1024, self.bands), dtype=np.uint64)
        self._alive = np.zeros(1024, dtype=bool)
        self.size = 0

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys: each band's rows folded into one 64-bit hash."""
        n = sigs.shape[0]
        keys = np.zeros((n, self.bands), dtype=np.uint64)
        for bi in range(self.bands):
            k = np.zeros(n, dtype=np.uint64)
            for c in range(bi * self.rows, (bi + 1) * self.rows):
                k *= _MUL
                k += sigs[:, c].astype(np.uint64)
            keys[:, bi] = _mix64(k + np.uint64(bi))
        return keys

    def _reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self._sig):
            cap = max(need, 2 * len(self._sig))
            for name in ("_sig", "_keys", "_alive"):
                old = getattr(self, name)
                new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)

    def add(self, sigs: np.ndarray, keys: np.ndarray | None = None, skip: np.ndarray | None = None) -> np.ndarray:
        """Index a batch (items where ``skip`` is true get ids but never match); returns their ids."""
        n = len(sigs)
        keys = self.band_keys(sigs) if keys is None else keys
        self._reserve(n)
        lo, hi = self.size, self.size + n
        self._sig[lo:hi] = sigs
        self._keys[lo:hi] = keys
        self._alive[lo:hi] = True if skip is None else ~np.asarray(skip, dtype=bool)
        self.size = hi
        return np.arange(lo, hi)

    def remove(self, ids: Iterable[int]) -> None:
        """Forget items: they are never returned as matches again (their ids stay taken)."""
        ids = np.fromiter(ids, dtype=np.int64)
        self._alive[ids] = False

    def signatures(self) -> np.ndarray:
        return self._sig[: self.size]

    def alive(self) -> np.ndarray:
        return self._alive[: self.size]

    def candidate_pairs(self, keys: np.ndarray, within: bool = False,
                        live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pairs ``(i, j)``: ``i`` an indexed item (or, with ``within``, an earlier query item, numbered ``size +
        position``), ``j`` the position of a query item, sharing a band key. Each pair is listed once. ``live`` masks
        query items that take part (default all)."""
        nq = len(keys)
        n = self.size
        if nq == 0 or (n == 0 and not within):
            e = np.empty(0, dtype=np.int64)
            return e, e
        q_ids = np.arange(n, n + nq, dtype=np.int64)
        if live is not None:
            q_ids = q_ids[live]
            keys = keys[live]
        idx_ids = np.nonzero(self.alive())[0]
        out: list[np.ndarray] = []
        for b in range(self.bands):
            k = np.concatenate([self._keys[idx_ids, b], keys[:, b]])
            ids = np.concatenate([idx_ids, q_ids])
            order = np.lexsort((ids, k))
            sk, sid = k[order], ids[order]
            for d in range(1, self.MAX_GROUP_PAIRS + 1):
                if d >= len(sk):
                    break
                same = sk[d:] == sk[:-d]
                if not same.any():
                    break
                a, c = sid[:-d][same], sid[d:][same]  # a < c: ids ascend within a key group
                sel = c >= n if within else (c >= n) & (a < n)
                if sel.any():
                    out.append(a[sel] * (n + nq) + c[sel])
        if not out:
            e = np.empty(0, dtype=np.int64)
            return e, e
        codes = np.sort(np.concatenate(out))
        codes = codes[np.concatenate([[True], codes[1:] != codes[:-1]])]
        return codes // (n + nq), codes % (n + nq) - n

    @staticmethod
    def jaccard(sig_a: np.ndarray, sig_b: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Row-wise estimated Jaccard similarity of two equally long stacks of signatures."""
        out = np.empty(len(sig_a))
        for s in range(0, len(sig_a), chunk):
            out[s : s + chunk] = (sig_a[s : s + chunk] == sig_b[s : s + chunk]).mean(axis=1)
        return out


# --------------------------------------------------------------------------------------------------------------------
# Dedup
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DupMatch:
    """Why an item is a duplicate: ``kind`` exact | near, the key of the kept item it duplicates, the similarity."""

    kind: str
    key: str
    similarity: float


class Deduper:
    """Exact (normalised text) and near-duplicate (MinHash LSH) dedup over a pool that grows batch by batch.

    ``add(keys, texts)`` puts items in the pool unchecked (e.g. the seeds); ``check(keys, texts)`` goes through a batch
    in order, returns a :class:`DupMatch` for each item that duplicates a kept pool item or an earlier kept item of the
    batch (None for the others) and adds the others to the pool: the first item seen is always the one kept. A near
    duplicate has an estimated Jaccard similarity (word shingles) of at least ``near_threshold`` with the kept item;
    when several kept items qualify, the most similar one is named. ``remove(keys)`` takes kept items out again."""

    def __init__(self, near_threshold: float | None = 0.85, num_perm: int = 128, shingle: int = 3, seed: int = 1,
                 minhasher: MinHasher | None = None):
        self.near_threshold = near_threshold
        self.exact: dict[bytes, str] = {}
        self.keys: list[str] = []
        self._pos: dict[str, tuple[int, bytes]] = {}  # key -> (index id, exact key)
        self.minhasher = minhasher or MinHasher(num_perm=num_perm, seed=seed, shingle=shingle)
        self.index = MinHashIndex(near_threshold, self.minhasher.num_perm) if near_threshold else None

    def __len__(self) -> int:
        return len(self._pos)

    def add(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        enc = self.minhasher.hasher.encode(texts)
        for k, tk in zip(keys, enc.keys):
            self.exact.setdefault(tk, k)
            self._pos[k] = (len(self.keys), tk)
            self.keys.append(k)
        if self.index is not None:
            sigs, empty = self.minhasher.signatures_encoded(enc)
            self.index.add(sigs, skip=empty)

    def check(self, keys: Sequence[str], texts: Sequence[str], encoded: Encoded | None = None,
              chunk: int = 16384) -> list[DupMatch | None]:
        """``encoded``: the texts already encoded by a :class:`TextHasher` (saves tokenising them twice). Large batches
        go in chunks (same result: each chunk joins the pool before the next is checked; bounded memory)."""
        enc = encoded if encoded is not None else self.minhasher.hasher.encode(texts)
        out: list[DupMatch | None] = []
        for lo in range(0, len(keys), chunk):
            hi = min(len(keys), lo + chunk)
            part = enc if (lo, hi) == (0, len(keys)) else TextHasher.subset(enc, range(lo, hi))
            out.extend(self._check(list(keys[lo:hi]), part))
        return out

    def _check(self, keys: list[str], enc: Encoded) -> list[DupMatch | None]:
        n = len(keys)
        out: list[DupMatch | None] = [None] * n
        seen: dict[bytes, int] = {}
        for j, tk in enumerate(enc.keys):  # exact: against the pool, then earlier items of the batch
            prev = self.exact.get(tk)
            if prev is not None:
                out[j] = DupMatch("exact", prev, 1.0)
            elif tk in seen:
                out[j] = DupMatch("exact", keys[seen[tk]], 1.0)
            else:
                seen[tk] = j
        if self.index is not None:
            base = self.index.size
            sigs, empty = self.minhasher.signatures_encoded(enc)
            bkeys = self.index.band_keys(sigs)
            live = ~empty & np.array([m is None for m in out], dtype=bool)
            a, c = self.index.candidate_pairs(bkeys, within=True, live=live)
            if len(a):
                allsig_a = np.where((a < base)[:, None], self.index._sig[np.minimum(a, max(base - 1, 0))],
                                    sigs[np.maximum(a - base, 0)])
                sim = MinHashIndex.jaccard(allsig_a, sigs[c])
                ok = sim >= self.near_threshold
                a, c, sim = a[ok], c[ok], sim[ok]
                order = np.lexsort((a, c))
                kept = live.copy()
                cur_j, best = -1, None
                # Pairs sorted by query item: an item is a duplicate if an earlier item it resembles is still kept.
                for ai, cj, si in zip(a[order].tolist(), c[order].tolist(), sim[order].tolist()):
                    if cj != cur_j:
                        if best is not None:
                            kept[cur_j] = False
                            out[cur_j] = DupMatch("near", best[0], round(best[1], 4))
                        cur_j, best = cj, None
                    if not kept[cj]:
                        continue
                    holder = self.keys[ai] if ai < base else (keys[ai - base] if kept[ai - base] else None)
                    if holder is not None and (best is None or si > best[1]):
                        best = (holder, si)
                if best is not None:
                    out[cur_j] = DupMatch("near", best[0], round(best[1], 4))
            skip = empty | np.array([m is not None for m in out], dtype=bool)
            self.index.add(sigs, bkeys, skip=skip)
        for j, (k, tk) in enumerate(zip(keys, enc.keys)):
            pos = len(self.keys)
            self.keys.append(k)
            if out[j] is None:
                self.exact[tk] = k
                self._pos[k] = (pos, tk)
        return out

    def remove(self, keys: Iterable[str]) -> None:
        """Take kept items out of the pool again (e.g. eliminated by a later check): nothing matches them any more."""
        ids = []
        for k in keys:
            pos = self._pos.pop(k, None)
            if pos is None:
                continue
            ids.append(pos[0])
            if self.exact.get(pos[1]) == k:
                del self.exact[pos[1]]
        if self.index is not None and ids:
            self.index.remove(ids)


# --------------------------------------------------------------------------------------------------------------------
# Decontamination
# --------------------------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    """The numbers written in a text (a near-copy of a test problem keeps them; a sibling with other numbers does not)."""
    return set(_NUMBER_RE.findall(text))


TEXT_FIELDS = ("question", "problem", "prompt", "instruction", "text")


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    file: str
    text: str


@dataclass(frozen=True)
class Match:
    """A contamination hit: ``kind`` exact | ngram | near; ``score`` is the number of shared n-grams (ngram) or the
    estimated containment of the test problem in the text (near; exact = 1.0); ``evidence`` the first shared n-gram
    or a short note."""

    kind: str
    test_id: str
    test_file: str
    test_text: str
    score: float
    evidence: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "test_id": self.test_id, "test_file": self.test_file, "test_text": self.test_text,
                "score": self.score, "evidence": self.evidence}


def load_test_items(paths: Iterable[str | Path], fields: Sequence[str] = TEXT_FIELDS) -> list[BenchmarkItem]:
    """Problems of benchmark test files (.jsonl / .json / .parquet): the first of ``fields`` each row has."""
    from .datafiles import load_table
    from .errors import DataError

    items: list[BenchmarkItem] = []
    for p in paths:
        table = load_table(Path(str(p)))
        path = table.path or Path(table.name)
        for line, row in table.rows:
            f = next((f for f in fields if isinstance(row.get(f), str) and row[f].strip()), None)
            if f is None:
                raise DataError(f"{path}:{line}: no text field (looked for {', '.join(fields)})")
            rid = row.get("unique_id") or row.get("id") or f"{path.stem}:{line}"
            items.append(BenchmarkItem(str(rid), path.name, row[f].strip()))
    return items


def _lookup(table: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of h found in the sorted table, index into the table for the found ones)."""
    if len(table) == 0 or len(h) == 0:
        return np.zeros(len(h), dtype=bool), np.empty(0, dtype=np.int64)
    idx = np.searchsorted(table, h)
    idx[idx >= len(table)] = 0
    hit = table[idx] == h
    return hit, idx[hit]


class Decontaminator:
    """Finds benchmark test problems inside candidate texts.

    A candidate matches a test problem when (checked in this order) their normalised texts are equal (``exact``); they
    share at least ``min_shared`` word ``ngram``-grams, or the candidate contains the whole token sequence of a test
    problem shorter than ``ngram`` but at least ``min_tokens`` long (``ngram``); or the test problem is nearly
    contained in the candidate (``near``): at least ``near_threshold`` of its word-shingle set appears in the
    candidate's, estimated from MinHash (``J (|T| + |C|) / ((1 + J) |T|)``, J the estimated Jaccard similarity) for the
    pairs that banded LSH proposes at Jaccard ``candidate_jaccard`` or more, and every number written in the test
    problem appears in the candidate too (so siblings with other numbers, common in MATH, do not count). None turns the
    near check off. Containment rather than Jaccard, so that text added around a copied test problem does not hide it.
    n-grams found in ``ignore_common`` or more distinct test problems are boilerplate ("Express your answer as a common
    fraction ...") and do not count (0 keeps them all)."""

    def __init__(self, items: Sequence[BenchmarkItem], ngram: int = 13, min_shared: int = 1, min_tokens: int = 8,
                 near_threshold: float | None = 0.7, num_perm: int = 128, shingle: int = 3, ignore_common: int = 3,
                 seed: int = 1, candidate_jaccard: float = 0.5):
        self.items = list(items)
        self.ngram = ngram
        self.min_shared = max(1, min_shared)
        self.min_tokens = min(min_tokens, ngram)
        self.ignore_common = ignore_common
        self.hasher = TextHasher()
        enc = self.hasher.encode([it.text for it in self.items])
        self.exact: dict[bytes, int] = {}
        for i, k in enumerate(enc.keys):
            self.exact.setdefault(k, i)
        h, owner, _ = TextHasher.ngrams(enc, ngram)
        self._grams, self._gram_owner = self._table(h, owner, drop_common=True)
        # Short test problems (min_tokens <= length < ngram): indexed by their first min_tokens tokens, verified whole.
        short = np.nonzero((enc.lengths >= self.min_tokens) & (enc.lengths < ngram))[0]
        self._short_tokens = {int(i): enc.flat[enc.starts[i] : enc.starts[i] + enc.lengths[i]] for i in short}
        sub = Encoded(np.concatenate([self._short_tokens[int(i)][: self.min_tokens] for i in short])
                      if len(short) else np.empty(0, dtype=np.uint64),
                      np.full(len(short), self.min_tokens, dtype=np.int64),
                      np.arange(len(short), dtype=np.int64) * self.min_tokens, [])
        sh, sown, _ = TextHasher.ngrams(sub, self.min_tokens)
        self._prefix, self._prefix_owner = self._table(sh, short[sown], drop_common=False, keep_all=True)
        self.near_threshold = near_threshold
        self.minhasher = MinHasher(num_perm=num_perm, seed=seed, shingle=shingle, hasher=self.hasher)
        self.index: MinHashIndex | None = None
        self._sizes = np.zeros(0, dtype=np.int64)
        self._numbers = [_numbers(it.text) for it in self.items]
        if near_threshold:
            self.index = MinHashIndex(min(candidate_jaccard, near_threshold), num_perm)
            sigs, empty = self.minhasher.signatures_encoded(enc)
            self.index.add(sigs, skip=empty)
            self._sizes = self.minhasher.set_sizes(enc)

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], fields: Sequence[str] = TEXT_FIELDS, **kw: Any) -> Decontaminator:
        return cls(load_test_items(paths, fields), **kw)

    def _table(self, h: np.ndarray, owner: np.ndarray, drop_common: bool, keep_all: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Sorted hashes and an owner per entry: one entry per distinct hash (``keep_all``: per (hash, owner))."""
        if len(h) == 0:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        order = np.lexsort((owner, h))
        h, owner = h[order], owner[order]
        new = np.ones(len(h), dtype=bool)
        new[1:] = (h[1:] != h[:-1]) | (owner[1:] != owner[:-1])
        h, owner = h[new], owner[new].astype(np.int64)  # one entry per (n-gram, test item)
        if keep_all:
            return h, owner
        first = np.ones(len(h), dtype=bool)
        first[1:] = h[1:] != h[:-1]
        starts = np.nonzero(first)[0]
        counts = np.diff(np.append(starts, len(h)))
        uh, own = h[starts], owner[starts]
        if drop_common and self.ignore_common:
            keep = counts < self.ignore_common
            uh, own = uh[keep], own[keep]
        return uh, own

    def __len__(self) -> int:
        return len(self.items)

    def _set_sizes(self, enc: Encoded, which: np.ndarray) -> np.ndarray:
        """Distinct shingle counts of the texts ``which`` (zeros elsewhere)."""
        sizes = np.zeros(len(enc), dtype=np.int64)
        sizes[which] = self.minhasher.set_sizes(TextHasher.subset(enc, which))
        return sizes

    def match(self, text: str) -> Match | None:
        return self.match_many([text])[0]

    def _match(self, kind: str, j: int, score: float, evidence: str) -> Match:
        it = self.items[j]
        return Match(kind, it.id, it.file, it.text, score, evidence)

    def match_many(self, texts: Sequence[str], encoded: Encoded | None = None, chunk: int = 16384
                   ) -> list[Match | None]:
        """Matches of each text (None: clean). ``encoded``: the texts already encoded by a :class:`TextHasher`.
        Large batches go in chunks (bounded memory)."""
        enc = encoded if encoded is not None else self.hasher.encode(texts)
        out: list[Match | None] = []
        for lo in range(0, len(texts), chunk):
            hi = min(len(texts), lo + chunk)
            part = enc if (lo, hi) == (0, len(texts)) else TextHasher.subset(enc, range(lo, hi))
            out.extend(self._match_many(texts[lo:hi], part))
        return out

    def _match_many(self, texts: Sequence[str], enc: Encoded) -> list[Match | None]:
        out: list[Match | None] = [None] * len(texts)
        for i, k in enumerate(enc.keys):
            j = self.exact.get(k)
            if j is not None:
                out[i] = self._match("exact", j, 1.0, "same normalised text")
        # Shared n-grams: one vectorised lookup, then one Python step per matching text.
        h, owner, pos = TextHasher.ngrams(enc, self.ngram)
        hit, tidx = _lookup(self._grams, h)
        if hit.any():
            ho, hh, hp, ht = owner[hit], h[hit], pos[hit], self._gram_owner[tidx]
            order = np.lexsort((hh, ho))
            so, sh = ho[order], hh[order]
            distinct = np.ones(len(so), dtype=bool)
            distinct[1:] = (so[1:] != so[:-1]) | (sh[1:] != sh[:-1])
            shared = np.bincount(so[distinct], minlength=len(texts))
            texts_hit, first = np.unique(ho, return_index=True)  # hits are in text order, positions ascending
            for i, f in zip(texts_hit.tolist(), first.tolist()):
                if out[i] is not None or shared[i] < self.min_shared:
                    continue
                start = int(hp[f] - enc.starts[i])
                evidence = " ".join(tokenize(texts[i])[start : start + self.ngram])
                out[i] = self._match("ngram", int(ht[f]), float(shared[i]), evidence)
        # Whole short test problems inside the text.
        if len(self._prefix):
            h, owner, pos = TextHasher.ngrams(enc, self.min_tokens)
            hit, _ = _lookup(self._prefix, h)
            for k in np.nonzero(hit)[0].tolist():
                i = int(owner[k])
                if out[i] is not None:
                    continue
                lo = np.searchsorted(self._prefix, h[k], side="left")
                hi = np.searchsorted(self._prefix, h[k], side="right")
                p, end = int(pos[k]), int(enc.starts[i] + enc.lengths[i])
                for j in self._prefix_owner[lo:hi].tolist():
                    toks = self._short_tokens[j]
                    if p + len(toks) <= end and np.array_equal(enc.flat[p : p + len(toks)], toks):
                        start = p - int(enc.starts[i])
                        evidence = " ".join(tokenize(texts[i])[start : start + len(toks)])
                        out[i] = self._match("ngram", j, 1.0, evidence)
                        break
        if self.index is not None:
            sigs, empty = self.minhasher.signatures_encoded(enc)
            live = ~empty & np.array([m is None for m in out], dtype=bool)
            a, c = self.index.candidate_pairs(self.index.band_keys(sigs), live=live)
            if len(a):
                jac = MinHashIndex.jaccard(self.index.signatures()[a], sigs[c])
                sizes = self._set_sizes(enc, np.unique(c))
                t_size = self._sizes[a].astype(float)
                cont = np.minimum(1.0, jac * (t_size + sizes[c]) / ((1.0 + jac) * np.maximum(t_size, 1.0)))
                ok = np.nonzero(cont >= self.near_threshold)[0]
                ok = ok[np.lexsort((-cont[ok], c[ok]))]  # by text, most contained first
                for k in ok.tolist():
                    i, j = int(c[k]), int(a[k])
                    if out[i] is None and self._numbers[j] <= _numbers(texts[i]):
                        out[i] = self._match("near", j, round(float(cont[k]), 4),
                                             f"estimated containment {cont[k]:.2f} (jaccard {jac[k]:.2f})")
        return out
