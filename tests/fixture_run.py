"""A small run folder with every published dataset, for the publish and TRL-format tests.

It runs the real pipeline (``evolkit.pipeline.run_all``) on the deterministic backend at tiny sizes: seeds, sft (with a
six-row CC BY-SA open-domain file, so the license logic has something to do) and every later stage that is registered
in ``evolkit.stages.STAGE_CONFIGS`` (evolve, irm, prm). A stage that is not registered gets a synthetic stand-in made
from the record models (``evolkit.records``) and written through the run store as a stage would (``store.finish``), so
the publisher and the TRL-format tests always cover all six configs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evolkit.records import EvolExample, IRMPair, IRMRanking, PRMExample, RankedVariant
from tests.doubles import fake_backend

OPEN_DOMAIN = [
    {"instruction": f"Open question {i}: why is the sky blue at noon on day {i}?", "context": "" if i % 2 else
     f"Context paragraph {i}.", "response": f"Because of Rayleigh scattering (answer {i})."}
    for i in range(6)
]


DECONTAM_TEST = [{"question": "A benchmark test problem that no seed resembles: how many quarks fit in a teacup?"}]

#: Small settings of the later stages (only those registered are run).
STAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "evolve": {"rounds": [{"pool": "seeds", "children_per_parent": 1.0}, {"pool": "previous",
                                                                          "children_per_parent": 1.0}], "k": 3},
    "irm": {"n_instructions": 12},
    "prm": {"max_solutions": 24, "policy_max_problems": 20},
}


def run_config(root: Path, n: int = 15, open_domain: bool = True,
               overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The fixture's run config; ``overrides`` (stage -> settings) replace settings of the later stages."""
    from evolkit.stages import STAGE_CONFIGS

    od_path = root / "open_domain.jsonl"
    od_path.write_text("".join(json.dumps(r) + "\n" for r in OPEN_DOMAIN))
    test_path = root / "benchmark_test.jsonl"
    test_path.write_text("".join(json.dumps(r) + "\n" for r in DECONTAM_TEST))
    sft: dict[str, Any] = {"k": 2, "fewshot": 1}
    if open_domain:
        sft["open_domain"] = {"path": str(od_path), "n": 3, "name": "dolly_open_qa", "license": "CC-BY-SA-3.0"}
    stages: dict[str, Any] = {"sft": sft}
    for name, settings in STAGE_SETTINGS.items():
        if name in STAGE_CONFIGS:
            stages[name] = json.loads(json.dumps(settings)) | (overrides or {}).get(name, {})
    if "evolve" in stages:
        stages["evolve"]["decontamination"] = {"test_files": [str(test_path)]}
    return {
        "name": "fixture", "seed": 0, "backend": fake_backend("det-teacher"),
        # The recipe's roles: a second evolver model for the IRM variants, the policy whose solutions the PRM labels.
        "evolver_backend": fake_backend("det-evolver-2"), "policy_backend": fake_backend("det-policy"),
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256},
        "seeds": [{"source": "gsm8k", "n": n}, {"source": "math", "n": n}],
        "stages": stages,
    }


def _plot(path: Path, values: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.bar(range(len(values)), values)
    ax.set_xlabel("round")
    fig.savefig(path, metadata={"Software": None})  # no version string: the same bytes every time
    plt.close(fig)


def add_synthetic_stages(run_dir: Path, stages: Iterable[str] = ("evolve", "irm", "prm")) -> None:
    """Stand-ins for ``evolve/evol``, ``irm/irm_rankings`` + ``irm/irm_pairs`` and ``prm/prm`` (those named)."""
    from evolkit.store import RunStore

    stages = set(stages)
    store = RunStore(run_dir)
    rng = random.Random(7)
    seeds = store.load("seeds", "problems")
    evol: list[dict[str, Any]] = []
    for s in seeds[:24]:
        parent = s["id"]
        for rnd in (1, 2):
            for direction, op in (("upward", "add_constraints"), ("downward", "simplify")):
                if direction == "downward" and rnd == 2:
                    continue
                eid = f"{s['id']}~r{rnd}{direction[0]}"
                agreement = rng.choice([0.5, 0.75, 1.0])
                evol.append(EvolExample(
                    id=eid, question=f"[{op} r{rnd}] {s['question']}", pseudo_gold=None if agreement < 0.6 else
                    str(rng.randint(1, 99)), agreement=agreement, n_samples=4,
                    solutions=[f"Step 1: think.\nStep 2: The answer is {rng.randint(1, 99)}."], root_id=s["id"],
                    parent_id=parent, round=rnd, operation=op, direction=direction, model="det-teacher",
                    flagged=agreement < 0.6,
                ).row())
            parent = f"{s['id']}~r{rnd}u"
    if "evolve" not in stages:
        evol = store.load("evolve", "evol") if store.has_output("evolve", "evol") else evol
    rounds = [{"round": r, "generated": sum(e["round"] == r for e in evol) + 2,
               "kept": sum(e["round"] == r for e in evol), "dropped_unsolvable": 2} for r in (1, 2)]
    if "evolve" in stages:
        _plot(store.stage_dir("evolve") / "growth.png", [len(seeds)] + [x["kept"] for x in rounds])
        store.finish("evolve", {"evol": evol}, {
            "rounds": rounds, "evolved": len(evol),
            "decontamination": {"method": "13-gram overlap (synthetic fixture)", "checked": len(evol), "removed": 0},
        })

    by_root: dict[str, list[dict[str, Any]]] = {}
    for e in evol:
        by_root.setdefault(e["root_id"], []).append(e)
    rankings, pairs = [], []
    for n, (root, variants) in enumerate(sorted(by_root.items())):
        ranked = [RankedVariant(id=v["id"], text=v["question"], evolver="det-teacher", operation=v["operation"],
                                rank=i + 1, definition=rng.random(), precision=rng.random(), integrity=rng.random())
                  for i, v in enumerate(variants)]
        src = "human" if n % 4 == 0 else "model"
        rk = IRMRanking(id=f"rank-{root}", instruction_id=root, instruction=variants[0]["question"], variants=ranked,
                        judge="det-judge", label_source=src, agreement=1.0 if src == "human" else None)
        rankings.append(rk.row())
        for a in ranked:
            for b in ranked:
                if a.rank < b.rank:
                    pairs.append(IRMPair(id=f"{rk.id}:{a.rank}>{b.rank}", ranking_id=rk.id, chosen=a.text,
                                         rejected=b.text, margin=float(b.rank - a.rank), label_source=src).row())
    if "irm" in stages:
        store.finish("irm", {"irm_rankings": rankings, "irm_pairs": pairs},
                     {"rankings": len(rankings), "pairs": len(pairs)})

    prm = []
    for n, s in enumerate(store.load("sft", "solutions")):
        steps = s["steps"] or [s["text"]]
        if not s["text"].strip():
            continue
        ok = s["verdict"] == "correct"
        bad = len(steps) - 1 if not ok else None
        labels = [bad is None or i < bad for i in range(len(steps))]
        prm.append(PRMExample(
            id=f"prm-{s['problem_id']}-{s['sample_index']}", problem_id=s["problem_id"],
            prompt=f"Solve step by step: problem {s['problem_id']}", completions=steps, labels=labels,
            labeller="human" if n % 5 == 0 else "judge", label_source="human" if n % 5 == 0 else "model",
            step_scores=[1.0 if x else 0.0 for x in labels], final_correct=ok,
        ).row())
    if "prm" in stages:
        store.finish("prm", {"prm": prm}, {"rows": len(prm), "positive_steps": sum(sum(p["labels"]) for p in prm)})


def build_fixture_run(root: Path, n: int = 15, open_domain: bool = True,
                      overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """The fixture run in ``root/run`` (built once per ``root``): real stages where registered, stand-ins otherwise."""
    run_dir = root / "run"
    manifest = run_dir / "manifest.json"
    if manifest.exists() and {"prm", "irm", "evolve"} <= set(json.loads(manifest.read_text())["stages"]):
        return run_dir
    root.mkdir(parents=True, exist_ok=True)
    from evolkit.config import RunConfig
    from evolkit.pipeline import run_all

    cfg = run_config(root, n, open_domain, overrides)
    run_all(RunConfig.model_validate(cfg), run_dir, show_progress=False)
    missing = [s for s in ("evolve", "irm", "prm") if s not in cfg["stages"]]
    if missing:
        add_synthetic_stages(run_dir, missing)
    return run_dir


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under a folder (to check a folder was left untouched)."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
