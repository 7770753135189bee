"""Human review as reviewers live it: the Argilla 2.8 web UI in headless Chromium, against the local review stack.

The run is the fixture run (tests/fixture_run.py, deterministic backend). `evolkit review push` sends its IRM and PRM
judgements; reviewers log in at the real sign-in page, open the dataset link push printed (least certain first), read
the records, answer with clicks and keys, and `evolkit review pull` must return exactly those answers, resolved so that
they override the judge.

Screenshots are kept in ``$EVOLKIT_REVIEW_SCREENSHOTS`` (else a folder under pytest's tmp path, printed at the end);
the figures of the actions measurement go to ``actions.json`` beside them.

Needs Debian's chromium + chromium-driver (scripts/install_test_deps.sh) and selenium (the dev extra). When they are
missing the tests FAIL, so a CI machine without them cannot pass unnoticed; set ``EVOLKIT_SKIP_BROWSER_TESTS=1`` to
skip them on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.fixture_run import build_fixture_run
from tests.reviewer_browser import Reviewer, browser_missing

pytestmark = pytest.mark.slow

SKIP_ENV = "EVOLKIT_SKIP_BROWSER_TESTS"


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    why = browser_missing()
    if why:
        if os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            pytest.skip(f"{why} ({SKIP_ENV} is set)")
        pytest.fail(f"{why}; set {SKIP_ENV}=1 to skip the browser tests on purpose", pytrace=False)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    env = os.environ.get("EVOLKIT_REVIEW_SCREENSHOTS")
    path = Path(env) if env else tmp_path_factory.mktemp("review-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    from tests.plugins import argilla_server as plugin

    plugin._state["review_screenshots"] = path  # printed in the terminal summary
    return path


@pytest.fixture(scope="module")
def env(argilla_env):
    return argilla_env


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    # the PRM pages need teacher solutions of MATH seeds too (one has an [asy] figure), besides the policy's
    return build_fixture_run(tmp_path_factory.mktemp("browser-fixture"),
                             overrides={"prm": {"sources": ["policy", "sft"], "balance": False, "max_solutions": 200}})


def copy_run(src: Path, dst: Path):
    from evolkit.store import RunStore

    shutil.copytree(src, dst)
    return RunStore(dst)


def cli(*argv: str) -> int:
    from evolkit.cli import main

    return main(list(argv))


def pushed_url(out: str) -> str:
    (url,) = re.findall(r"least certain first: (\S+)", out)
    return url


def reviewer(server, n: int, shots: Path) -> Reviewer:
    user, password = server.reviewers[n]
    r = Reviewer(server.url, user, password, shots)
    try:
        r.log_in()
    except BaseException:
        r.close()
        raise
    return r


def plain(text: str) -> str:
    return " ".join(text.split())


def same_text(shown: str, raw: str) -> bool:
    """The rendered text of a field is the raw text (up to the first LaTeX or figure, which render differently)."""
    cut = min([i for i in (raw.find("$"), raw.find("[asy]")) if i >= 0], default=len(raw))
    return plain(shown).startswith(plain(raw[:cut])) and (cut < len(raw) or plain(shown) == plain(raw))


# --------------------------------------------------------------------------------------------------------- IRM
def test_irm_page_ranking_and_discard(env, fixture_run, tmp_path, shots, capsys):
    """Least certain ranking first; instruction, versions, suggestion and guidelines on the page; a ranking and a
    discard submitted by clicks and keys come back from pull exactly and override the judge."""
    from evolkit.review.cli import build_items
    from evolkit.review.stats import review_stats

    run = copy_run(fixture_run, tmp_path / "run")
    name = f"b-{uuid.uuid4().hex[:6]}-irm"
    assert cli("review", "push", str(run.root), "--dataset", "irm", "--name", name, "--budget", "4") == 0
    url = pushed_url(capsys.readouterr().out)
    assert "sort=metadata.review_order.asc" in url
    order = build_items(run, "irm")[:4]  # least certain first
    rows = {r["id"]: r for r in run.load("irm", "irm_rankings")}

    with reviewer(env, 0, shots) as r:
        r.open_from_home(name)  # the reviewer finds the dataset on the home page ...
        r.open(url)  # ... and works from the link push printed: least certain first
        assert plain(r.visible(".pagination__info").text) == "1 of 4"
        first, second = order[0], order[1]
        fields = r.fields()
        assert list(fields)[:2] == ["Original problem", "Version A"]
        assert same_text(r.field_text("Original problem"), first.content["instruction"])
        for v, text in first.content["versions"].items():
            assert same_text(r.field_text(f"Version {v}"), text)
        # the judge's ranking is pre-filled; a slot this instruction has no version for is empty and ranked last
        shown = r.ranking()
        assert {v: k for v, k in shown.items() if v in first.suggestion["ranking"]} == first.suggestion["ranking"]
        empty = set(shown) - set(first.suggestion["ranking"])
        assert all(shown[v] > max(first.suggestion["ranking"].values()) for v in empty)
        guide = r.guidelines()
        assert "Ranking evolved math problems (IRM)" in guide and "Definition" in guide
        assert r.css(".panel h1") and r.css(".panel strong")  # the guidelines' markdown is rendered
        r.screenshot("irm-guidelines")
        r.close_guidelines()
        judge_order = sorted(first.suggestion["ranking"], key=lambda v: (first.suggestion["ranking"][v], v))
        mine = judge_order[::-1]  # the reviewer reverses the judge
        r.rank(mine)
        r.screenshot("irm-ranked")
        r.submit()
        # the next record is the second least certain one; it is discarded
        assert same_text(r.field_text("Original problem"), second.content["instruction"])
        r.discard()

    capsys.readouterr()
    assert cli("review", "pull", str(run.root), "--dataset", "irm", "--no-plot") == 0
    out = capsys.readouterr().out
    assert "answers: 2 new" in out and "sent to review: 4 of" in out
    answers = run.load("review", "irm_answers")
    assert [(a["id"], a["user"], a["status"]) for a in answers] == sorted(
        [(first.id, "reviewer1", "submitted"), (second.id, "reviewer1", "discarded")])
    got = next(a for a in answers if a["id"] == first.id)
    assert json.loads(got["ranking_json"]) == {v: i for i, v in enumerate(mine, 1)}
    reviewed = {x["id"]: x for x in run.load("review", "irm_rankings")}
    assert {v["id"]: v["rank"] for v in reviewed[first.id]["variants"]} == {v: i for i, v in enumerate(mine, 1)}
    assert reviewed[first.id]["label_source"] == "human"
    assert {v["id"]: v["rank"] for v in rows[first.id]["variants"]} != {v: i for i, v in enumerate(mine, 1)}
    assert second.id not in reviewed and len(reviewed) == len(rows) - 1
    (card,) = review_stats(run)
    assert (card["kind"], card["sent"], card["checked"], card["excluded"]) == ("irm", 4, 1, 1)
    assert card["judge_accuracy"] == 0.0  # the one checked ranking was reversed


# --------------------------------------------------------------------------------------------------------- PRM
def three_solutions(fixture_run: Path, dst: Path):
    """A copy of the fixture run whose PRM data is three solutions: the MATH one with an [asy] figure, one the judge
    finds no error in and one where it does (3 steps each)."""
    store = copy_run(fixture_run, dst)
    rows = [r for r in store.load("prm", "prm") if r["labeller"] == "judge"]
    asy = next(r for r in rows if "[asy]" in r["prompt"])
    fine = next(r for r in rows if len(r["completions"]) == 3 and all(r["labels"]) and r is not asy)
    wrong = next(r for r in rows if len(r["completions"]) == 3 and not all(r["labels"]))
    keep = [asy, fine, wrong]
    ids = {r["id"].rsplit(":", 1)[0] for r in keep}
    judgements = [j for j in store.load("prm", "judgements") if j["solution_id"] in ids]
    store.finish("prm", {"prm": keep, "judgements": judgements, "rollouts": []}, {"solutions": 3})
    return store, keep


def first_error(labels: list[bool]) -> int:
    return next((i + 1 for i, ok in enumerate(labels) if not ok), 0)


def planned_answers(rows: list[dict]) -> dict[str, int]:
    """The reviewer's first incorrect step per solution: the [asy] one step 1 (the judge: none), the error-free one
    as the judge (none), the wrong one a step the judge did not pick."""
    asy, fine, wrong = rows
    k = first_error(wrong["labels"])
    return {asy["id"].rsplit(":", 1)[0]: 1, fine["id"].rsplit(":", 1)[0]: 0,
            wrong["id"].rsplit(":", 1)[0]: 3 if k != 3 else 2}


def test_prm_pages_first_incorrect_step_and_actions(env, fixture_run, tmp_path, shots, capsys):
    """The same three solutions reviewed twice: one record per step (the earlier layout) and one record per solution
    (first incorrect step). Both pulls give the reviewer's labels; the per-solution page shows LaTeX, folded figure
    code and every step without scrolling, and needs fewer actions. The figures go to actions.json."""
    from evolkit.review.cli import build_items

    sol_run, rows = three_solutions(fixture_run, tmp_path / "sol")
    step_run, _ = three_solutions(fixture_run, tmp_path / "step")
    plan = planned_answers(rows)
    tag = uuid.uuid4().hex[:6]
    assert cli("review", "push", str(sol_run.root), "--dataset", "prm", "--name", f"b-{tag}-prm-sol") == 0
    sol_url = pushed_url(capsys.readouterr().out)
    assert cli("review", "push", str(step_run.root), "--dataset", "prm", "--name", f"b-{tag}-prm-step",
               "--prm-layout", "step") == 0
    step_url = pushed_url(capsys.readouterr().out)
    sol_items = build_items(sol_run, "prm", "judge", "solution")
    step_items = build_items(step_run, "prm", "judge", "step")
    assert [i.id for i in sol_items] == list(dict.fromkeys(i.metadata["solution"] for i in step_items))
    figures: dict[str, dict] = {"solution": {}, "step": {}}

    # -- before: one record per step ------------------------------------------------------------------------------
    with reviewer(env, 0, shots) as r:
        r.open(step_url)
        for n, it in enumerate(step_items):
            sid, k = it.metadata["solution"], it.metadata["step_number"]
            before = dict(r.actions)
            fields = r.fields()
            assert list(fields) == ["Problem", "Earlier steps (context)", "Step to label"]
            step_el = fields["Step to label"]
            assert f"Step {k} of {it.metadata['n_steps']}" in step_el.text
            assert same_text(step_el.text.split("\n", 1)[1], it.content["step"])
            earlier = fields["Earlier steps (context)"].text
            assert same_text(earlier, it.content["previous_steps"].replace("**", ""))  # "**1.**" renders bold
            assert same_text(fields["Problem"].text, it.content["problem"])
            scroll = not r.in_view(step_el)
            if "[asy]" in it.content["problem"] and k == 1:
                r.screenshot("prm-step-layout-figure")  # what the page first shows
                assert scroll, "expected the step under the raw figure code, below the fold"
            if scroll:  # a person scrolls down to the step before reading it
                r.actions["scrolls"] += 1
                r.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", step_el)
            fe = plan[sid]
            want = "Correct" if fe == 0 or k < fe else "Incorrect"
            r.choose(want)
            r.submit(expect_next=n + 1 < len(step_items))
            fig = figures["step"].setdefault(sid, {"clicks": 0, "keys": 0, "scrolls": 0, "records": 0})
            fig["records"] += 1
            for key in ("clicks", "keys", "scrolls"):
                fig[key] += r.actions[key] - before.get(key, 0)

    # -- after: one record per solution ---------------------------------------------------------------------------
    with reviewer(env, 0, shots) as r:
        r.open(sol_url)
        guide = r.guidelines()
        assert "Finding the first incorrect step (PRM)" in guide and "No incorrect step" in guide
        r.close_guidelines()
        for n, it in enumerate(sol_items):
            before = dict(r.actions)
            fields = r.fields()
            assert list(fields) == ["Problem", "Solution (steps numbered)"]
            solution = fields["Solution (steps numbered)"]
            steps = r.css("p", solution)
            for k, s in enumerate(it.content["steps"], 1):
                assert f"{k}." in solution.text and s.split(":", 1)[-1].strip()[:20] in solution.text
            assert r.css("strong", solution)  # markdown: the step numbers are bold
            scroll = not r.in_view(steps[-1])
            if scroll:
                r.actions["scrolls"] += 1
                r.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", steps[-1])
            problem = fields["Problem"]
            if "[asy]" in it.content["problem"]:
                assert r.css(".katex", problem), "the LaTeX of the problem is not rendered"
                details = r.css("details", problem)
                assert details and details[0].get_attribute("open") is None  # figure code folded
                assert "draw(" not in problem.text and "Figure: Asymptote code" in problem.text
                assert not scroll, "the steps of the figure problem are below the fold"
                r.screenshot("prm-solution-layout-figure")
            assert same_text(problem.text, it.content["problem"])
            suggested = it.suggestion["first_error"]
            assert r.selected() == [f"Step {suggested}" if suggested else "No incorrect step"]
            fe = plan[it.id]
            if fe != suggested:
                r.choose(f"Step {fe}" if fe else "No incorrect step")
            r.submit(expect_next=n + 1 < len(sol_items))
            figures["solution"][it.id] = {key: r.actions[key] - before.get(key, 0) for key in ("clicks", "keys",
                                                                                              "scrolls")}
            figures["solution"][it.id]["records"] = 1

    # -- what pull returns ------------------------------------------------------------------------------------------
    capsys.readouterr()
    assert cli("review", "pull", str(sol_run.root), "--dataset", "prm", "--no-plot") == 0
    answers = sol_run.load("review", "prm_answers")
    assert {(a["id"], a["user"], a["status"], a["first_error"]) for a in answers} == {
        (sid, "reviewer1", "submitted", fe) for sid, fe in plan.items()}
    reviewed = {x["id"].rsplit(":", 1)[0]: x for x in sol_run.load("review", "prm")}
    for row in rows:
        sid, fe = row["id"].rsplit(":", 1)[0], plan[row["id"].rsplit(":", 1)[0]]
        want = [True] * len(row["labels"]) if fe == 0 else [True] * (fe - 1) + [False]
        assert reviewed[sid]["labels"] == want and reviewed[sid]["label_source"] == "human"
        assert reviewed[sid]["completions"] == row["completions"][:len(want)]
    assert sum(reviewed[s]["labels"] != r["labels"] for s, r in
               ((r["id"].rsplit(":", 1)[0], r) for r in rows)) == 2  # the reviewer overrode the judge twice

    assert cli("review", "pull", str(step_run.root), "--dataset", "prm", "--no-plot") == 0
    stepped = {x["id"].rsplit(":", 1)[0]: x for x in step_run.load("review", "prm")}
    for row in rows:
        sid = row["id"].rsplit(":", 1)[0]
        fe = plan[sid]
        assert stepped[sid]["labels"] == [fe == 0 or k + 1 < fe for k in range(len(row["labels"]))]

    total = {lay: {key: sum(f[key] for f in figures[lay].values()) for key in ("clicks", "keys", "scrolls",
                                                                                "records")} for lay in figures}
    for lay in total:
        total[lay]["actions_per_solution"] = round(
            sum(total[lay][k] for k in ("clicks", "keys", "scrolls")) / len(plan), 2)
    (shots / "actions.json").write_text(json.dumps({"per_solution": figures, "total": total}, indent=2))
    print(f"\nactions per solution: step layout {total['step']}, solution layout {total['solution']}")
    assert total["solution"]["actions_per_solution"] < total["step"]["actions_per_solution"]
    assert total["solution"]["scrolls"] == 0


# --------------------------------------------------------------------------------------------------------- two people
def test_two_reviewers_disagree_and_pulls_merge(env, fixture_run, tmp_path, shots, capsys):
    """--min-submitted 2: reviewer1 answers, pull (partial); reviewer2 answers, differently on one record; pull again:
    both answers, each record's agreement and the documented resolution; nothing lost or doubled across pulls."""
    from evolkit.review.cli import build_items

    run = copy_run(fixture_run, tmp_path / "run")
    name = f"b-{uuid.uuid4().hex[:6]}-prm2"
    assert cli("review", "push", str(run.root), "--dataset", "prm", "--name", name, "--budget", "2",
               "--min-submitted", "2") == 0
    out = capsys.readouterr().out
    (shots / "push-budget.txt").write_text(out)
    url = pushed_url(out)
    a, b = build_items(run, "prm", "judge", "solution")[:2]
    fa, fb = a.suggestion["first_error"], b.suggestion["first_error"]
    other = 1 if fa != 1 else 0  # reviewer2's answer on record a differs from reviewer1's (= the judge's)

    with reviewer(env, 0, shots) as r1:
        r1.open(url)
        assert same_text(r1.field_text("Problem"), a.content["problem"])
        r1.submit()  # a: accepts the judge's first incorrect step
        r1.submit(expect_next=False)  # b: accepts too
    capsys.readouterr()
    assert cli("review", "pull", str(run.root), "--dataset", "prm", "--no-plot") == 0
    assert "answers: 2 new, 0 changed, 0 unchanged" in capsys.readouterr().out
    assert len(run.load("review", "prm_answers")) == 2

    with reviewer(env, 1, shots) as r2:
        r2.open(url)  # with two answers needed, reviewer2 still gets both records, least certain first
        assert same_text(r2.field_text("Problem"), a.content["problem"])
        r2.choose(f"Step {other}" if other else "No incorrect step")
        r2.screenshot("prm-second-reviewer")
        r2.submit()
        r2.submit(expect_next=False)
    capsys.readouterr()
    assert cli("review", "pull", str(run.root), "--dataset", "prm", "--no-plot") == 0
    out = capsys.readouterr().out
    (shots / "pull-two-reviewers.txt").write_text(out)
    assert "answers: 2 new, 0 changed, 2 unchanged since the last pull, 0 kept" in out
    assert "PRM records answered by several reviewers (2)" in out
    answers = run.load("review", "prm_answers")
    assert sorted((x["id"], x["user"], x["first_error"]) for x in answers) == sorted(
        [(a.id, "reviewer1", fa), (a.id, "reviewer2", other), (b.id, "reviewer1", fb), (b.id, "reviewer2", fb)])
    log = {x["id"]: x for x in run.load("review", "prm_review")}
    assert log[a.id]["answers"] == {"reviewer1": fa, "reviewer2": other} and log[a.id]["agreement"] == 0.0
    assert log[a.id]["flagged"] and log[a.id]["first_error"] == fa  # tie: the judge's answer is among the tied
    assert log[a.id]["resolution"] == "tie: the judge's answer is among the tied ones"
    assert log[b.id]["agreement"] == 1.0 and log[b.id]["resolution"] == "majority"
    def said(v: int) -> str:
        return f"step {v}" if v else "no incorrect step"

    assert (f"  {a.id}  reviewer1: {said(fa)}; reviewer2: {said(other)} | agreement 0.000 | {said(fa)} "
            f"(tie: the judge's answer is among the tied ones, flagged)") in out
    assert f"  {b.id}  reviewer1: {said(fb)}; reviewer2: {said(fb)} | agreement 1.000 | {said(fb)} (majority)" in out
    rep = run.stage_info("review")["summary"]["prm"]
    (pair,) = rep["annotators"]
    assert (pair["solutions"], pair["agreement"]) == (2, 0.5)

    # a third pull with nothing new changes nothing
    assert cli("review", "pull", str(run.root), "--dataset", "prm", "--no-plot") == 0
    assert "answers: 0 new, 0 changed, 4 unchanged" in capsys.readouterr().out
    def same(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in x.items() if k != "last_pulled"} for x in rows]

    assert same(run.load("review", "prm_answers")) == same(answers)
