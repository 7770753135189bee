"""The dataset card (``README.md`` of the published repo), rendered from ``hub_cards/dataset_card.md.jinja``.

:func:`make_card` gathers what the card states from the run store and the collected configs: configs and their
licenses, stages and their summaries, models and sampling, seed sources, growth per round, how many steps the
solutions have, who wrote and who labelled the PRM data, which evolvers the IRM rankings compare, review status,
decontamination. Paths are shown relative to the data folder (``{data}/...``) or as a file name
(:func:`public_paths`): a card never holds the publisher's absolute paths.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..records import _resource_dir
from ..review.stats import review_stats
from ..settings import data_dir
from ..store import RunStore
from .specs import CONFIG_SPECS, ConfigData, PublishError, PublishOptions, short

CARD_DIR = _resource_dir("hub_cards")
CARD_TEMPLATE = "dataset_card.md.jinja"

# ---------------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------------

#: An absolute POSIX path of at least two parts inside a text (not the tail of a URL or of a relative path).
_ABS_PATH = re.compile(r"(?<![\w.~:/{}-])/[^\s/\"'`,;()\[\]<>|*?]+(?:/[^\s/\"'`,;()\[\]<>|*?]+)+")


def public_path(path: str, run_dir: Path | None = None) -> str:
    """A local path as a card may show it: ``{data}/...`` under the data folder, relative to the run folder inside
    it, else the file name only."""
    p = Path(path)
    for base, label in ((data_dir(), "{data}"), (run_dir, None)):
        if base is None:
            continue
        for b in {base, base.resolve()}:
            try:
                rel = p.relative_to(b)
            except ValueError:
                continue
            return f"{label}/{rel}" if label else str(rel)
    return p.name


def _local(path: str) -> bool:
    """Whether an absolute path names a place on this machine: its top folder exists (``/tmp/...``, ``/home/...``,
    not the ``/v1/chat/completions`` of a URL in an error message)."""
    return Path("/" + path.lstrip("/").split("/", 1)[0]).exists()


def public_paths(obj: Any, run_dir: Path | None = None) -> Any:
    """``obj`` (JSON-like) with every absolute local path inside its strings replaced by :func:`public_path`."""
    if isinstance(obj, dict):
        return {k: public_paths(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [public_paths(v, run_dir) for v in obj]
    if isinstance(obj, str) and "/" in obj:
        return _ABS_PATH.sub(lambda m: public_path(m.group(0), run_dir) if _local(m.group(0)) else m.group(0), obj)
    return obj


# ---------------------------------------------------------------------------------------------------------------------
# Licenses and summaries
# ---------------------------------------------------------------------------------------------------------------------

HUB_LICENSES = {
    "mit", "apache-2.0", "bsd-3-clause", "bsd-2-clause", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-nd-4.0",
    "gpl-3.0", "lgpl-3.0", "odc-by", "odbl", "pddl", "openrail", "llama3", "gemma", "other", "unknown",
}
#: Licenses of the seed sources (both are MIT).
SEED_LICENSES = {"gsm8k": "mit", "math": "mit"}
SEED_HUB_IDS = {"gsm8k": "openai/gsm8k", "math": "EleutherAI/hendrycks_math"}
KNOWN_HUB_IDS = {"dolly": "databricks/databricks-dolly-15k"}
LICENSE_NAMES = {"mit": "MIT", "cc-by-sa-3.0": "CC BY-SA 3.0", "cc-by-sa-4.0": "CC BY-SA 4.0",
                 "apache-2.0": "Apache 2.0", "cc-by-4.0": "CC BY 4.0", "cc-by-3.0": "CC BY 3.0", "cc0-1.0": "CC0 1.0"}


def hub_license_id(name: str | None) -> str:
    if not name:
        return "unknown"
    lid = name.strip().lower().replace("_", "-").replace(" ", "-")
    return lid if lid in HUB_LICENSES else "other"


def _share_alike(lid: str) -> bool:
    return "-sa-" in f"-{lid}-"


def _size_category(n: int) -> str:
    for limit, cat in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                       (10_000_000, "1M<n<10M")):
        if n < limit:
            return cat
    return "10M<n<100M"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return "" if v is None else str(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _flat(v: Any) -> bool:
    return _is_scalar(v) or (isinstance(v, dict) and all(_is_scalar(x) for x in v.values())) or (
        isinstance(v, list) and all(_is_scalar(x) for x in v))


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "-"
    return _fmt(v)


def summary_items(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage summary as card items: scalars, flat dicts (inline) and lists of records (tables).

    Table columns nested deeper than one level are left out (``provenance.json`` has every figure)."""
    items = []
    for k, v in summary.items():
        if k in ("plots", "plot") or v is None or v == "":
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = [c for c in dict.fromkeys(c for x in v for c in x) if all(_flat(x.get(c)) for x in v)]
            items.append({"key": k, "kind": "table", "columns": cols,
                          "rows": [[_cell(x.get(c)) for c in cols] for x in v]})
            continue
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            cols = [c for c in dict.fromkeys(c for x in v.values() for c in x)
                    if all(_flat(x.get(c)) for x in v.values())]
            items.append({"key": k, "kind": "table", "columns": ["", *cols],
                          "rows": [[str(a)] + [_cell(x.get(c)) for c in cols] for a, x in v.items()]})
            continue
        if _is_scalar(v):
            items.append({"key": k, "kind": "scalar", "value": _fmt(v)})
        elif isinstance(v, dict) and all(_is_scalar(x) for x in v.values()):
            items.append({"key": k, "kind": "scalar", "value": ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())})
        else:
            items.append({"key": k, "kind": "scalar", "value": short(_inline(v), 400)})
    return items


def _inline(v: Any) -> str:
    """A nested value on one line: ``a: 1, b: (c: 2, d: 3)``."""
    if isinstance(v, dict):
        return ", ".join(f"{a}: {'(' + _inline(b) + ')' if isinstance(b, (dict, list)) and b else _inline(b)}"
                         for a, b in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_inline(x) for x in v) or "-"
    return _fmt(v)


def _find_key(obj: Any, needle: str) -> list[tuple[str, Any]]:
    hits = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if needle in str(k).lower():
                hits.append((str(k), v))
            else:
                hits.extend(_find_key(v, needle))
    return hits


def _growth(datasets: dict[str, ConfigData]) -> list[dict[str, Any]]:
    """Rows per evolution round from the published data (round 0: the seed problems' SFT rows)."""
    rounds: dict[int, dict[str, Any]] = {}
    for r in datasets["sft"].rows if "sft" in datasets else []:
        if r.get("kind") == "math":
            d = rounds.setdefault(int(r.get("round") or 0), {"sft_rows": 0})
            d["sft_rows"] = d.get("sft_rows", 0) + 1
    for r in datasets["evol"].rows if "evol" in datasets else []:
        d = rounds.setdefault(int(r["round"]), {"sft_rows": 0})
        d["evolved"] = d.get("evolved", 0) + 1
        d[r["direction"]] = d.get(r["direction"], 0) + 1
        d["flagged"] = d.get("flagged", 0) + int(bool(r.get("flagged")))
        d["with_pseudo_gold"] = d.get("with_pseudo_gold", 0) + int(r.get("pseudo_gold") is not None)
        d.setdefault("_agreement", []).append(float(r["agreement"]))
    out, total = [], 0
    for rnd in sorted(rounds):
        d = rounds[rnd]
        ag = d.pop("_agreement", [])
        added = d.get("evolved", d.get("sft_rows", 0)) if rnd else d.get("sft_rows", 0)
        total += added
        out.append({"round": rnd, "sft_rows": d.get("sft_rows", 0), "evolved": d.get("evolved", 0),
                    "upward": d.get("upward", 0), "downward": d.get("downward", 0), "flagged": d.get("flagged", 0),
                    "with_pseudo_gold": d.get("with_pseudo_gold", 0),
                    "mean_agreement": round(sum(ag) / len(ag), 3) if ag else None, "cumulative": total})
    return out


def _review_stats(d: ConfigData) -> dict[str, Any]:
    rows = d.rows
    st: dict[str, Any] = {"config": d.name, "rows": len(rows), "source": d.source,
                          "reviewed_stage": d.source.startswith("review/")}
    if rows and "label_source" in rows[0]:
        human = sum(r.get("label_source") == "human" for r in rows)
        st["human_share"] = human / len(rows)
        st["human_rows"] = human
        # PRM rows with some (not all) steps resolved by reviewers keep label_source model, labeller "<x>+human"
        st["partial_rows"] = sum(r.get("label_source") != "human" and "+human" in str(r.get("labeller") or "")
                                 for r in rows)
    # Reviewer agreement, over human-labelled rows (model rows' `agreement` is the judge's own consistency and
    # evol's is teacher self-consistency: neither is review agreement).
    ag = [r["agreement"] for r in rows if r.get("label_source") == "human" and isinstance(r.get("agreement"),
                                                                                          (int, float))]
    if ag:
        st["agreement"] = sum(ag) / len(ag)
    return st


def config_licenses(d: ConfigData, od_licenses: dict[str, str]) -> dict[str, Any]:
    """The license a config must carry, from the sources of its rows: MIT seeds, plus any open-domain source's
    license."""
    sources: dict[str, int] = {}
    for r in d.rows:
        s = r.get("source")
        if s:
            sources[s] = sources.get(s, 0) + 1
    parts = []
    for s, n in sorted(sources.items()):
        lid = od_licenses.get(s) or SEED_LICENSES.get(s) or "mit"  # other sources derive from the MIT seeds
        parts.append({"source": s, "rows": n, "license": lid, "license_name": LICENSE_NAMES.get(lid, lid)})
    if not parts:
        parts = [{"source": "gsm8k/math (derived)", "rows": len(d.rows), "license": "mit", "license_name": "MIT"}]
    lids = {p["license"] for p in parts}
    sa = sorted(x for x in lids if _share_alike(x))
    if sa:
        lid = sa[-1]
    elif lids == {"mit"}:
        lid = "mit"
    else:
        lid = sorted(lids - {"mit"})[0]
    sa_rows = sum(p["rows"] for p in parts if _share_alike(p["license"]))
    return {"license": lid, "license_name": LICENSE_NAMES.get(lid, lid), "parts": parts, "share_alike": bool(sa),
            "share_alike_rows": sa_rows}


def _open_domain_licenses(store: RunStore) -> dict[str, str]:
    out = {}
    for _stage, info in store.manifest()["stages"].items():
        s = info.get("summary") or {}
        if s.get("open_domain_source") and s.get("open_domain_license"):
            out[s["open_domain_source"]] = hub_license_id(s["open_domain_license"])
    return out


def _models(cfg: dict[str, Any], by: dict[str, ConfigData]) -> list[dict[str, Any]]:
    out = []
    main_roles = ["solver", "evolver"] + [r for r, k in (("judge", "judge_backend"),) if not cfg.get(k)]
    for role, key in ((f"main ({', '.join(main_roles)})", "backend"), ("judge", "judge_backend"),
                      ("second evolver", "evolver_backend")):
        b = cfg.get(key)
        if b:
            out.append({"role": role, "kind": b.get("kind"), "model": b.get("model")})
    for key, b in cfg.items():  # any other role a config names (e.g. a policy backend)
        if key.endswith("_backend") and key not in ("judge_backend", "evolver_backend") and isinstance(b, dict):
            out.append({"role": key.removesuffix("_backend").replace("_", " "), "kind": b.get("kind"),
                        "model": b.get("model")})
    seen: dict[str, set[str]] = {}
    for name, col in (("sft", "model"), ("evol", "model"), ("irm_rankings", "judge"), ("prm", "labeller"),
                      ("prm", "solution_model"), ("prm", "labeller_model")):
        if name in by:
            vals = {str(r.get(col)) for r in by[name].rows if r.get(col)}
            if vals:
                seen[f"{name}.{col}"] = vals
    for k, vals in seen.items():
        out.append({"role": f"in data ({k})", "kind": "", "model": ", ".join(sorted(vals))})
    return out


def _seed_rows(cfg: dict[str, Any], store: RunStore) -> list[dict[str, Any]]:
    counts = (store.stage_info("seeds").get("summary") or {}).get("by_source", {})
    out = []
    for s in cfg.get("seeds") or []:
        src = s.get("source")
        where = s.get("hub_id") or s.get("path") or "evolkit's packaged sample (evolkit/data)"
        out.append({"source": src, "where": where, "split": s.get("split", "train"), "n": s.get("n") or "all",
                    "used": counts.get(src, ""), "license": LICENSE_NAMES.get(SEED_LICENSES.get(src, ""), "see source"),
                    "hub_id": s.get("hub_id") or SEED_HUB_IDS.get(src)})
    return out


def render_card(context: dict[str, Any], card_data: Any, template_dir: Path = CARD_DIR) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    env.filters["cell"] = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")
    try:
        return env.get_template(CARD_TEMPLATE).render(card_data=card_data.to_yaml(), **context)
    except jinja2.TemplateError as e:
        raise PublishError(f"{template_dir / CARD_TEMPLATE}:{getattr(e, 'lineno', '?')}: card template error: "
                           f"{getattr(e, 'message', e)}") from None


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=120).rstrip()



# ---------------------------------------------------------------------------------------------------------------------
# What the recipe's data says about itself: steps per solution, PRM solution/label models, IRM evolvers, sft choice
# ---------------------------------------------------------------------------------------------------------------------


def _int_key(k: Any) -> tuple[int, str]:
    try:
        return int(k), str(k)
    except (TypeError, ValueError):
        return 10**9, str(k)


def steps_tables(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One small table per (stage, source) from the stage summaries' ``steps_per_solution``:
    ``{source: {"n": int, "mean": float, "hist": {"1": count, ...}}}`` (absent in older runs: no tables)."""
    out = []
    for stage, info in manifest.items():
        sps = (info.get("summary") or {}).get("steps_per_solution")
        if not isinstance(sps, dict):
            continue
        for source, d in sps.items():
            if not isinstance(d, dict) or not isinstance(d.get("hist"), dict):
                continue
            hist = sorted(d["hist"].items(), key=lambda kv: _int_key(kv[0]))
            one = sum(int(c) for k, c in hist if _int_key(k)[0] <= 1)
            n = d.get("n") if d.get("n") is not None else sum(int(c) for _, c in hist)
            out.append({"stage": stage, "source": str(source), "n": n, "mean": d.get("mean"),
                        "columns": ["steps", *[str(k) for k, _ in hist]],
                        "rows": [["solutions", *[str(c) for _, c in hist]]],
                        "single_step_share": (one / n) if n else None})
    return out


def _as_list(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def prm_provenance(manifest: dict[str, Any], by: dict[str, ConfigData]) -> dict[str, Any] | None:
    """Which solutions the PRM data labels and who labelled them: the prm stage summary's ``solution_source``,
    ``solution_model`` and ``labeller_models``, and the published rows' ``source`` / ``solution_model`` /
    ``labeller`` / ``labeller_model`` (counted). None when there is no PRM data."""
    s = (manifest.get("prm") or {}).get("summary") or {}
    rows = by["prm"].rows if "prm" in by else []
    if not s and not rows:
        return None
    counts: Counter = Counter((r.get("source") or "", r.get("solution_model") or "", r.get("labeller") or "",
                               r.get("labeller_model") or "") for r in rows)
    sources = _as_list(s.get("solution_source")) or sorted({k[0] for k in counts if k[0]})
    labellers = s.get("labeller_models") if isinstance(s.get("labeller_models"), dict) else {}
    return {
        "solution_source": sources,
        "solution_model": _as_list(s.get("solution_model")) or sorted({k[1] for k in counts if k[1]}),
        "labeller_models": {str(k): str(v) for k, v in labellers.items() if v},
        "policy": "policy" in sources,
        "known": bool(sources),
        "rows": [{"source": a or "-", "solution_model": b or "-", "labeller": c or "-", "labeller_model": d or "-",
                  "rows": n} for (a, b, c, d), n in sorted(counts.items())],
        "named_in_rows": any(k[1] or k[3] for k in counts),
    }


def irm_provenance(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The evolvers the IRM rankings compare (irm summary ``evolvers``, ``single_evolver``); None without IRM data."""
    info = manifest.get("irm")
    if not info:
        return None
    s = info.get("summary") or {}
    evolvers = _as_list(s.get("evolvers"))
    single = s.get("single_evolver")
    declared = single is not None
    # Older runs name evolvers "<prompt style>:<model>": two styles of one model are one evolver model.
    models = sorted({e.split(":", 1)[1] for e in evolvers if ":" in e})
    if not declared and evolvers:
        single = len(evolvers) < 2 or (len(models) == 1 and all(":" in e for e in evolvers))
    return {"evolvers": evolvers, "single_evolver": bool(single), "declared": declared,
            "models": models if models and all(":" in e for e in evolvers) else evolvers}


def sft_choice(by: dict[str, ConfigData], options: PublishOptions) -> dict[str, Any] | None:
    """Whether the evolved problems' solutions are in the published ``sft`` config (the publish setting)."""
    if "sft" not in by:
        return None
    info = dict(by["sft"].info)
    info.setdefault("include_evolved", options.sft_include_evolved)
    info.setdefault("evolved_available", 0)
    info.setdefault("evolved_included", 0)
    return info


# ---------------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Card:
    text: str
    license: str  # the repo's license id
    licenses: dict[str, dict[str, Any]]  # per config, see config_licenses()


def make_card(store: RunStore, cfg: dict[str, Any], datasets: list[ConfigData], options: PublishOptions,
              run: dict[str, Any], plots: dict[str, list[str]], columns: dict[str, list[str]],
              configs_yaml: list[dict[str, Any]], repo_id: str | None = None) -> Card:
    """Render the card of a publish: ``cfg`` is the run config (secrets scrubbed), ``columns`` each config's Parquet
    columns, ``configs_yaml`` the card's ``configs`` metadata (data files per split)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    cfg = public_paths(cfg, store.root)
    by = {d.name: d for d in datasets}
    od = _open_domain_licenses(store)
    lic = {d.name: config_licenses(d, od) for d in datasets}
    lids = {x["license"] for x in lic.values()}
    sa = sorted(x for x in lids if _share_alike(x))
    repo_license = sa[-1] if sa else ("mit" if lids == {"mit"} else sorted(lids - {"mit"})[0])

    manifest = public_paths(store.manifest()["stages"], store.root)
    stages = [{"name": n, "finished_at": i.get("finished_at"), "seconds": i.get("seconds"),
               "outputs": {k: v.get("rows") for k, v in (i.get("outputs") or {}).items()},
               "summary": summary_items({k: v for k, v in (i.get("summary") or {}).items()
                                         if k != "steps_per_solution"}),
               "plots": plots.get(n, []), "config": (cfg.get("stages") or {}).get(n)}
              for n, i in manifest.items() if i.get("status") == "done"]
    seeds = _seed_rows(cfg, store)
    source_datasets = sorted({s["hub_id"] for s in seeds if s["hub_id"]} | {
        next((h for k, h in KNOWN_HUB_IDS.items() if k in src), src) for src in od
        if any(p["source"] == src for x in lic.values() for p in x["parts"])})
    human = any(r.get("human_rows") for r in [_review_stats(d) for d in datasets])
    tags = list(dict.fromkeys(["math", "reasoning", "synthetic", "evol-instruct", "wizardmath", "rleif", "evolkit",
                               *options.tags]))
    card_data = DatasetCardData(
        license=repo_license, language=options.language, pretty_name=options.pretty_name or f"evolkit: {run['name']}",
        task_categories=["text-generation", "question-answering"], size_categories=[
            _size_category(max(len(d.rows) for d in datasets))], tags=tags, source_datasets=source_datasets or None,
        annotations_creators=["machine-generated", *(["expert-generated"] if human else [])],
        language_creators=["machine-generated", "found"], multilinguality=["monolingual"], configs=configs_yaml,
    )
    decontam = [{"stage": n, "key": k, "enabled": not (isinstance(v, dict) and v.get("enabled") is False),
                 "entries": summary_items(v if isinstance(v, dict) else {k: v})}
                for n, i in manifest.items() for k, v in _find_key(i.get("summary") or {}, "decontam")]
    rs = (manifest.get("review") or {}).get("summary") or {}
    review_summary = ([{"kind": k, "entries": summary_items(v)} for k, v in rs.items() if isinstance(v, dict)]
                      + ([{"kind": "", "entries": summary_items({k: v for k, v in rs.items()
                                                                 if not isinstance(v, dict)})}]
                         if any(not isinstance(v, dict) for v in rs.values()) else []))
    context = {
        "pretty_name": card_data.pretty_name, "repo_id": repo_id, "run": run, "cfg": cfg,
        "configs": [{"name": d.name, "description": d.spec.description, "format": d.spec.trl_format,
                     "source": d.source, "counts": d.counts(), "rows": len(d.rows),
                     "columns": columns[d.name], **lic[d.name]} for d in datasets],
        "absent": [s.name for s in CONFIG_SPECS
                   if s.name not in by and (not options.configs or s.name in options.configs)],
        "stages": stages, "stage_names": [s["name"] for s in stages], "seeds": seeds, "models": _models(cfg, by),
        "sampling": cfg.get("sampling") or {}, "growth": _growth(by), "review": [_review_stats(d) for d in datasets],
        "review_ran": "review" in manifest, "review_summary": review_summary, "review_stats": review_stats(store),
        "decontamination": [d for d in decontam if d["enabled"]],
        "decontamination_disabled": [d["stage"] for d in decontam if not d["enabled"]], "license": repo_license,
        "license_name": LICENSE_NAMES.get(repo_license, repo_license), "licenses": lic,
        "share_alike": any(x["share_alike"] for x in lic.values()), "split": {
            "test_size": options.test_size, "seed": options.seed if options.seed is not None else cfg.get("seed", 0),
            "min_split_rows": options.min_split_rows},
        "sft_choice": sft_choice(by, options), "rl_prompts": by["rl_prompts"].info if "rl_prompts" in by else None,
        "steps": steps_tables(manifest), "prm_provenance": prm_provenance(manifest, by),
        "irm_provenance": irm_provenance(manifest),
        "evolkit_version": __version__, "yaml": _yaml,
    }
    text = render_card(context, card_data)
    try:
        parsed = DatasetCard(text)
    except Exception as e:  # pragma: no cover - a template bug
        raise PublishError(f"the generated card does not parse: {e}") from None
    if [c["config_name"] for c in parsed.data.to_dict().get("configs", [])] != [d.name for d in datasets]:
        raise PublishError("the generated card lost its configs: check hub_cards/dataset_card.md.jinja")
    return Card(text, repo_license, lic)
