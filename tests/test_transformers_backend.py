"""The transformers backend's own decoding loop (evolkit/backends/transformers.py) on the embedded SmolLM2 model.

Greedy output equals ``model.generate`` on each prompt alone; sampling is reproducible per request whatever the batch,
honours temperature, top_p, stop, max_tokens and n, and reports finish reasons and token counts; shared prompt
prefixes are prefilled once. The sampler's distribution and the prefix tree are checked without the model.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from evolkit.backends.base import Request, Sampling

torch = pytest.importorskip("torch")
tfm = pytest.importorskip("evolkit.backends.transformers")

SYSTEM = {"role": "system", "content": "You are a careful mathematics teacher. Solve the problem step by step."}
QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "What is 12 times 11?",
    "A train travels 60 km in 1.5 hours. What is its average speed in km/h?",
    "Sara reads 15 pages a day. How many pages does she read in a week?",
    "Compute 2 + 2.",
]


def _req(q: str, sampling: Sampling, system: bool = True) -> Request:
    msgs = ([SYSTEM] if system else []) + [{"role": "user", "content": q}]
    return Request(msgs, sampling, task="solve")


# --------------------------------------------------------------------------------------------- without the model
def test_sampler_matches_the_nucleus_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    temperature, top_p, draws = 0.8, 0.9, 40_000
    probs = torch.softmax(logits[0] / temperature, dim=-1)
    order = probs.argsort(descending=True)
    keep = (probs[order].cumsum(0) - probs[order]) < top_p  # the smallest prefix reaching top_p
    expected = torch.zeros_like(probs)
    expected[order[keep]] = probs[order[keep]] / probs[order[keep]].sum()
    u = torch.rand(draws, dtype=torch.float64)
    toks = tfm.sample_tokens(logits.expand(draws, -1), temperature, top_p, u)
    freq = torch.bincount(toks, minlength=6).double() / draws
    assert torch.allclose(freq, expected.double(), atol=0.01)
    assert freq[order[~keep]].sum() == 0  # tokens outside the nucleus never come out
    # temperature 0 is greedy; a tiny top_p keeps only the most likely token
    assert tfm.sample_tokens(logits, 0.0, 1.0, None).tolist() == [0]
    assert set(tfm.sample_tokens(logits.expand(100, -1), 1.0, 1e-6, torch.rand(100)).tolist()) == {0}
    # without top_p the full softmax
    toks = tfm.sample_tokens(logits.expand(draws, -1), 1.0, 1.0, torch.rand(draws, dtype=torch.float64))
    assert torch.allclose(torch.bincount(toks, minlength=6).double() / draws, torch.softmax(logits[0], -1).double(),
                          atol=0.01)


def test_prefix_tree_shares_nested_prefixes_once():
    system = list(range(100, 140))  # 40 tokens shared by all
    shot_a, shot_b = list(range(200, 260)), list(range(300, 350))
    prompts = [system + shot_a + [1, 2, i] for i in range(4)] + [system + shot_b + [7, i, i] for i in range(3)]
    prompts.append(list(prompts[0]))  # a duplicate prompt
    prompts.append([5, 6, 7])  # shares nothing
    tree = tfm.PrefixTree(prompts)
    lens = [tree.prefix_len(i) for i in range(len(prompts))]
    assert lens[:4] == [len(system) + len(shot_a) + 2] * 4
    assert lens[4:7] == [len(system) + len(shot_b) + 1] * 3
    assert lens[7] == lens[0] and lens[8] == 0
    for i, p in enumerate(prompts):  # every prompt keeps at least its last token
        assert lens[i] < len(p)
        node = tree.anchor[i]
        while node >= 0:  # every prefix on the way is a prefix of the prompt
            assert p[: tree.length[node]] == prompts[tree.example[node]][: tree.length[node]]
            node = tree.parent[node]
    # the two few-shot prefixes hang below one system-prompt prefix
    roots = {n for n in range(len(tree.length)) if tree.parent[n] == -1}
    assert [tree.length[n] for n in roots] == [len(system)]


def test_length_groups_cut_where_padding_costs_more_than_a_group():
    assert tfm.length_groups([100] * 6) == [(0, 6)]
    assert tfm.length_groups([200, 210, 220, 230, 240, 1300], overhead=512) == [(0, 5), (5, 6)]
    runs = tfm.length_groups([10, 20, 400, 410, 3000, 3100], overhead=100)
    assert runs == [(0, 2), (2, 4), (4, 6)]
    assert tfm.length_groups([5]) == [(0, 1)]


def test_threads_follow_the_measured_load(monkeypatch):
    assert tfm.threads_for_load(0.0, cores=2) == 2
    assert tfm.threads_for_load(0.2, cores=2) == 2
    assert tfm.threads_for_load(0.5, cores=2) == 1
    assert tfm.threads_for_load(7.0, cores=2) == 1
    assert tfm.threads_for_load(3.0, cores=16) == 13
    monkeypatch.setenv("EVOLKIT_TORCH_THREADS", "1")
    assert tfm.set_cpu_threads() == 1
    assert tfm.LoadMeter().others(min_interval=0.05) >= 0


def test_converted_weights_are_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOLKIT_MODEL_CACHE", str(tmp_path / "cache"))
    a, b, c = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "m.gguf"
    for f, data in ((a, b"same"), (b, b"same"), (c, b"other")):
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(data)
    assert tfm.converted_path(a) == tfm.converted_path(b)  # another checkout or venv reuses the copy
    assert tfm.converted_path(a) != tfm.converted_path(c)
    assert tfm.converted_path(a).parent == tmp_path / "cache"
    assert tfm.converted_path(a).name.endswith(f"-v{tfm.CONVERSION_VERSION}")


# ------------------------------------------------------------------------------------------------- with the model
def test_sampler_never_picks_a_masked_token():
    """A grammar mask leaves most of the vocabulary at -inf: samples come only from what it allows."""
    logits = torch.randn(2000, 50)
    logits[:, [i for i in range(50) if i not in (7, 31)]] = float("-inf")
    for top_p in (1.0, 0.9):
        toks = tfm.sample_tokens(logits, 0.7, top_p, torch.rand(2000, dtype=torch.float64))
        assert set(toks.tolist()) <= {7, 31}
    u = torch.full((2000,), 1.0 - 1e-12, dtype=torch.float64)  # the far end of the distribution
    assert set(tfm.sample_tokens(logits, 1.0, 1.0, u).tolist()) <= {7, 31}


@pytest.fixture(scope="module")
def backend():
    try:
        tfm.smollm2_gguf()
    except RuntimeError as e:
        pytest.skip(str(e))
    be = tfm.TransformersBackend(batch_size=8, threads=int(os.environ.get("EVOLKIT_TORCH_THREADS", 0)) or None)
    be._load()
    assert be.engine == "evolkit"
    return be


def test_greedy_equals_generate_on_each_prompt_alone(backend, monkeypatch):
    greedy = Sampling(temperature=0.0, max_tokens=12, n=1)
    long_q = " ".join(QUESTIONS) * 4 + " What is the first number mentioned?"  # its own length group
    reqs = [_req(q, greedy) for q in QUESTIONS[:4]] + [_req(long_q, greedy)]
    mdl, tok = backend._load()
    got = backend.run(reqs)
    for r, res in zip(reqs, got):
        ids = torch.tensor([backend.encode(r)])
        with torch.inference_mode():
            out = mdl.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        ref = out[0, ids.shape[1]:].tolist()
        ref = ref[: next((k for k, t in enumerate(ref) if t in backend._eos), len(ref))]
        (c,) = res.completions
        assert c.text == tok.decode(ref, skip_special_tokens=True)
        assert c.completion_tokens == len(ref) and c.prompt_tokens == ids.shape[1]
        assert c.finish_reason == ("length" if len(ref) == 12 else "stop")
    # the shared system prompt was prefilled once, not per request
    log = backend.batch_log[-1]
    assert log["prefill_tokens"] < log["prompt_tokens"] - 2 * 20
    # the generated tokens' cache grows as needed
    monkeypatch.setattr(tfm.DecodeState, "initial_capacity", 3)
    assert [r.completions[0].text for r in backend.run(reqs)] == [r.completions[0].text for r in got]


def test_sampling_is_reproducible_per_request_and_honours_the_settings(backend):
    s = Sampling(temperature=0.9, top_p=0.95, max_tokens=10, n=3, seed=5)
    reqs = [_req(q, s) for q in QUESTIONS]
    first = backend.run(reqs)
    again = backend.run(list(reversed(reqs)))[::-1]  # the same requests in another order
    for a, b in zip(first, again):
        assert [c.text for c in a.completions] == [c.text for c in b.completions]
    for res in first:
        assert len(res.completions) == 3
        assert res.completions[0].prompt_tokens > 0 and all(c.prompt_tokens == 0 for c in res.completions[1:])
        for c in res.completions:
            assert 0 < c.completion_tokens <= 10 and c.finish_reason in ("length", "stop")
            assert c.finish_reason == "stop" or c.completion_tokens == 10
    texts = {c.text for res in first for c in res.completions}
    assert len(texts) > len(QUESTIONS)  # samples differ
    other_seed = backend.run([dataclasses.replace(r, sampling=dataclasses.replace(s, seed=6)) for r in reqs])
    assert [c.text for r in other_seed for c in r.completions] != [c.text for r in first for c in r.completions]
    # a later sample offset gives other samples
    shifted = backend.run([dataclasses.replace(reqs[0], sample_offset=3)])
    assert [c.text for c in shifted[0].completions] != [c.text for c in first[0].completions]


def test_stop_strings_cut_the_text(backend):
    free = Sampling(temperature=0.0, max_tokens=24, n=1)
    (res,) = backend.run([_req(QUESTIONS[0], free)])
    text = res.completions[0].text
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]  # a word the model writes
    (cut,) = backend.run([_req(QUESTIONS[0], dataclasses.replace(free, stop=(stop,)))])
    c = cut.completions[0]
    assert c.finish_reason == "stop" and stop not in c.text and text.startswith(c.text)
    assert c.completion_tokens < res.completions[0].completion_tokens


def test_raw_prompts_and_mixed_settings_in_one_call(backend):
    greedy = Sampling(temperature=0.0, max_tokens=6, n=1)
    sampled = Sampling(temperature=0.7, top_p=0.9, max_tokens=6, n=2, seed=1)
    reqs = [Request([{"role": "user", "content": "Q: What is 2 + 3?\nA:"}], greedy, raw=True),
            _req(QUESTIONS[1], sampled), _req(QUESTIONS[3], greedy, system=False)]
    res = backend.run(reqs)
    assert [len(r.completions) for r in res] == [1, 2, 1] and all(r.ok for r in res)
    assert res[0].completions[0].prompt_tokens == len(backend.encode(reqs[0]))


def test_generate_engine_still_works(backend):
    mdl, tok = backend._load()
    be = tfm.TransformersBackend(engine="generate", threads=1)
    be._loaded, be._eos = (mdl, tok), backend._eos
    greedy = Sampling(temperature=0.0, max_tokens=8, n=2)
    reqs = [_req(q, greedy) for q in QUESTIONS[:2]]
    ref = be.run(reqs)
    got = backend.run(reqs)
    assert [[c.text for c in r.completions] for r in ref] == [[c.text for c in r.completions] for r in got]


def test_plan_groups_settings_and_folds_a_small_remainder(backend, monkeypatch):
    a = Sampling(temperature=0.0, max_tokens=4)
    b = Sampling(temperature=0.5, max_tokens=4)
    reqs = [_req(q, a) for q in QUESTIONS] + [_req(q, b) for q in QUESTIONS[:2]] + [_req(QUESTIONS[0] * 3, a)]
    monkeypatch.setattr(backend, "batch_size", 4)
    batches = backend.plan(reqs)
    sizes = sorted(len(idx) for idx, *_ in batches)
    assert sizes == [2, 6]  # six of setting a (4 + a remainder of 2 folded in), two of setting b
    for idx, prompts, _tree, _ids in batches:
        assert len({reqs[i].sampling for i in idx}) == 1
        assert prompts == [backend.encode(reqs[i]) for i in idx]
    assert sorted(i for idx, *_ in batches for i in idx) == list(range(len(reqs)))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_json_schema_constrains_the_answer(backend, temperature):
    """Judges' answers follow their JSON Schema (llguidance masks the logits token by token)."""
    import json

    import jsonschema

    from evolkit.backends.base import Request, Sampling
    from evolkit.judging import irm_schema, prm_schema

    schemas = [prm_schema(3), irm_schema(["A", "B"]), prm_schema(2, allow_neutral=False)]
    reqs = [Request([{"role": "user", "content": f"Judge this, answer in JSON ({i})."}],
                    Sampling(temperature=temperature, max_tokens=200, seed=i), json_schema=sch)
            for i, sch in enumerate(schemas)]
    reqs.append(Request([{"role": "user", "content": "Say hello."}], Sampling(temperature=temperature, max_tokens=8)))
    assert backend.supports_json_schema
    results = backend.run(reqs)
    for r, sch in zip(results, schemas):
        comp = r.completions[0]
        assert comp.finish_reason == "stop", comp.text
        jsonschema.validate(json.loads(comp.text), sch)
    assert not results[-1].completions[0].text.lstrip().startswith("{")  # an unconstrained request stays free
