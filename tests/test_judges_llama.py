"""The judges on real text: the IRM ranking judge, the PRM step judge and the evolution check, run on the embedded model
(SmolLM2-135M) through llama.cpp's server, with structured output (the answer's JSON Schema sent as response_format)
and without. With it, >= 95% of the answers parse; the rates of both are printed. (The model is weak: this measures
whether its answers can be read, not whether they are right.)"""

from __future__ import annotations

import asyncio
import random

import pytest

from evolkit.backends.base import Sampling
from evolkit.backends.openai import OpenAIBackend
from evolkit.judging import JudgeParseError, yes_no
from evolkit.seeds import read_rows
from evolkit.settings import data_dir
from evolkit.stages import irm, prm

pytestmark = pytest.mark.slow
N = 12


def _backend(srv) -> OpenAIBackend:
    return OpenAIBackend(srv.model, base_url=srv.base_url, max_concurrency=4, max_retries=2, request_timeout=300)


def _questions(n: int) -> list[str]:
    path = data_dir() / "gsm8k" / "train.jsonl"
    rows = [r["question"] for _, r in read_rows(path)][:200]
    return random.Random(0).sample(rows, n)


def _rate(ok: list[bool]) -> float:
    return sum(ok) / len(ok)


def _run(backend: OpenAIBackend, requests: list) -> list:
    return asyncio.run(backend.generate(requests))


def test_irm_judge_answers_parse_with_structured_output(llama_server, capsys) -> None:
    qs = _questions(3 * N)
    items = [(qs[3 * i], {"A": qs[3 * i + 1], "B": qs[3 * i + 2], "C": qs[3 * i]}) for i in range(N)]
    rates = {}
    for structured in (False, True):
        cfg = irm.Config(structured_output=structured)
        reqs = []
        for original, variants in items:
            r = irm.judge_request(original, variants, ["A", "B", "C"], cfg)
            r.sampling = Sampling(temperature=0.0, max_tokens=160)
            reqs.append(r)
        ok = []
        for res in _run(_backend(llama_server), reqs):
            try:
                ok.append(res.ok and bool(irm.parse_irm_judgement(res.completions[0].text, ["A", "B", "C"])))
            except JudgeParseError:
                ok.append(False)
        rates[structured] = _rate(ok)
    with capsys.disabled():
        print(f"\nIRM judge, answers that parse: without structured output {rates[False]:.0%}, with {rates[True]:.0%}")
    assert rates[True] >= 0.95


def test_prm_judge_answers_parse_with_structured_output(llama_server, capsys) -> None:
    rows = prm.load_labelled_steps(data_dir() / "prm800k" / "phase1_test.stepwise-critic.jsonl")
    rows = [r for r in rows if 1 <= len(r["prefix"]) <= 4][:N]
    rates = {}
    for structured in (False, True):
        cfg = prm.Config(structured_output=structured)
        items = [(str(i), r["instruction"], r["prefix"] + [r["step"]]) for i, r in enumerate(rows)]
        judged = asyncio.run(prm.judge_steps(_backend(llama_server), items, cfg,
                                             Sampling(temperature=0.0, max_tokens=200), show_progress=False))
        rates[structured] = _rate([j["ok"] for j in judged.values()])
    with capsys.disabled():
        print(f"\nPRM judge, answers that parse: without structured output {rates[False]:.0%}, with {rates[True]:.0%}")
    assert rates[True] >= 0.95


def test_evolution_check_answers_parse_with_structured_output(llama_server, capsys) -> None:
    from evolkit import prompts
    from evolkit.backends.base import Request
    from evolkit.judging import yes_no_schema

    qs = _questions(2 * N)
    rates = {}
    for structured in (False, True):
        reqs = [Request([{"role": "user", "content": prompts.render("check_info_gain", parent=qs[2 * i],
                                                                      child=qs[2 * i + 1])}],
                        Sampling(temperature=0.0, max_tokens=48), json_schema=yes_no_schema() if structured else None)
                for i in range(N)]
        rates[structured] = _rate([res.ok and yes_no(res.completions[0].text) is not None
                                   for res in _run(_backend(llama_server), reqs)])
    with capsys.disabled():
        print(f"\nEvolution check, answers that parse: without structured output {rates[False]:.0%}, "
              f"with {rates[True]:.0%}")
    assert rates[True] >= 0.95
