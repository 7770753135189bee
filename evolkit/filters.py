"""Elimination rules, deduplication and decontamination of problem texts: small pieces, one job each.

Used by the evolve stage on every round and reusable by any command that checks a set of problems (``evolkit
contamination`` ...). Nothing here calls a model or touches the run store.

* **Rules** (pure functions): :func:`find_artifact` (leftover prompt text such as ``#Rewritten Prompt#``),
  :func:`find_refusal`, a solution written instead of the problem (:data:`DEFAULT_SOLUTION_MARKERS`), :func:`length_issue`, :func:`shingle_jaccard` / :func:`no_gain` (an evolution that is a near copy
  of its parent), bundled by :class:`Eliminator` which returns the first failing rule as ``(reason, detail)``.
* **Text keys**: :func:`tokenize` (lower-case ``\\w+`` words), :func:`normalize_text` (the exact-duplicate key).
* **Batch hashing** (:class:`TextHasher`): every token gets a stable 64-bit hash (blake2b, cached); word n-grams are
  hashed with a polynomial rolling hash over whole batches in numpy, so no per-n-gram Python work is done.
* **MinHash** (:class:`MinHasher`): ``datasketch.MinHash`` sketches (scheme ``affine32``) of word-shingle sets, fed
  with the 32-bit shingle hashes of the batch hashing; a banded LSH with ``datasketch.MinHashLSH``'s optimal bands
  and rows for the threshold, in a compact layout (:class:`SketchIndex`), proposes candidates, and every candidate is
  verified by its estimated Jaccard similarity before it counts.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

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

_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


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
    return [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in patterns]


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
    #: MinHash sketches of the texts once computed, per (num_perm, seed, shingle) (see :meth:`MinHasher.minhashes`),
    #: so that decontamination and dedup of one batch sketch each text once.
    sketches: dict[tuple[int, int, int], list[Any]] = field(default_factory=dict, repr=False, compare=False)

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
        rows = which.tolist()
        sketches = {cfg: [got[i] for i in rows] for cfg, got in enc.sketches.items()}
        return Encoded(enc.flat[idx], lengths, starts, [enc.keys[i] for i in rows], sketches)

    @staticmethod
    def whole(tokens_hashes: Sequence[int]) -> int:
        """Hash of one short token sequence, equal to :meth:`ngrams` with ``n = len(tokens_hashes)``."""
        h = 0
        mul = int(_MUL)
        for i, t in enumerate(tokens_hashes):
            h = t if i == 0 else (h * mul + t) & _MASK64
        return int(_mix64(np.array([h], dtype=np.uint64))[0])


# --------------------------------------------------------------------------------------------------------------------
# MinHash and LSH (datasketch)
# --------------------------------------------------------------------------------------------------------------------


class MinHasher:
    """MinHash sketches of word-shingle sets: ``datasketch.MinHash`` (scheme ``affine32``) fed with the 32-bit shingle
    hashes of each text (see :meth:`shingle_hashes`; one shingle of all tokens for a text shorter than ``shingle``).

    :meth:`minhashes` gives one ``datasketch.LeanMinHash`` per text (None for a text without tokens);
    :meth:`signatures` the same hash values as a matrix."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 3, hasher: TextHasher | None = None):
        self.num_perm = num_perm
        self.seed = seed
        self.shingle = shingle
        self.hasher = hasher or TextHasher()
        # The shingle hashes are 32-bit values already: the identity is the hash function.
        self._work = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")

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

    def minhashes(self, enc: Encoded) -> list[LeanMinHash | None]:
        """One sketch per text of ``enc`` (None: no tokens); computed once per encoding (kept in ``enc.sketches``)."""
        cfg = (self.num_perm, self.seed, self.shingle)
        cached = enc.sketches.get(cfg)
        if cached is not None:
            return cached
        hv, owner = self.shingle_hashes(enc)
        counts = np.bincount(owner, minlength=len(enc))
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        values = hv.tolist()
        m = self._work
        out: list[LeanMinHash | None] = []
        for i in range(len(enc)):
            s, e = bounds[i], bounds[i + 1]
            if s == e:
                out.append(None)
                continue
            m.clear()
            m.update_batch(values[s:e])
            out.append(LeanMinHash(m))  # a frozen copy of the hash values
        enc.sketches[cfg] = out
        return out

    def signatures_encoded(self, enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
        """``(hash values (n, num_perm) uint32, empty)``; a text without tokens has the all-max row and ``empty``."""
        sig = np.full((len(enc), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        empty = np.ones(len(enc), dtype=bool)
        for i, m in enumerate(self.minhashes(enc)):
            if m is not None:
                sig[i] = m.hashvalues
                empty[i] = False
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


class SketchIndex:
    """Banded LSH over integer ids with datasketch's bands and rows for the threshold (``MinHashLSH(threshold,
    num_perm).b`` / ``.r``), in a compact layout: about 200 bytes of memory an item whatever the pool size.

    ``datasketch.MinHashLSH`` keeps a Python ``set`` per band bucket and the index here kept each ``LeanMinHash``:
    ~3.6 KiB an item, so an evolve round's memory grew with the pool (+238.6 MiB from 2k to 32k seeds,
    ``benchmarks/bench_memory.py``; see docs/performance.md). Here each band is a 64-bit hash of its rows, kept in one
    sorted ``uint64`` array per band (binary search) plus a small dict of the items added since the last merge; the
    signatures go to an unlinked temporary file and are read back only for the candidates, to verify them by their
    estimated Jaccard similarity (the same figure as ``LeanMinHash.jaccard``). Equal bands always hash equal, so every
    candidate datasketch proposes is proposed here; a hash collision can only add a candidate, which the Jaccard check
    then judges."""

    MERGE_EVERY = 4096

    def __init__(self, threshold: float, num_perm: int):
        import tempfile

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.b, self.r, self.num_perm = int(lsh.b), int(lsh.r), num_perm
        rng = np.random.default_rng(0x5EED)
        self._mult = (rng.integers(1, 2**63, size=self.b * self.r, dtype=np.uint64) * np.uint64(2) + np.uint64(1))
        self._keys = [np.empty(0, dtype=np.uint64) for _ in range(self.b)]
        self._ids = [np.empty(0, dtype=np.int64) for _ in range(self.b)]
        self._recent: dict[tuple[int, int], list[int]] = {}
        self._n_recent = 0
        self._removed: set[int] = set()
        self._present = 0
        self._dtype: np.dtype | None = None
        self._file = tempfile.TemporaryFile(prefix="evolkit-sketches-")
        self._fd = self._file.fileno()

    def __len__(self) -> int:
        return self._present

    def __del__(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def _bands(self, values: np.ndarray) -> list[int]:
        with np.errstate(over="ignore"):
            prod = values[: self.b * self.r].astype(np.uint64) * self._mult
            return prod.reshape(self.b, self.r).sum(axis=1, dtype=np.uint64).tolist()

    def _row_bytes(self) -> int:
        return self.num_perm * (self._dtype.itemsize if self._dtype is not None else 8)

    def add(self, item: int, sketch: LeanMinHash) -> None:
        values = np.ascontiguousarray(sketch.hashvalues)
        if self._dtype is None:
            self._dtype = values.dtype
        os.pwrite(self._fd, values.astype(self._dtype, copy=False).tobytes(), item * self._row_bytes())
        for k, h in enumerate(self._bands(values)):
            self._recent.setdefault((k, h), []).append(item)
        self._removed.discard(item)
        self._present += 1
        self._n_recent += 1
        if self._n_recent >= self.MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        """Move the recent items into the sorted arrays (dropping removed ones)."""
        new_keys: list[list[int]] = [[] for _ in range(self.b)]
        new_ids: list[list[int]] = [[] for _ in range(self.b)]
        for (k, h), items in self._recent.items():
            for it in items:
                new_keys[k].append(h)
                new_ids[k].append(it)
        dead = np.fromiter(self._removed, dtype=np.int64, count=len(self._removed)) if self._removed else None
        for k in range(self.b):
            keys = np.concatenate([self._keys[k], np.array(new_keys[k], dtype=np.uint64)])
            ids = np.concatenate([self._ids[k], np.array(new_ids[k], dtype=np.int64)])
            if dead is not None:
                keep = ~np.isin(ids, dead)
                keys, ids = keys[keep], ids[keep]
            order = np.argsort(keys, kind="stable")
            self._keys[k], self._ids[k] = keys[order], ids[order]
        self._recent.clear()
        self._n_recent = 0
        self._removed.clear()

    def remove(self, item: int) -> None:
        if item in self._removed or not self._has(item):
            return
        self._removed.add(item)
        self._present -= 1

    def _has(self, item: int) -> bool:
        """Whether ``item`` is indexed (a removed item is not): its first band holds it."""
        if self._dtype is None:
            return False
        row = self._read(item)
        if row is None:
            return False
        h = self._bands(row)[0]
        if item in self._recent.get((0, h), ()):
            return True
        keys, ids = self._keys[0], self._ids[0]
        i = int(keys.searchsorted(np.uint64(h)))
        while i < len(keys) and int(keys[i]) == h:
            if int(ids[i]) == item:
                return True
            i += 1
        return False

    def _read(self, item: int) -> np.ndarray | None:
        n = self._row_bytes()
        data = os.pread(self._fd, n, item * n)
        return np.frombuffer(data, dtype=self._dtype) if len(data) == n else None

    def similar(self, sketch: LeanMinHash) -> list[tuple[int, float]]:
        """``(id, estimated Jaccard)`` of the indexed items sharing a band with ``sketch``, by id."""
        values = np.ascontiguousarray(sketch.hashvalues)
        found: set[int] = set()
        for k, h in enumerate(self._bands(values)):
            keys = self._keys[k]
            if len(keys):
                hv = np.uint64(h)
                i = int(keys.searchsorted(hv))
                while i < len(keys) and keys[i] == hv:
                    found.add(int(self._ids[k][i]))
                    i += 1
            items = self._recent.get((k, h))
            if items:
                found.update(items)
        if self._removed:
            found -= self._removed
        out = []
        for item in sorted(found):
            row = self._read(item)
            if row is not None:
                out.append((item, float(np.count_nonzero(row == values)) / float(len(values))))
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


class ExactKeys:
    """Exact keys (the 16-byte text digests of :attr:`Encoded.keys`) -> the id of the pool item holding each, in a
    compact layout: the digests' two 64-bit halves in arrays sorted by the first half (binary search, the second half
    compared too, so a match is the whole digest), a dict of the keys added since the last merge (at most 4,096) and
    the ids taken out. ~30 bytes an item, where a ``dict[bytes, str]`` took ~200."""

    MERGE_EVERY = 4096

    def __init__(self) -> None:
        self._hi = np.empty(0, dtype=np.uint64)
        self._lo = np.empty(0, dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)
        self._recent: dict[bytes, int] = {}
        self._dead: set[int] = set()

    def get(self, key: bytes) -> int | None:
        """The live item holding ``key`` (at most one is: :meth:`put` is only called when there is none)."""
        item = self._recent.get(key)
        if item is not None and item not in self._dead:
            return item
        if len(self._hi):
            hi, lo = np.uint64(int.from_bytes(key[:8], "big")), np.uint64(int.from_bytes(key[8:], "big"))
            i = int(self._hi.searchsorted(hi))
            while i < len(self._hi) and self._hi[i] == hi:
                if self._lo[i] == lo and int(self._ids[i]) not in self._dead:
                    return int(self._ids[i])
                i += 1
        return None

    def put(self, key: bytes, item: int) -> None:
        if len(key) != 16:
            raise ValueError(f"an exact key is a 16-byte digest, got {len(key)} bytes")
        self._recent[key] = item
        if len(self._recent) >= self.MERGE_EVERY:
            self._merge()

    def discard(self, item: int) -> None:
        self._dead.add(item)

    def _merge(self) -> None:
        live = {k: v for k, v in self._recent.items() if v not in self._dead}
        n = len(live)
        raw = np.frombuffer(b"".join(live), dtype=">u8").reshape(n, 2).astype(np.uint64) if n else np.empty((0, 2),
                                                                                                     dtype=np.uint64)
        hi = np.concatenate([self._hi, raw[:, 0]])
        lo = np.concatenate([self._lo, raw[:, 1]])
        ids = np.concatenate([self._ids, np.fromiter(live.values(), dtype=np.int64, count=n)])
        if self._dead:
            keep = ~np.isin(ids, np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
            hi, lo, ids = hi[keep], lo[keep], ids[keep]
            self._dead.clear()
        order = np.argsort(hi, kind="stable")
        self._hi, self._lo, self._ids = hi[order], lo[order], ids[order]
        self._recent.clear()


class Deduper:
    """Exact (normalised text) and near-duplicate (MinHash LSH) dedup over a pool that grows batch by batch.

    ``add(keys, texts)`` puts items in the pool unchecked (e.g. the seeds); ``check(keys, texts)`` goes through a batch
    in order, returns a :class:`DupMatch` for each item that duplicates a kept pool item or an earlier kept item of the
    batch (None for the others) and adds the others to the pool: the first item seen is always the one kept. A near
    duplicate has an estimated Jaccard similarity (word shingles) of at least ``near_threshold`` with the kept item;
    when several kept items qualify, the most similar one is named (the earliest on a tie). ``remove(keys)`` takes
    kept items out again.

    Memory per item: its key string in :attr:`keys`, a dict entry (key -> id) while it is kept, its 16-byte digest,
    the compact exact index (:class:`ExactKeys`) and LSH index (:class:`SketchIndex`)."""

    def __init__(self, near_threshold: float | None = 0.85, num_perm: int = 128, shingle: int = 3, seed: int = 1,
                 minhasher: MinHasher | None = None):
        self.near_threshold = near_threshold
        self.exact = ExactKeys()
        self.keys: list[str] = []  # the key of every item id (duplicates too: an id is a position in the stream)
        self._digests = bytearray()  # the exact key of every item id, 16 bytes each
        self._ids: dict[str, int] = {}  # key -> item id, of the items in the pool
        self.minhasher = minhasher or MinHasher(num_perm=num_perm, seed=seed, shingle=shingle)
        self.index = SketchIndex(near_threshold, self.minhasher.num_perm) if near_threshold else None

    def __len__(self) -> int:
        return len(self._ids)

    def _append(self, key: str, digest: bytes) -> int:
        item = len(self.keys)
        self.keys.append(key)
        self._digests += digest
        return item

    def add(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        enc = self.minhasher.hasher.encode(texts)
        sketches = self.minhasher.minhashes(enc) if self.index is not None else [None] * len(enc)
        for k, tk, m in zip(keys, enc.keys, sketches):
            item = self._append(k, tk)
            if self.exact.get(tk) is None:
                self.exact.put(tk, item)
            self._ids[k] = item
            if m is not None:
                self.index.add(item, m)  # type: ignore[union-attr]

    def check(self, keys: Sequence[str], texts: Sequence[str], encoded: Encoded | None = None) -> list[DupMatch | None]:
        """``encoded``: the texts already encoded by a :class:`TextHasher` (saves tokenising them twice)."""
        enc = encoded if encoded is not None else self.minhasher.hasher.encode(texts)
        sketches = self.minhasher.minhashes(enc) if self.index is not None else [None] * len(enc)
        out: list[DupMatch | None] = []
        for k, tk, m in zip(keys, enc.keys, sketches):
            found: DupMatch | None = None
            prev = self.exact.get(tk)
            if prev is not None:
                found = DupMatch("exact", self.keys[prev], 1.0)
            elif m is not None and self.index is not None:
                best: tuple[int, float] | None = None
                for item, sim in self.index.similar(m):
                    if sim >= self.near_threshold and (best is None or sim > best[1]):  # type: ignore[operator]
                        best = (item, sim)
                if best is not None:
                    found = DupMatch("near", self.keys[best[0]], round(best[1], 4))
            item = self._append(k, tk)
            if found is None:
                self.exact.put(tk, item)
                self._ids[k] = item
                if m is not None and self.index is not None:
                    self.index.add(item, m)
            out.append(found)
        return out

    def remove(self, keys: Iterable[str]) -> None:
        """Take kept items out of the pool again (e.g. eliminated by a later check): nothing matches them any more."""
        for k in keys:
            item = self._ids.pop(k, None)
            if item is None:
                continue
            digest = bytes(self._digests[16 * item : 16 * item + 16])
            if self.exact.get(digest) == item:
                self.exact.discard(item)
            if self.index is not None:
                self.index.remove(item)


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
        self.index: SketchIndex | None = None
        self._sizes = np.zeros(0, dtype=np.int64)
        self._numbers = [_numbers(it.text) for it in self.items]
        if near_threshold:
            self.index = SketchIndex(min(candidate_jaccard, near_threshold), num_perm)
            for j, m in enumerate(self.minhasher.minhashes(enc)):
                if m is not None:
                    self.index.add(j, m)
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
        if self.index is not None:
            self.minhasher.minhashes(enc)  # sketched once for the whole batch (and for a later dedup of it)
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
            sketches = self.minhasher.minhashes(enc)
            cands = {i: self.index.similar(m) for i, (m, hit) in enumerate(zip(sketches, out))
                     if m is not None and hit is None}
            cands = {i: c for i, c in cands.items() if c}
            if cands:
                which = np.array(sorted(cands), dtype=np.int64)
                sizes = self._set_sizes(enc, which)
                for i in which.tolist():
                    best = []
                    for j, jac in cands[i]:
                        t_size = float(self._sizes[j])
                        cont = min(1.0, jac * (t_size + sizes[i]) / ((1.0 + jac) * max(t_size, 1.0)))
                        if cont >= self.near_threshold:
                            best.append((-cont, j, jac))
                    for neg, j, jac in sorted(best):  # most contained first (then the first test problem)
                        if self._numbers[j] <= _numbers(texts[i]):
                            out[i] = self._match("near", j, round(-neg, 4),
                                                 f"estimated containment {-neg:.2f} (jaccard {jac:.2f})")
                            break
        return out
