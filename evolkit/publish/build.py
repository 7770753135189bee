"""Publish a run's datasets as one Hugging Face dataset repo (or a local folder with exactly the repo's layout).

```
evolkit publish RUN_DIR                        # -> RUN_DIR/dataset/ (the default target)
evolkit publish RUN_DIR --local DIR            # -> DIR/
evolkit publish RUN_DIR --repo USER/NAME [--private] [--dry-run] [--overwrite] [--separate-repos]
```

Steps, in order, all before anything is written or pushed:

1. **collect** every config the run store holds (:mod:`.specs`: which outputs make which config);
2. **validate** each row against ``schemas/<config>.schema.json`` (:mod:`.validate`; errors name config, row, id and
   field), plus checks a JSON Schema cannot express (e.g. as many PRM labels as steps);
3. **split** into train/test by *root problem* (:func:`.specs.assign_splits`);
4. **write** ``data/<config>/<split>-00000-of-00001-<content hash>.parquet``, ``images/<stage>/*.png`` (the stages'
   plots), ``README.md`` (the card, :mod:`.card`) and ``provenance.json`` into a staging folder. Every value written is
   scrubbed of secrets: the values of ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``OPENAI_API_KEY``,
   ``ARGILLA_API_KEY`` and of every ``api_key_env`` the run config names (any backend role), and the Hub token used.

The folder is then moved into place or pushed in one commit (:mod:`.hub`). The run folder itself is only read.
:func:`publish_run` is the API; :func:`load_hint` is what the CLI prints after a publish.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import __version__
from ..records import PUBLISHED
from ..settings import secret_values
from ..store import RunStore, scrub
from .card import make_card, public_paths
from .hub import GENERATOR, Build, plan_push, push, write_local
from .specs import (
    CONFIG_SPECS,
    SPECS,
    ConfigData,
    Lineage,
    PublishError,
    PublishOptions,
    assign_splits,
    gather,
)
from .validate import load_schema, validate_rows

DEFAULT_LOCAL_NAME = "dataset"  # RUN_DIR/dataset when neither --local nor --repo is given


# ---------------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------------


def api_key_envs(cfg: Any) -> list[str]:
    """Every ``api_key_env`` a run config names, in any backend role or stage (``backend``, ``judge_backend``, ...)."""
    out: list[str] = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k == "api_key_env" and isinstance(v, str) and v:
                out.append(v)
            else:
                out += api_key_envs(v)
    elif isinstance(cfg, list):
        for v in cfg:
            out += api_key_envs(v)
    return list(dict.fromkeys(out))


class Scrubber:
    """Replaces secret values by ``***`` in text and in JSON-like values (rows, provenance)."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._rx = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def text(self, s: str) -> str:
        return self._rx.sub("***", s) if self._rx is not None else s

    def value(self, v: Any) -> Any:
        if self._rx is None:
            return v
        if isinstance(v, str):
            return self._rx.sub("***", v) if self._rx.search(v) else v
        if isinstance(v, dict):
            return {self.value(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return v

    def rows(self, rows: list[dict[str, Any]], chunk: int = 5000) -> list[dict[str, Any]]:
        """The rows (JSON values) with secrets replaced; rows without one are returned as they are. Each chunk of rows
        is searched once (its strings joined, ``str`` search: far faster than a regex or JSON text per row)."""
        if self._rx is None:
            return rows
        out = list(rows)
        for start in range(0, len(out), chunk):
            part = out[start : start + chunk]
            texts: list[str] = []
            for r in part:
                _strings(r, texts)
            blob = "\0".join(texts)
            if any(sec in blob for sec in self.secrets):
                out[start : start + chunk] = [self.value(r) for r in part]
        return out


def _strings(v: Any, out: list[str]) -> None:
    """Every string inside a JSON value (dict keys included), appended to ``out``."""
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            out.append(str(k))
            _strings(x, out)
    elif isinstance(v, list):
        for x in v:
            _strings(x, out)


def publish_secrets(store: RunStore, token: str | None = None) -> list[str]:
    """The secret values a publish must not write: the known variables, every ``api_key_env`` of the run config, and
    the Hub token (given, or the one ``huggingface_hub`` would use)."""
    cfg = store.load_config() if (store.root / "config.yaml").exists() else {}
    values = secret_values(api_key_envs(cfg))
    try:
        from huggingface_hub import get_token

        values += [t for t in (token, get_token()) if t and len(t) >= 6]
    except Exception:  # noqa: BLE001 - no readable token store: nothing more to hide
        values += [token] if token and len(token) >= 6 else []
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------------------------------
# Collect
# ---------------------------------------------------------------------------------------------------------------------


def collect(store: RunStore, options: PublishOptions, scrubber: Scrubber | None = None) -> list[ConfigData]:
    """Each config's validated rows from the run store, in :data:`CONFIG_SPECS` order; absent configs are left out."""
    wanted = options.configs or [s.name for s in CONFIG_SPECS]
    unknown = [c for c in wanted if c not in SPECS]
    if unknown:
        raise PublishError(f"unknown config(s) {', '.join(unknown)} (known: {', '.join(SPECS)})")
    lineage = Lineage(store)
    found: list[ConfigData] = []
    for spec in CONFIG_SPECS:
        if spec.name not in wanted:
            continue
        got = gather(spec, store, options)
        if got is None:
            continue
        rows = validate_rows(spec.name, got.rows, check=spec.check)
        if scrubber is not None:
            rows = scrubber.rows(rows)
        groups = [spec.group(r, lineage) for r in rows]
        lineage.register([r["id"] for r in rows], groups)
        if rows:
            found.append(ConfigData(spec, rows, got.source, groups, info=got.info))
    if not found:
        raise PublishError(f"{store.root}: nothing to publish (no finished output for {', '.join(wanted)}; "
                           f"run at least the sft stage)")
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------------------------------


def _arrow_type(s: dict[str, Any], defs: dict[str, Any]) -> Any:
    import pyarrow as pa

    if "$ref" in s:
        return _arrow_type(defs[s["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in s:
        options = [x for x in s["anyOf"] if x.get("type") != "null"]
        if len(options) != 1:
            raise PublishError(f"cannot store a union of {options} in Parquet")
        return _arrow_type(options[0], defs)
    t = s.get("type")
    if t == "string" or (t is None and "enum" in s):
        return pa.string()
    if t == "integer":
        return pa.int64()
    if t == "number":
        return pa.float64()
    if t == "boolean":
        return pa.bool_()
    if t == "array":
        return pa.list_(_arrow_type(s.get("items", {"type": "string"}), defs))
    if t == "object" and s.get("properties"):
        return pa.struct([pa.field(k, _arrow_type(v, defs)) for k, v in s["properties"].items()])
    if t == "object":  # free-form mapping (e.g. sampling parameters): JSON text, see json_columns()
        return pa.string()
    raise PublishError(f"no Parquet type for JSON Schema {s}")


def json_columns(config: str) -> list[str]:
    """Top-level columns holding free-form mappings: published as JSON text (``json.loads`` them back)."""
    schema = load_schema(config)
    out = []
    for name, prop in schema["properties"].items():
        options = [x for x in prop.get("anyOf", [prop]) if x.get("type") != "null"]
        if len(options) == 1 and options[0].get("type") == "object" and not options[0].get("properties"):
            out.append(name)
    return out


def arrow_schema(config: str) -> Any:
    """The Parquet schema of a config: types from its JSON Schema, columns in the records model's field order."""
    import pyarrow as pa

    schema = load_schema(config)
    props, defs = schema["properties"], schema.get("$defs", {})
    names = [n for n in PUBLISHED[config].model_fields if n in props] + [n for n in props
                                                                       if n not in PUBLISHED[config].model_fields]
    return pa.schema([pa.field(n, _arrow_type(props[n], defs)) for n in names])


def write_config_parquet(path: Path, config: str, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(config)
    jc = set(json_columns(config))
    table = pa.Table.from_pylist(
        [{k: (json.dumps(r.get(k), sort_keys=True, ensure_ascii=False) if k in jc and r.get(k) is not None
              else r.get(k)) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path, compression="zstd")



def write_split(out_dir: Path, config: str, split: str, rows: list[dict[str, Any]]) -> str:
    """Write one split as ``data/<config>/<split>-00000-of-00001-<content hash>.parquet``; return that path.

    The name carries the first 16 hex digits of the file's SHA-256, and the card names each file exactly: ``datasets``
    caches a local folder by its configs' file patterns, so a re-published folder whose files kept their names would
    be read from that cache (the old rows) by ``load_dataset``. The same rows give the same bytes, hence the same
    name: re-publishing an unchanged run changes nothing."""
    tmp = out_dir / f"data/{config}/.{split}.parquet.tmp"
    write_config_parquet(tmp, config, rows)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
    rel = f"data/{config}/{split}-00000-of-00001-{digest}.parquet"
    os.replace(tmp, out_dir / rel)
    return rel


def _package_versions() -> dict[str, str]:
    names = ["evolkit", "datasets", "huggingface-hub", "pyarrow", "pydantic", "jsonschema", "Jinja2", "transformers",
             "torch", "trl", "vllm", "openai", "math-verify", "argilla"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out



def run_identity(store: RunStore) -> dict[str, Any]:
    cfg = store.load_config()
    m = store.manifest()["stages"]
    first = next(iter(m.values()), {}) if m else {}
    key = json.dumps([cfg.get("name"), (m.get("seeds") or first).get("finished_at")], sort_keys=True)
    return {"name": cfg.get("name") or store.root.name, "id": hashlib.sha256(key.encode()).hexdigest()[:16]}



# ---------------------------------------------------------------------------------------------------------------------
# The staged folder
# ---------------------------------------------------------------------------------------------------------------------


def build(run_dir: str | os.PathLike[str], out_dir: Path, options: PublishOptions,
          repo_id: str | None = None, datasets: list[ConfigData] | None = None,
          scrubber: Scrubber | None = None) -> Build:
    """Collect, validate, split and write the whole publish folder into ``out_dir`` (which must be empty)."""
    store = RunStore(run_dir)
    scrubber = scrubber or Scrubber(publish_secrets(store))
    cfg = scrub(store.load_config(), scrubber.secrets)
    run = run_identity(store)
    if datasets is None:
        datasets = collect(store, options, scrubber)
        seed = options.seed if options.seed is not None else int(cfg.get("seed") or 0)
        assign_splits(datasets, options.test_size, seed, options.min_split_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}

    def record(rel: str, **extra: Any) -> None:
        data = (out_dir / rel).read_bytes()
        files[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}

    # Data files
    configs_yaml = []
    for d in datasets:
        entry: dict[str, Any] = {"config_name": d.name}
        if d is datasets[0]:
            entry["default"] = True
        entry["data_files"] = []
        for split in d.splits:
            rel = write_split(out_dir, d.name, split, d.split_rows(split))
            record(rel, rows=len(d.splits[split]))
            entry["data_files"].append({"split": split, "path": rel})
        configs_yaml.append(entry)

    # Plots of the stages that ran
    plots: dict[str, list[str]] = {}
    if options.include_plots:
        for stage in store.manifest()["stages"]:
            sdir = store.root / stage
            for png in sorted(sdir.glob("*.png")) if sdir.is_dir() else []:
                rel = f"images/{stage}/{png.name}"
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, out_dir / rel)
                record(rel)
                plots.setdefault(stage, []).append(rel)

    # Card
    card = make_card(store, cfg, datasets, options, run, plots, {d.name: list(arrow_schema(d.name).names)
                                                                  for d in datasets}, configs_yaml, repo_id=repo_id)
    text = scrubber.text(card.text)
    (out_dir / "README.md").write_text(text, encoding="utf-8")
    record("README.md")

    manifest = store.manifest()["stages"]
    provenance = {
        "generator": GENERATOR, "evolkit_version": __version__, "run": run,
        "config": cfg, "publish_options": options.model_dump(mode="json", exclude={"local"}),
        "packages": _package_versions(),
        "stages": {n: {k: i.get(k) for k in ("status", "finished_at", "seconds", "outputs", "summary")}
                   for n, i in manifest.items()},
        "configs": {d.name: {"source": d.source, "rows": len(d.rows), "splits": d.counts(),
                             "license": card.licenses[d.name]["license"],
                             **({"selection": d.info} if d.info else {}),
                             "schema_sha256": hashlib.sha256(json.dumps(load_schema(d.name), sort_keys=True)
                                                             .encode()).hexdigest()} for d in datasets},
        "license": card.license,
        "files": dict(sorted(files.items())),
    }
    provenance = scrubber.value(scrub(public_paths(provenance, store.root), scrubber.secrets))
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    record("provenance.json")
    return Build(out_dir, datasets, files, text, provenance, card.license, run)



@dataclass
class PublishResult:
    configs: dict[str, dict[str, int]]  # config -> split -> rows
    local: list[Path] = field(default_factory=list)
    repos: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    license: str = ""
    #: (target, config) pairs that load_dataset takes: target is the local folder or the repo id.
    targets: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def hint(self) -> str:
        return load_hint(self)


def load_hint(result: PublishResult) -> str:
    """The lines printed after a publish: what went where and how to ``load_dataset`` it."""
    lines = []
    if result.dry_run:
        lines.append("dry run: nothing was written or pushed")
        lines.extend(result.plan)
        return "\n".join(lines)
    for name, counts in result.configs.items():
        lines.append(f"  {name:<13} " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    where = [str(p) for p in result.local] + [r["repo_id"] + ("" if r.get("changed", True) else " (unchanged)")
                                             for r in result.repos]
    head = f"published {len(result.configs)} config(s) ({result.license} license) to {', '.join(where)}:"
    lines.insert(0, head)
    lines.extend(f"note: {r['repo_id']}: {r['note']}" for r in result.repos if r.get("note"))
    lines.append("load them with:")
    lines.append("    from datasets import load_dataset")
    for target, configs in result.targets[:2]:
        for c in configs[:1]:
            lines.append(f"    ds = load_dataset({target!r}, {c!r})   # configs: {', '.join(configs)}")
    return "\n".join(lines)


def _options(run_dir: Path, **kwargs: Any) -> PublishOptions:
    store_cfg = RunStore(run_dir).load_config() if (run_dir / "config.yaml").exists() else {}
    base = dict(store_cfg.get("publish") or {})
    if kwargs.get("local") is not None or kwargs.get("repo") is not None:
        base.pop("local", None)  # a target given by the caller replaces the config's targets (no surprise push)
        base.pop("repo", None)
    base.update({k: v for k, v in kwargs.items() if v is not None})
    try:
        return PublishOptions.model_validate(base)
    except ValidationError as e:
        raise PublishError("; ".join(f"publish.{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                     for x in e.errors())) from None


def publish_run(run_dir: str | os.PathLike[str], local: str | os.PathLike[str] | None = None, repo: str | None = None,
                *, private: bool | None = None, dry_run: bool = False, token: str | None = None,
                separate_repos: bool | None = None, configs: list[str] | None = None, test_size: float | None = None,
                min_split_rows: int | None = None, seed: int | None = None, overwrite: bool | None = None,
                pretty_name: str | None = None, commit_message: str | None = None,
                sft_include_evolved: bool | None = None, echo: Callable[[str], Any] | None = None) -> PublishResult:
    """Publish a run folder's datasets to a local folder (default ``RUN_DIR/dataset``) and/or a Hub dataset repo.

    Everything is validated and written to a staging folder first; the run folder is only read. With ``repo`` and
    ``local`` both given, the local folder is written and the same files are pushed. ``echo`` (e.g. ``print``) gets
    the :func:`load_hint` text. ``sft_include_evolved`` adds the evolved problems' solutions to the ``sft`` config
    (default: the run config's ``publish.sft_include_evolved``, else off). Raises :class:`PublishError` with a message
    a user can act on.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise PublishError(f"{run_dir}: not a run folder (no manifest.json); run `evolkit run` first")
    opts = _options(run_dir, repo=repo, local=str(local) if local is not None else None, private=private,
                    separate_repos=separate_repos, configs=configs, test_size=test_size, min_split_rows=min_split_rows,
                    seed=seed, overwrite=overwrite, pretty_name=pretty_name, commit_message=commit_message,
                    sft_include_evolved=sft_include_evolved)
    if opts.local is None and opts.repo is None:
        opts.local = str(run_dir / DEFAULT_LOCAL_NAME)
    if opts.repo is not None and opts.repo.count("/") != 1:
        raise PublishError(f"--repo {opts.repo!r}: expected USER/NAME (or ORG/NAME)")
    if opts.repo is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(opts.repo)
        except HFValidationError as e:
            raise PublishError(f"--repo {opts.repo!r}: not a valid repo id ({e})") from None
    local_dir = Path(opts.local) if opts.local else None
    if local_dir is not None and local_dir.resolve() == run_dir.resolve():
        raise PublishError(f"--local {local_dir}: that is the run folder itself; choose another folder")
    if local_dir is not None:
        from ..store import check_output_folder

        check_output_folder(local_dir, "--local folder")

    store = RunStore(run_dir)
    unfinished = [name for name in (store.load_config().get("stages") or {})
                  if store.stage_info(name).get("status") != "done"]
    if unfinished and not opts.configs:
        raise PublishError(
            f"{run_dir}: the run is not finished: stage(s) {', '.join(unfinished)} of its config have not completed "
            f"(finish them with `evolkit run -o {run_dir} --resume`, or publish what is done with --configs NAME)")
    scrubber = Scrubber(publish_secrets(store, token))
    datasets = collect(store, opts, scrubber)
    cfg = store.load_config()
    split_seed = opts.seed if opts.seed is not None else int(cfg.get("seed") or 0)
    assign_splits(datasets, opts.test_size, split_seed, opts.min_split_rows)
    # One publish unit = (sub-folder, repo id, configs): all configs together, or one per config.
    units: list[tuple[str, str | None, list[ConfigData]]]
    if opts.separate_repos:
        units = [(d.name, f"{opts.repo}-{d.name.replace('_', '-')}" if opts.repo else None, [d]) for d in datasets]
    else:
        units = [("", opts.repo, datasets)]
    result = PublishResult(configs={d.name: d.counts() for d in datasets}, dry_run=dry_run)

    with tempfile.TemporaryDirectory(prefix="evolkit-publish-") as tmp:
        builds = []
        for sub, repo_id, ds in units:
            b = build(run_dir, Path(tmp) / (sub or "all"), opts, repo_id=repo_id, datasets=ds, scrubber=scrubber)
            builds.append((sub, repo_id, b))
        result.license = ", ".join(sorted({b.license for _, _, b in builds}))
        if dry_run:
            for sub, repo_id, b in builds:
                if local_dir is not None:
                    dest = local_dir / sub if sub else local_dir
                    result.plan.append(f"would write {dest}/ ({len(b.files)} files):")
                    result.plan.extend(f"  {p}  {f['bytes']} bytes" + (f", {f['rows']} rows" if 'rows' in f else '')
                                       for p, f in sorted(b.files.items()))
                if repo_id is not None:
                    plan = plan_push(b, repo_id, token)
                    state = {True: "exists", False: "would be created", None: "unknown"}[plan.exists]
                    result.plan.append(f"would push to dataset repo {repo_id} ({state}) in one commit"
                                       f"{' (private)' if opts.private else ''}:")
                    result.plan.extend(f"  {st:<9} {p}  {n} bytes" for p, st, n in plan.adds)
                    result.plan.extend(f"  delete    {p}" for p in plan.deletes)
                    if plan.note:
                        result.plan.append(f"  ({plan.note})")
            if echo:
                echo(load_hint(result))
            return result
        for sub, repo_id, b in builds:
            if local_dir is not None:
                dest = local_dir / sub if sub else local_dir
                write_local(b.folder, dest, b.run, overwrite=opts.overwrite)
                result.local.append(dest)
                result.targets.append((str(dest), [d.name for d in b.datasets]))
        for sub, repo_id, b in builds:
            if repo_id is not None:
                info = push(b, repo_id, token=token, private=opts.private, overwrite=opts.overwrite,
                            commit_message=opts.commit_message)
                result.repos.append(info)
                result.targets.append((repo_id, [d.name for d in b.datasets]))
    if echo:
        echo(load_hint(result))
    return result
