"""Bad input through the real command line, as one table: every case exits with status 2 and one message that names
the file, line or field at fault, never a traceback, and changes nothing that existed before it ran (every file byte
for byte, no file added to or removed from a folder that existed).

A case (:class:`Case`) gives the command line, the files it needs (its own config, seed files, prompts ...), an
optional set-up step (e.g. damaging a copy of a finished run), environment variables and the substrings the message
must contain. Paths are written with tokens: ``<T>`` the case's folder, ``<RUN>`` a copy of a finished run (seeds + sft,
built once against the local OpenAI-compatible test server), ``<URL>`` that server, ``<C>`` the case's config
(``<T>/c.yaml``). Most cases run in-process through :func:`evolkit.cli.main`; those marked ``sub`` run
``python -m evolkit.cli`` in a subprocess, where the exit status is the process's and stderr must hold no traceback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from evolkit.cli import main
from evolkit.seeds import load_problems
from tests.faultserver import FaultServer
from tests.stub_replies import smart_reply

REPO = Path(__file__).resolve().parents[1]
#: A key in the environment: no message may show it.
SECRET = "sk-bad-input-planted-key-0123456789"

GOOD = b'{"question": "Ann has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\\n#### 5"}\n'
STEP = '{"instruction": "What is 1+1?", "responses": [], "next_response": "1+1 = 2", "rating": 1}\n'
GOOD_MATH = b'{"problem": "What is $1+1$?", "solution": "$1+1=\\\\boxed{2}$", "level": "Level 1", "type": "Algebra"}\n'

#: The config every case starts from (and the finished run was made with): the packaged sample, a small sft stage, the
#: test server as the backend (a case that wrongly got as far as sending requests would succeed and fail the test).
BASE: dict[str, Any] = {
    "name": "bad",
    "backend": {"kind": "openai", "model": "fault-model", "base_url": "<URL>", "max_retries": 0},
    "sampling": {"max_tokens": 64},
    "seeds": [{"source": "gsm8k", "n": 3}, {"source": "math", "n": 3}],
    "stages": {"sft": {"k": 2, "fewshot": 0}},
}


def cfg(*changes: tuple[str, Any], drop: tuple[str, ...] = ()) -> str:
    """BASE as YAML with dotted keys set (``("stages.sft.k", 0)``) or removed (``drop``)."""
    d = copy.deepcopy(BASE)
    for key, value in changes:
        *head, last = key.split(".")
        cur = d
        for k in head:
            cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
        if isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
    for key in drop:
        *head, last = key.split(".")
        cur = d
        for k in head:
            cur = cur[k]
        del cur[last]
    return yaml.safe_dump(d, sort_keys=False)


def seeds_cfg(path: str = "<T>/seeds.jsonl", source: str = "gsm8k", **extra: Any) -> str:
    return cfg(("seeds", [{"source": source, "path": path, **extra}]))


# ------------------------------------------------------------------------------------------------------ set-up steps
def run_file(rel: str) -> Callable[[Path], Path]:
    return lambda t: t / "run" / rel


def unfinish(stage: str) -> Callable[[Path], None]:
    """The run as a killed one leaves it: ``stage`` not marked done (its shards and cache stay)."""

    def f(t: Path) -> None:
        m = t / "run" / "manifest.json"
        data = json.loads(m.read_text())
        data["stages"].pop(stage)
        m.write_text(json.dumps(data, indent=2))
        for p in (t / "run" / stage).glob("*.parquet"):
            p.unlink()
        (t / "run" / stage / "summary.json").unlink()

    return f


def overwrite(rel: str, data: bytes) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        (t / "run" / rel).write_bytes(data)

    return f


def shard_line(n: int, data: bytes) -> Callable[[Path], None]:
    """Replace line ``n`` of the sft shard (the others stay)."""

    def f(t: Path) -> None:
        p = t / "run" / "sft" / "solutions.shard-00000.jsonl"
        lines = p.read_bytes().splitlines(keepends=True)
        assert len(lines) > n, "the fixture run has too few records"
        lines[n - 1] = data
        p.write_bytes(b"".join(lines))

    return f


def keep_lines(n: int) -> Callable[[Path], None]:
    """Keep the first ``n`` records of the sft shard (a run killed before the others were answered)."""

    def f(t: Path) -> None:
        p = t / "run" / "sft" / "solutions.shard-00000.jsonl"
        p.write_bytes(b"".join(p.read_bytes().splitlines(keepends=True)[:n]))

    return f


#: The test server's base URL (set by the ``server`` fixture), for set-ups that run a command before the case.
URL_OF_SERVER: dict[str, str] = {}


def finished_eval(t: Path) -> None:
    """An evaluation already in ``<T>/ev`` (answered by the test server)."""
    argv = ["eval", "--backend", "openai", "--base-url", URL_OF_SERVER["url"], "--model", "fault-model", "--data",
            str(t / "bench.jsonl"), "-o", str(t / "ev"), "--no-progress", "--no-plot"]
    assert main(argv) == 0


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        for s in steps:
            s(t)

    return f


def manifest_prompt_changed(t: Path) -> None:
    """The run recorded a prompt file whose bytes have changed since (as if it was edited)."""
    m = t / "run" / "manifest.json"
    data = json.loads(m.read_text())
    prompt = t / "solve.txt"
    prompt.write_text("Solve it step by step, then give 'The answer is: X'.\n")
    data["prompts"] = {str(prompt): "0" * 64}
    m.write_text(json.dumps(data, indent=2))


def read_only(rel: str) -> Callable[[Path], None]:
    def f(t: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("permissions do not bind root (the /proc and /sys cases cover unwritable places)")
        (t / rel).mkdir(parents=True, exist_ok=True)
        (t / rel).chmod(0o555)

    return f


# ------------------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    name: str
    #: The command line after ``evolkit`` (tokens replaced, then split like a shell).
    cmd: str
    #: Substrings of the message (tokens replaced).
    needles: tuple[str, ...]
    #: Files written before the command, relative to the case folder (str: tokens replaced).
    files: dict[str, str | bytes] = field(default_factory=dict)
    #: Copy the finished run to ``<RUN>``.
    run: bool = False
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: Through a subprocess: the process's exit status, no traceback on stderr.
    sub: bool = False
    #: Further text stderr must hold (e.g. a notice before the error).
    stderr: tuple[str, ...] = ()


RUN = "run <C> -o <T>/out --no-progress"
C = {"c.yaml": cfg()}

CASES: list[Case] = [
    # --- --set overrides --------------------------------------------------------------------------------------------
    Case("set_index_out_of_range", RUN + " --set seeds.5.n=3", ("--set seeds.5.n", "seeds has 2 entries"), C),
    Case("set_into_a_string", RUN + " --set name.x=1", ("--set name.x", "name is a str"), C),
    Case("set_bad_yaml_value", RUN + " --set 'seeds.0.n=[1,'", ("--set seeds.0.n", "invalid YAML"), C),
    Case("set_word_as_list_index", RUN + " --set seeds.first.n=3", ("--set seeds.first.n", "use a number", "'first'"),
         C),
    Case("set_no_equals_sign", RUN + " --set seeds.0.n", ("--set 'seeds.0.n'", "KEY=VALUE"), C),
    Case("set_empty_key", RUN + " --set =3", ("--set '=3'", "not a dotted key"), C),
    Case("set_empty_key_part", RUN + " --set stages..k=1", ("stages..k", "not a dotted key"), C),
    Case("set_unknown_field", RUN + " --set backend.nope=1", ("--set", "backend.nope", "Extra inputs"), C),
    Case("set_wrong_type", RUN + " --set sampling.max_tokens=abc", ("--set", "sampling.max_tokens", "integer"), C),
    Case("set_negative_k", RUN + " --set stages.sft.k=-1", ("--set", "stages.sft.k", "greater than 0"), C),
    Case("set_unknown_stage", RUN + " --set stages.bogus.k=1", ("--set", "unknown stage 'bogus'"), C),
    Case("set_list_to_scalar", RUN + " --set seeds=5", ("--set", "seeds", "list"), C),
    Case("set_index_into_mapping", RUN + " --set backend.0=1", ("--set", "backend.0"), C),
    Case("set_inline_api_key", RUN + f" --set backend.api_key={SECRET}", ("--set", "backend", "api_key_env"), C),
    Case("set_seed_source_unknown", RUN + " --set seeds.0.source=aime", ("--set", "seeds.0.source", "gsm8k"), C),
    Case("set_index_too_negative", RUN + " --set seeds.-3.n=1", ("--set seeds.-3.n", "no entry -3"), C),
    # --- config files ---------------------------------------------------------------------------------------------
    Case("config_missing", "run <T>/nowhere.yaml -o <T>/out", ("<T>/nowhere.yaml", "no such config file")),
    Case("config_is_a_folder", "run <T>/cfgdir -o <T>/out", ("<T>/cfgdir", "folder"), {"cfgdir/x": "x"}),
    Case("config_empty", RUN, ("<C>", "empty"), {"c.yaml": ""}),
    Case("config_only_comments", RUN, ("<C>", "empty"), {"c.yaml": "# nothing here\n"}),
    Case("config_top_level_list", RUN, ("<C>", "mapping"), {"c.yaml": "- just\n- a list\n"}),
    Case("config_top_level_string", RUN, ("<C>", "mapping"), {"c.yaml": "just a string\n"}),
    Case("config_not_utf8", RUN, ("<C>", "not UTF-8"), {"c.yaml": b"name: caf\xe9\n"}),
    Case("config_unclosed_brace", RUN, ("<C>:3:", "invalid YAML"),
         {"c.yaml": "name: x\nbackend: {kind: openai\nseeds: []\n"}),
    Case("config_bad_indent", RUN, ("<C>:5:", "invalid YAML"),
         {"c.yaml": "name: x\nstages:\n  sft:\n    k: 1\n   fewshot: 2\n"}),
    Case("config_tab_indent", RUN, ("<C>:3:", "invalid YAML"), {"c.yaml": "name: x\nstages:\n\tsft: {}\n"}),
    Case("config_duplicate_top_key", RUN, ("<C>:2:", "duplicate key 'name'", "line 1"),
         {"c.yaml": "name: a\nname: b\n"}),
    Case("config_duplicate_nested_key", RUN, ("<C>:4:", "duplicate key 'k'", "line 3"),
         {"c.yaml": "stages:\n  sft:\n    k: 1\n    k: 2\n"}),
    Case("config_undefined_alias", RUN, ("<C>", "invalid YAML"), {"c.yaml": "name: *nowhere\n"}),
    Case("config_unknown_top_level", RUN, ("<C>", "bogus_field", "Extra inputs"), {"c.yaml": cfg(("bogus_field", 1))}),
    Case("config_name_a_path", RUN, ("<C>", "name", "not a folder name"), {"c.yaml": cfg(("name", "../../elsewhere"))}),
    Case("config_name_empty", RUN, ("<C>", "name"), {"c.yaml": cfg(("name", ""))}),
    Case("config_no_seeds", RUN, ("<C>", "seeds", "at least 1"), {"c.yaml": cfg(("seeds", []))}),
    Case("config_output_dir_a_file", "run <C> --no-progress", ("<T>/afile", "it is a file"),
         {"c.yaml": cfg(("output_dir", "<T>/afile")), "afile": "keep me"}),
    Case("config_stop_a_string", RUN, ("<C>", "sampling.stop", "list"), {"c.yaml": cfg(("sampling.stop", "###"))}),
    Case("config_unknown_backend_field", RUN, ("<C>", "backend.temprature"),
         {"c.yaml": cfg(("backend.temprature", 0.3))}),
    Case("config_unknown_sampling_field", RUN, ("<C>", "sampling.temprature"),
         {"c.yaml": cfg(("sampling.temprature", 0.3))}),
    Case("config_unknown_seed_field", RUN, ("<C>", "seeds.0.nn"), {"c.yaml": cfg(("seeds.0.nn", 3))}),
    Case("config_unknown_stage_field", RUN, ("<C>", "stages.sft.kk"), {"c.yaml": cfg(("stages.sft.kk", 2))}),
    Case("config_unknown_nested_stage_field", RUN, ("<C>", "stages.evolve.elimination.bogus"),
         {"c.yaml": cfg(("stages.evolve", {"elimination": {"bogus": 1}}))}),
    Case("config_unknown_stage", RUN, ("<C>", "unknown stage 'nosuch'"), {"c.yaml": cfg(("stages.nosuch", {}))}),
    Case("config_stages_a_list", RUN, ("<C>", "stages"), {"c.yaml": cfg(("stages", ["sft"]))}),
    Case("config_stage_a_list", RUN, ("<C>", "stages.sft"), {"c.yaml": cfg(("stages.sft", [1, 2]))}),
    Case("config_seeds_a_mapping", RUN, ("<C>", "seeds"), {"c.yaml": cfg(("seeds", {"source": "gsm8k"}))}),
    Case("config_seed_source_unknown", RUN, ("<C>", "seeds.0.source"), {"c.yaml": cfg(("seeds.0.source", "aime"))}),
    Case("config_seed_path_and_hub_id", RUN, ("<C>", "seeds.0", "not both"),
         {"c.yaml": cfg(("seeds.0.path", "x.jsonl"), ("seeds.0.hub_id", "openai/gsm8k"))}),
    Case("config_seed_n_zero", RUN, ("<C>", "seeds.0.n", "greater than 0"), {"c.yaml": cfg(("seeds.0.n", 0))}),
    Case("config_seed_n_negative", RUN, ("<C>", "seeds.1.n"), {"c.yaml": cfg(("seeds.1.n", -4))}),
    Case("config_seed_n_text", RUN, ("<C>", "seeds.0.n", "integer"), {"c.yaml": cfg(("seeds.0.n", "many"))}),
    Case("config_max_tokens_negative", RUN, ("<C>", "sampling.max_tokens", "greater than 0"),
         {"c.yaml": cfg(("sampling.max_tokens", -5))}),
    Case("config_temperature_negative", RUN, ("<C>", "sampling.temperature"),
         {"c.yaml": cfg(("sampling.temperature", -0.5))}),
    Case("config_top_p_above_one", RUN, ("<C>", "sampling.top_p"), {"c.yaml": cfg(("sampling.top_p", 1.5))}),
    Case("config_backend_kind_unknown", RUN, ("<C>", "backend.kind"), {"c.yaml": cfg(("backend.kind", "telepathy"))}),
    Case("config_backend_concurrency_zero", RUN, ("<C>", "backend.max_concurrency"),
         {"c.yaml": cfg(("backend.max_concurrency", 0))}),
    Case("config_backend_not_a_mapping", RUN, ("<C>", "backend"), {"c.yaml": cfg(("backend", "openai"))}),
    Case("config_inline_api_key", RUN, ("<C>", "backend", "api_key_env"), {"c.yaml": cfg(("backend.api_key", SECRET))}),
    Case("config_judge_inline_api_key", RUN, ("<C>", "judge_backend", "api_key_env"),
         {"c.yaml": cfg(("judge_backend", {"kind": "openai", "api_key": SECRET}))}),
    Case("config_custom_without_factory", RUN, ("<C>", "backend", "factory"),
         {"c.yaml": cfg(("backend.kind", "custom"))}),
    Case("config_custom_factory_not_importable", RUN, ("backend.factory", "nosuch_module_xyz"),
         {"c.yaml": cfg(("backend.kind", "custom"), ("backend.factory", "nosuch_module_xyz:make"))}),
    Case("config_custom_factory_no_callable", RUN, ("backend.factory", "json", "nosuch"),
         {"c.yaml": cfg(("backend.kind", "custom"), ("backend.factory", "json:nosuch"))}),
    Case("config_custom_factory_no_colon", RUN, ("backend.factory", "package.module:callable"),
         {"c.yaml": cfg(("backend.kind", "custom"), ("backend.factory", "json.dumps"))}),
    Case("config_custom_factory_wrong_result", RUN, ("backend.factory", "builtins:dict", "not an evolkit Backend"),
         {"c.yaml": cfg(("backend.kind", "custom"), ("backend.factory", "builtins:dict"))}),
    Case("config_custom_factory_bad_options", RUN, ("backend.options", "json:loads"),
         {"c.yaml": cfg(("backend.kind", "custom"), ("backend.factory", "json:loads"))}),
    Case("config_max_failed_share_zero", RUN, ("<C>", "max_failed_share"), {"c.yaml": cfg(("max_failed_share", 0))}),
    Case("config_executor_kind_unknown", RUN, ("<C>", "executor.kind"),
         {"c.yaml": cfg(("executor", {"kind": "slurm"}))}),
    Case("config_sft_k_zero", RUN, ("<C>", "stages.sft.k", "greater than 0"), {"c.yaml": cfg(("stages.sft.k", 0))}),
    Case("config_sft_fewshot_too_many", RUN, ("<C>", "stages.sft.fewshot"), {"c.yaml": cfg(("stages.sft.fewshot", 9))}),
    Case("config_sft_keep_text", RUN, ("<C>", "stages.sft.keep_per_problem"),
         {"c.yaml": cfg(("stages.sft.keep_per_problem", "all"))}),
    Case("config_open_domain_ratio_negative", RUN, ("<C>", "stages.sft.open_domain.ratio"),
         {"c.yaml": cfg(("stages.sft.open_domain", {"ratio": -1}))}),
    Case("config_evolve_unknown_operation", RUN, ("<C>", "stages.evolve", "rounds.0.operations", "teleport"),
         {"c.yaml": cfg(("stages.evolve", {"rounds": [{"operations": {"teleport": 1.0}}]}))}),
    Case("config_evolve_new_operation_incomplete", RUN, ("<C>", "stages.evolve", "operations.shout", "direction"),
         {"c.yaml": cfg(("stages.evolve", {"operations": {"shout": {"prompt": "x.jinja"}}}))}),
    Case("config_evolve_negative_weight", RUN, ("<C>", "stages.evolve.rounds.0", "negative"),
         {"c.yaml": cfg(("stages.evolve", {"rounds": [{"operations": {"simplify": -1.0}}]}))}),
    Case("config_evolve_min_agreeing_above_k", RUN, ("<C>", "stages.evolve", "min_agreeing"),
         {"c.yaml": cfg(("stages.evolve", {"k": 2, "min_agreeing": 3}))}),
    Case("config_evolve_bad_artifact_regex", RUN, ("<C>", "stages.evolve.elimination.artifacts", "(unclosed"),
         {"c.yaml": cfg(("stages.evolve", {"elimination": {"artifacts": ["ok", "(unclosed"]}}))}),
    Case("config_evolve_bad_refusal_regex", RUN, ("<C>", "stages.evolve.elimination.refusals", "[z-a]"),
         {"c.yaml": cfg(("stages.evolve", {"elimination": {"refusals": ["[z-a]"]}}))}),
    Case("config_evolve_bad_marker_regex", RUN, ("<C>", "stages.evolve.elimination.solution_markers", "*"),
         {"c.yaml": cfg(("stages.evolve", {"elimination": {"solution_markers": ["*"]}}))}),
    Case("config_irm_unknown_field", RUN, ("<C>", "stages.irm.bogus"), {"c.yaml": cfg(("stages.irm", {"bogus": 1}))}),
    Case("config_prm_unknown_source", RUN, ("<C>", "stages.prm.sources"),
         {"c.yaml": cfg(("stages.prm", {"sources": ["elsewhere"]}))}),
    Case("config_prm_unknown_labeller", RUN, ("<C>", "stages.prm.labellers"),
         {"c.yaml": cfg(("stages.prm", {"labellers": ["oracle"]}))}),
    # --- prompt files ----------------------------------------------------------------------------------------------
    Case("prompt_missing", RUN, ("<T>/nope.txt", "no such file"),
         {"c.yaml": cfg(("stages.sft.prompts", {"solve_system": "<T>/nope.txt"}))}),
    Case("prompt_template_syntax_error", RUN, ("<T>/user.jinja:2:", "template error"),
         {"c.yaml": cfg(("stages.sft.prompts", {"solve_user": "<T>/user.jinja"})),
          "user.jinja": "Solve this:\n{{ question \n"}),
    Case("prompt_template_undefined_variable", RUN, ("<T>/user.jinja", "'problem' is undefined"),
         {"c.yaml": cfg(("stages.sft.prompts", {"solve_user": "<T>/user.jinja"})),
          "user.jinja": "Solve {{ problem }}\n"}),
    Case("prompt_not_utf8", RUN, ("<T>/system.txt", "not UTF-8"),
         {"c.yaml": cfg(("stages.sft.prompts", {"solve_system": "<T>/system.txt"})), "system.txt": b"caf\xe9\n"}),
    Case("prompt_fewshot_invalid_json", RUN, ("<T>/shots.json:2:", "invalid JSON"),
         {"c.yaml": cfg(("stages.sft.fewshot", 1), ("stages.sft.prompts", {"fewshot_gsm8k": "<T>/shots.json"})),
          "shots.json": '{"exemplars": [\n  {"question": }\n]}\n'}),
    Case("prompt_fewshot_no_exemplars", RUN, ("<T>/shots.json", "exemplars"),
         {"c.yaml": cfg(("stages.sft.fewshot", 1), ("stages.sft.prompts", {"fewshot_gsm8k": "<T>/shots.json"})),
          "shots.json": '{"examples": []}\n'}),
    Case("prompt_fewshot_exemplar_fields", RUN, ("<T>/shots.json", "exemplar 1", "solution"),
         {"c.yaml": cfg(("stages.sft.fewshot", 1), ("stages.sft.prompts", {"fewshot_gsm8k": "<T>/shots.json"})),
          "shots.json": '{"exemplars": [{"question": "1+1?"}]}\n'}),
    Case("prompt_evolve_operation_missing", "evolve <C> -o <T>/out --no-progress", ("<T>/op.jinja", "no such file"),
         {"c.yaml": cfg(("stages.evolve", {"operations": {"simplify": {"prompt": "<T>/op.jinja"}},
                                           "decontamination": {"enabled": False}}))}),
    # --- seed files ------------------------------------------------------------------------------------------------
    Case("seeds_missing", RUN, ("<T>/seeds.jsonl", "no such file"), {"c.yaml": seeds_cfg()}),
    Case("seeds_empty", RUN, ("<T>/seeds.jsonl", "empty"), {"c.yaml": seeds_cfg(), "seeds.jsonl": b""}),
    Case("seeds_blank_lines", RUN, ("<T>/seeds.jsonl", "no records"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b"\n  \n\n"}),
    Case("seeds_bad_json_line", RUN, ("<T>/seeds.jsonl:2:", "invalid JSON"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD + b'{"question": "broken\n' + GOOD}),
    Case("seeds_missing_answer", RUN, ("<T>/seeds.jsonl:3:", "missing field 'answer'"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD + GOOD.replace(b"5", b"6") + b'{"question": "q"}\n'}),
    Case("seeds_missing_question", RUN, ("<T>/seeds.jsonl:1:", "missing field 'question'"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b'{"answer": "#### 1"}\n'}),
    Case("seeds_blank_question", RUN, ("<T>/seeds.jsonl:1:", "'question'"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b'{"question": "  ", "answer": "#### 1"}\n'}),
    Case("seeds_question_a_number", RUN, ("<T>/seeds.jsonl:1:", "'question'"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b'{"question": 5, "answer": "#### 1"}\n'}),
    Case("seeds_gsm8k_no_gold_marker", RUN, ("<T>/seeds.jsonl:1:", "####"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b'{"question": "q", "answer": "just 4"}\n'}),
    Case("seeds_line_not_an_object", RUN, ("<T>/seeds.jsonl:2:", "expected a JSON object"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD + b"[1, 2, 3]\n"}),
    Case("seeds_not_utf8", RUN, ("<T>/seeds.jsonl:2:", "not UTF-8"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD + b'{"question": "caf\xe9", "answer": "#### 1"}\n'}),
    Case("seeds_utf8_bom", RUN, ("<T>/seeds.jsonl:1:", "BOM"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": b"\xef\xbb\xbf" + GOOD}),
    Case("seeds_duplicate_ids", RUN, ("<T>/seeds.jsonl", "duplicate ids", "'a'"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD.replace(b"{", b'{"id": "a", ') * 2}),
    Case("seeds_json_not_a_list", RUN, ("<T>/seeds.json", "expected a JSON list"),
         {"c.yaml": seeds_cfg("<T>/seeds.json"), "seeds.json": b'{"question": "q"}'}),
    Case("seeds_json_invalid", RUN, ("<T>/seeds.json:2:", "invalid JSON"),
         {"c.yaml": seeds_cfg("<T>/seeds.json"), "seeds.json": b'[{"question": "q",\n "answer": ]'}),
    Case("seeds_json_item_not_object", RUN, ("<T>/seeds.json", "item 2"),
         {"c.yaml": seeds_cfg("<T>/seeds.json"), "seeds.json": b'[' + GOOD.strip() + b', 7]'}),
    Case("seeds_bad_parquet", RUN, ("<T>/seeds.parquet", "not a readable Parquet file"),
         {"c.yaml": seeds_cfg("<T>/seeds.parquet"), "seeds.parquet": b"PAR1 this is not parquet"}),
    Case("seeds_wrong_extension", RUN, ("<T>/seeds.csv", "unsupported file type '.csv'"),
         {"c.yaml": seeds_cfg("<T>/seeds.csv"), "seeds.csv": b"question,answer\nq,#### 1\n"}),
    Case("seeds_folder_without_split", RUN, ("<T>/seedsdir", "train.jsonl"),
         {"c.yaml": seeds_cfg("<T>/seedsdir"), "seedsdir/other.txt": "x"}),
    Case("seeds_path_a_folder_named_jsonl", RUN, ("<T>/dir.jsonl", "folder"),
         {"c.yaml": seeds_cfg("<T>/dir.jsonl"), "dir.jsonl/x": "x"}),
    Case("seeds_math_missing_solution", RUN, ("<T>/math.jsonl:2:", "missing field 'solution'"),
         {"c.yaml": seeds_cfg("<T>/math.jsonl", "math"), "math.jsonl": GOOD_MATH + b'{"problem": "x"}\n'}),
    Case("seeds_math_without_boxed", RUN, ("<T>/math.jsonl:2:", "\\boxed"),
         {"c.yaml": seeds_cfg("<T>/math.jsonl", "math"),
          "math.jsonl": GOOD_MATH + b'{"problem": "What is 2+2?", "solution": "It is 4."}\n'}),
    Case("seeds_data_dir_missing", RUN, ("<T>/no-data/gsm8k/train.jsonl", "EVOLKIT_DATA"),
         {"c.yaml": seeds_cfg("{data}/gsm8k/train.jsonl")}, env={"EVOLKIT_DATA": "<T>/no-data"}),
    Case("seeds_data_dir_a_file", RUN, ("<T>/data-file", "EVOLKIT_DATA"),
         {"c.yaml": seeds_cfg("{data}/gsm8k/train.jsonl"), "data-file": "x"}, env={"EVOLKIT_DATA": "<T>/data-file"}),
    Case("seeds_hub_id_offline", RUN, ("nosuch-user/nosuch-dataset", "could not load"),
         {"c.yaml": cfg(("seeds", [{"source": "gsm8k", "hub_id": "nosuch-user/nosuch-dataset"}]))},
         env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "<T>/hf"}),
    # --- open-domain and decontamination files ---------------------------------------------------------------------
    Case("open_domain_missing", RUN, ("<T>/od.jsonl", "open-domain"),
         {"c.yaml": cfg(("stages.sft.open_domain", {"path": "<T>/od.jsonl"}))}),
    Case("open_domain_missing_field", RUN, ("<T>/od.jsonl:2:", "'response'"),
         {"c.yaml": cfg(("stages.sft.open_domain", {"path": "<T>/od.jsonl"})),
          "od.jsonl": '{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n'}),
    Case("open_domain_bad_json", RUN, ("<T>/od.jsonl:1:", "invalid JSON"),
         {"c.yaml": cfg(("stages.sft.open_domain", {"path": "<T>/od.jsonl"})), "od.jsonl": "{nope\n"}),
    Case("open_domain_empty", RUN, ("<T>/od.jsonl", "empty"),
         {"c.yaml": cfg(("stages.sft.open_domain", {"path": "<T>/od.jsonl"})), "od.jsonl": ""}),
    Case("decontam_required_missing", "evolve <C> -o <T>/out --no-progress",
         ("stages.evolve.decontamination.test_files", "<T>/test.jsonl"),
         {"c.yaml": cfg(("stages.evolve", {"decontamination": {"required": True, "test_files": ["<T>/test.jsonl"]}}))}),
    Case("decontam_bad_json", "evolve <C> -o <T>/out --no-progress", ("<T>/test.jsonl:2:", "invalid JSON"),
         {"c.yaml": cfg(("stages.evolve", {"decontamination": {"test_files": ["<T>/test.jsonl"]}})),
          "test.jsonl": GOOD + b"{bad\n"}),
    Case("decontam_no_text_field", "evolve <C> -o <T>/out --no-progress", ("<T>/test.jsonl", "question"),
         {"c.yaml": cfg(("stages.evolve", {"decontamination": {"test_files": ["<T>/test.jsonl"]}})),
          "test.jsonl": b'{"text2": "x"}\n'}),
    # --- the run folder --------------------------------------------------------------------------------------------
    Case("out_is_a_file", "run <C> -o <T>/afile --no-progress", ("<T>/afile", "is a file"), {**C, "afile": "keep me"}),
    Case("out_under_a_file", "run <C> -o <T>/afile/run --no-progress", ("<T>/afile/run", "<T>/afile is a file"),
         {**C, "afile": "keep me"}),
    Case("out_read_only", "run <C> -o <T>/ro/run --no-progress", ("<T>/ro", "not writable"), C, setup=read_only("ro")),
    Case("out_under_proc", "run <C> -o /proc/evolkit-bad-input/run --no-progress",
         ("/proc/evolkit-bad-input",), C),
    Case("out_under_sys", "run <C> -o /sys/evolkit-bad-input --no-progress", ("/sys/evolkit-bad-input",), C),
    Case("out_foreign_folder", "run <C> -o <T>/mine --no-progress", ("<T>/mine", "not an evolkit run"),
         {**C, "mine/config.yaml": "my notes: keep\n", "mine/thesis.tex": "x"}),
    Case("out_holds_the_config", "run <T>/mine/config.yaml -o <T>/mine --no-progress", ("<T>/mine/config.yaml",),
         {"mine/config.yaml": cfg()}),
    Case("out_holds_a_run", "run <C> -o <RUN> --no-progress", ("<RUN>", "already holds a run", "--resume"), C,
         run=True),
    Case("resume_and_force", "run <C> -o <RUN> --resume --force --no-progress", ("--resume", "--force"), C, run=True),
    Case("resume_into_missing_folder_bad_seeds", "run <C> -o <T>/new --resume --no-progress",
         ("<T>/seeds.jsonl", "no such file"), {"c.yaml": seeds_cfg()},
         stderr=("--resume", "<T>/new", "no run to resume", "starting a new run")),
    Case("resume_corrupt_manifest", "run -o <RUN> --resume --no-progress", ("<RUN>/manifest.json", "not a valid"),
         run=True, setup=overwrite("manifest.json", b'{"stages": {"seeds": {"status": "do'), sub=True),
    Case("resume_manifest_not_a_mapping", "run <C> -o <RUN> --resume --no-progress", ("<RUN>/manifest.json", "stages"),
         C, run=True, setup=overwrite("manifest.json", b"[1, 2]")),
    Case("force_corrupt_manifest", "run <C> -o <RUN> --force --no-progress", ("<RUN>/manifest.json", "not a valid"), C,
         run=True, setup=overwrite("manifest.json", b"\x00\x01garbage")),
    Case("resume_corrupt_run_config", "run -o <RUN> --resume --no-progress", ("<RUN>/config.yaml", "not a valid"),
         run=True, setup=overwrite("config.yaml", b"name: [unclosed\n")),
    Case("resume_run_config_missing", "run -o <RUN> --resume --no-progress", ("<RUN>/config.yaml", "missing"),
         run=True, setup=lambda t: (t / "run" / "config.yaml").unlink()),
    Case("resume_run_config_invalid", "run -o <RUN> --resume --no-progress", ("<RUN>/config.yaml", "stages.sft.k"),
         run=True, setup=overwrite("config.yaml", yaml.safe_dump({"stages": {"sft": {"k": "x"}}}).encode())),
    Case("resume_garbage_cache", "run <C> -o <RUN> --resume --no-progress", ("<RUN>/cache.sqlite", "request cache"), C,
         run=True, setup=both(unfinish("sft"), keep_lines(2), overwrite("cache.sqlite", b"not a database" * 100)),
         sub=True),
    Case("force_garbage_cache", "run <C> -o <RUN> --force --no-progress --set stages.sft.k=3",
         ("<RUN>/cache.sqlite", "request cache"), C, run=True,
         setup=overwrite("cache.sqlite", b"SQLite format 3\x00" + b"\xff" * 4000)),
    Case("resume_garbage_shard_line", "run <C> -o <RUN> --resume --no-progress",
         ("<RUN>/sft/solutions.shard-00000.jsonl:2:", "damaged"), C, run=True,
         setup=both(unfinish("sft"), shard_line(2, b'{"key": "x", "rows": [garbage\n'))),
    Case("resume_shard_not_a_group", "run <C> -o <RUN> --resume --no-progress",
         ("<RUN>/sft/solutions.shard-00000.jsonl:3:", "group record"), C, run=True,
         setup=both(unfinish("sft"), shard_line(3, b'{"problem_id": "x", "text": "old format"}\n'))),
    Case("resume_shard_binary", "run <C> -o <RUN> --resume --no-progress",
         ("<RUN>/sft/solutions.shard-00000.jsonl:1:",), C, run=True,
         setup=both(unfinish("sft"), shard_line(1, b"\x89PNG\r\x00\x00\n"))),
    Case("resume_changed_k", "run <C> -o <RUN> --resume --no-progress --set stages.sft.k=3",
         ("<RUN>", "stages.sft.k: 2 -> 3", "--force"), C, run=True),
    Case("resume_changed_seeds_and_sampling", "run <C> -o <RUN> --resume --no-progress",
         ("<RUN>", "seeds.0.n: 3 -> 4", "sampling.temperature: 0.7 -> 0.1"),
         {"c.yaml": cfg(("seeds.0.n", 4), ("sampling.temperature", 0.1))}, run=True),
    Case("resume_changed_model", "run <C> -o <RUN> --resume --no-progress --set backend.model=other",
         ("<RUN>", "backend.model: 'fault-model' -> 'other'"), C, run=True),
    Case("resume_changed_prompt_file", "run <C> -o <RUN> --resume --no-progress",
         ("<RUN>", "<T>/solve.txt", "changed"), C, run=True, setup=manifest_prompt_changed),
    Case("stage_needs_two_evolvers", "irm -o <RUN> --resume --no-progress", ("stages.irm", "evolver"), run=True),
    # --- publish ---------------------------------------------------------------------------------------------------
    Case("publish_run_missing", "publish <T>/nowhere --local <T>/pub", ("<T>/nowhere", "not a run folder")),
    Case("publish_run_incomplete", "publish <RUN> --local <T>/pub", ("<RUN>", "sft"), run=True,
         setup=unfinish("sft")),
    Case("publish_corrupt_manifest", "publish <RUN> --local <T>/pub", ("<RUN>/manifest.json", "not a valid"), run=True,
         setup=overwrite("manifest.json", b"{")),
    Case("publish_local_is_a_file", "publish <RUN> --local <T>/afile", ("<T>/afile", "it is a file"),
         {"afile": "keep me"}, run=True),
    Case("publish_local_under_a_file", "publish <RUN> --local <T>/afile/pub", ("<T>/afile/pub", "<T>/afile is a file"),
         {"afile": "keep me"}, run=True),
    Case("publish_local_foreign_folder", "publish <RUN> --local <T>/mine --overwrite", ("<T>/mine", "provenance.json"),
         {"mine/notes.txt": "keep me"}, run=True),
    Case("publish_local_is_the_run", "publish <RUN> --local <RUN>", ("<RUN>", "run folder itself"), run=True),
    Case("publish_repo_no_slash", "publish <RUN> --repo justaname --dry-run", ("--repo", "justaname", "USER/NAME"),
         run=True),
    Case("publish_repo_bad_chars", "publish <RUN> --repo 'me/bad name!' --dry-run",
         ("me/bad name!", "not a valid repo id"),
         run=True,
         env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": SECRET}),
    Case("publish_unknown_config", "publish <RUN> --local <T>/pub --configs sft,nosuch", ("nosuch", "sft"), run=True),
    Case("publish_test_size_one", "publish <RUN> --local <T>/pub --test-size 1.5", ("publish.test_size",), run=True),
    Case("publish_min_split_rows_negative", "publish <RUN> --local <T>/pub --min-split-rows -1",
         ("publish.min_split_rows",), run=True),
    Case("publish_corrupt_run_config", "publish <RUN> --local <T>/pub",
         ("<RUN>/config.yaml:", "not a valid run config"),
         run=True, setup=overwrite("config.yaml", b"name: [unclosed\n")),
    Case("publish_no_token", "publish <RUN> --repo me/data", ("HF_TOKEN",), run=True,
         env={"HF_TOKEN": "", "HF_HOME": "<T>/hf", "HF_HUB_OFFLINE": "1"}),
    # --- eval, contamination -----------------------------------------------------------------------------------------
    Case("eval_unknown_bench", "eval --bench aime --backend openai --base-url <URL> --model fault-model", ("--bench", "aime")),
    Case("eval_unknown_checker", "eval --checker exact --backend openai --base-url <URL> --model fault-model", ("--checker", "exact")),
    Case("eval_unknown_backend", "eval --backend telepathy", ("--backend", "telepathy")),
    Case("eval_limit_not_a_number", "eval --backend openai --base-url <URL> --limit ten", ("--limit", "ten")),
    Case("eval_data_missing", "eval --backend openai --base-url <URL> --model fault-model --data <T>/bench.jsonl -o <T>/ev --no-progress",
         ("<T>/bench.jsonl",)),
    Case("eval_data_bad_json", "eval --backend openai --base-url <URL> --model fault-model --data <T>/bench.jsonl -o <T>/ev --no-progress",
         ("<T>/bench.jsonl:2:", "invalid JSON"), {"bench.jsonl": GOOD + b"{oops\n"}),
    Case("eval_prompt_missing", "eval --backend openai --base-url <URL> --model fault-model --prompt <T>/p.txt --data <T>/bench.jsonl -o <T>/ev",
         ("<T>/p.txt",), {"bench.jsonl": GOOD}),
    Case("eval_limit_zero", "eval --backend openai --base-url <URL> --model fault-model --limit 0 --data <T>/bench.jsonl -o <T>/ev --no-progress",
         ("--limit",), {"bench.jsonl": GOOD}),
    Case("eval_n_zero", "eval --backend openai --base-url <URL> --model fault-model --n 0 --data <T>/bench.jsonl -o <T>/ev --no-progress", ("--n",),
         {"bench.jsonl": GOOD}),
    Case("eval_resume_and_force", "eval --backend openai --base-url <URL> --model fault-model --resume --force --data <T>/bench.jsonl -o <T>/ev",
         ("--resume", "--force"), {"bench.jsonl": GOOD}),
    Case("eval_out_is_a_file", "eval --backend openai --base-url <URL> --model fault-model --data <T>/bench.jsonl -o <T>/afile --no-progress",
         ("<T>/afile",), {"bench.jsonl": GOOD, "afile": "keep me"}),
    Case("eval_missing_model", "eval --backend transformers --model <T>/no-model --data <T>/bench.jsonl -o <T>/ev "
         "--no-progress", ("<T>/no-model",), {"bench.jsonl": GOOD},
         env={"HF_HUB_OFFLINE": "1", "HF_HOME": "<T>/hf"}),
    Case("eval_engine_arg_bad_yaml", "eval --backend openai --base-url <URL> --model fault-model --engine-arg 'k=[1,' --data <T>/bench.jsonl -o <T>/ev",
         ("--engine-arg k", "invalid YAML"), {"bench.jsonl": GOOD}),
    Case("eval_temperature_negative", "eval --backend openai --base-url <URL> --model fault-model --temperature -1 --data <T>/bench.jsonl -o <T>/ev",
         ("--temperature",), {"bench.jsonl": GOOD}),
    Case("eval_sample_zero", "eval --backend openai --base-url <URL> --model fault-model --sample 0 --data <T>/bench.jsonl -o <T>/ev", ("--sample",),
         {"bench.jsonl": GOOD}),
    Case("eval_top_p_zero", "eval --backend openai --base-url <URL> --model fault-model --top-p 0 --data <T>/bench.jsonl -o <T>/ev", ("--top-p",),
         {"bench.jsonl": GOOD}),
    Case("eval_max_tokens_zero", "eval --backend openai --base-url <URL> --model fault-model --max-tokens 0 --data <T>/bench.jsonl -o <T>/ev",
         ("--max-tokens",), {"bench.jsonl": GOOD}),
    Case("eval_force_bad_data", "eval --backend openai --base-url <URL> --model fault-model --force --data <T>/bad.jsonl -o <T>/ev --no-progress",
         ("<T>/bad.jsonl:1:", "invalid JSON"), {"bench.jsonl": GOOD, "bad.jsonl": "{x\n"}, setup=finished_eval),
    Case("eval_resume_corrupt_record",
         "eval --backend openai --base-url <URL> --model fault-model --resume --data <T>/bench.jsonl -o <T>/ev --no-progress",
         ("<T>/ev/eval.json", "not a valid"), {"bench.jsonl": GOOD},
         setup=both(finished_eval, lambda t: (t / "ev" / "eval.json").write_text("{"))),
    Case("eval_resume_other_settings", "eval --backend openai --base-url <URL> --model fault-model --resume --n 2 --data <T>/bench.jsonl -o <T>/ev "
         "--no-progress", ("<T>/ev", "different settings", "n: 1 -> 2"), {"bench.jsonl": GOOD}, setup=finished_eval),
    Case("eval_engine_arg_no_equals", "eval --backend openai --base-url <URL> --model fault-model --engine-arg nope --data <T>/bench.jsonl -o <T>/ev",
         ("--engine-arg", "nope"), {"bench.jsonl": GOOD}),
    Case("contamination_dataset_missing", "contamination <T>/ds.jsonl", ("<T>/ds.jsonl",),
         env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "<T>/hf"}),
    Case("contamination_unknown_field", "contamination <T>/ds.jsonl --field nosuch --bench gsm8k",
         ("<T>/ds.jsonl", "nosuch"), {"ds.jsonl": GOOD}),
    # --- review, calibrate prm ---------------------------------------------------------------------------------------
    Case("contamination_ngram_zero", "contamination <T>/ds.jsonl --ngram 0", ("--ngram",), {"ds.jsonl": GOOD}),
    Case("contamination_threshold_above_one", "contamination <T>/ds.jsonl --threshold 2", ("--threshold",),
         {"ds.jsonl": GOOD}),
    Case("contamination_limit_zero", "contamination <T>/ds.jsonl --limit 0", ("--limit",), {"ds.jsonl": GOOD}),
    Case("contamination_output_a_folder", "contamination <T>/ds.jsonl -o <T>/repdir", ("<T>/repdir", "folder"),
         {"ds.jsonl": GOOD, "repdir/x": "keep me"}),
    Case("contamination_bad_row", "contamination <T>/ds.jsonl", ("<T>/ds.jsonl:2:", "invalid JSON"),
         {"ds.jsonl": GOOD + b"{no\n"}),
    Case("review_push_run_missing", "review push <T>/nowhere --dataset irm", ("<T>/nowhere", "not a run folder")),
    Case("review_push_unknown_dataset", "review push <RUN> --dataset sft", ("--dataset", "sft"), run=True),
    Case("review_push_no_server", "review push <RUN> --dataset irm", ("ARGILLA_API_URL",), run=True,
         env={"ARGILLA_API_URL": "", "ARGILLA_API_KEY": ""}),
    Case("review_pull_run_missing", "review pull <T>/nowhere", ("<T>/nowhere", "not a run folder")),
    Case("review_pull_corrupt_manifest", "review pull <RUN>", ("<RUN>/manifest.json", "not a valid"), run=True,
         setup=overwrite("manifest.json", b"[}"),
         env={"ARGILLA_API_URL": "http://127.0.0.1:9", "ARGILLA_API_KEY": "x"}),
    Case("calibrate_data_missing", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal", ("<T>/steps.jsonl",), C),
    Case("calibrate_data_bad_json", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal",
         ("<T>/steps.jsonl:1:",), {**C, "steps.jsonl": "{not json\n"}),
    Case("calibrate_data_wrong_shape", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal",
         ("<T>/steps.jsonl:1:",), {**C, "steps.jsonl": '{"question": "q"}\n'}),
    Case("calibrate_data_empty", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal", ("<T>/steps.jsonl", "empty"),
         {**C, "steps.jsonl": ""}),
    Case("calibrate_out_is_a_file", "calibrate prm <C> -o <T>/afile --data <T>/steps.jsonl", ("<T>/afile", "is a file"),
         {**C, "afile": "keep me", "steps.jsonl": STEP}),
    Case("calibrate_data_unrated", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal",
         ("<T>/steps.jsonl", "no labelled"),
         {**C, "steps.jsonl": STEP.replace('"rating": 1', '"rating": null')}),
    Case("calibrate_data_bad_rating", "calibrate prm <C> --data <T>/steps.jsonl -o <T>/cal",
         ("<T>/steps.jsonl:1:", "rating"),
         {**C, "steps.jsonl": STEP.replace('"rating": 1', '"rating": 5')}),
    Case("calibrate_data_folder", "calibrate prm <C> --data <T>/stepsdir -o <T>/cal", ("<T>/stepsdir", "folder"),
         {**C, "stepsdir/a.jsonl": STEP}),
    Case("prm_stage_with_calibrate_flags", "prm <C> --data x.jsonl -o <T>/out", ("unrecognized arguments: --data",), C),
    # --- through a subprocess: the real exit status ------------------------------------------------------------------
    Case("sub_set_index", RUN + " --set seeds.5.n=3", ("--set seeds.5.n",), C, sub=True),
    Case("sub_out_is_a_file", "run <C> -o <T>/afile --no-progress", ("<T>/afile",), {**C, "afile": "x"}, sub=True),
    Case("sub_bad_seed_line", RUN, ("<T>/seeds.jsonl:2:", "invalid JSON"),
         {"c.yaml": seeds_cfg(), "seeds.jsonl": GOOD + b"{oops}\n"}, sub=True),
    Case("sub_duplicate_key", RUN, ("<C>:2:", "duplicate key"), {"c.yaml": "name: a\nname: b\n"}, sub=True),
]


# ------------------------------------------------------------------------------------------------------- machinery
def _gold_reply() -> Callable[[list[dict[str, Any]], int, Any], str]:
    """Replies that solve the packaged sample problems (so the finished run has SFT rows to publish)."""
    golds = {p.question: p.gold_answer for src in ("gsm8k", "math") for p in load_problems(src)}

    def reply(messages: list[dict[str, Any]], index: int, seed: Any = None) -> str:
        last = messages[-1]["content"] if messages else ""
        for q, gold in golds.items():
            if q in last:
                return f"Step 1: Work it out.\n\nStep 2: Check it.\n\nThe answer is: {gold}"
        return smart_reply(messages, index, seed)

    return reply


@pytest.fixture(scope="module")
def server():
    with FaultServer(reply=_gold_reply()) as srv:
        URL_OF_SERVER["url"] = srv.base_url
        yield srv


@pytest.fixture(scope="module")
def finished_run(server: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    conf = root / "c.yaml"
    conf.write_text(cfg().replace("<URL>", server.base_url))
    rc = main(["run", str(conf), "-o", str(root / "run"), "--no-progress"])
    assert rc == 0
    assert (root / "run" / "sft" / "solutions.shard-00000.jsonl").read_bytes().count(b"\n") >= 4
    return root / "run"


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, ``dir:<sorted entries>`` for a folder."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        out[str(d)] = "dir:" + "/".join(sorted(dirnames + filenames))
        for f in filenames:
            p = d / f
            out[str(p)] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _sub(text: str, t: Path, url: str) -> str:
    return (text.replace("<C>", str(t / "c.yaml")).replace("<RUN>", str(t / "run")).replace("<T>", str(t))
            .replace("<URL>", url))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, server: FaultServer, request: pytest.FixtureRequest,
                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    t = tmp_path
    url = server.base_url
    for rel, data in case.files.items():
        p = t / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(_sub(data, t, url))
        else:
            p.write_bytes(data)
    if case.run:
        shutil.copytree(request.getfixturevalue("finished_run"), t / "run")
    if case.setup is not None:
        case.setup(t)
        capsys.readouterr()
    env = {"OPENAI_API_KEY": SECRET, **{k: _sub(v, t, url) for k, v in case.env.items()}}
    before = _tree(t)
    requests_before = len(server.log)
    argv = shlex.split(_sub(case.cmd, t, url))
    try:
        if case.sub:
            proc = subprocess.run(
                [sys.executable, "-m", "evolkit.cli", *argv], capture_output=True, text=True, cwd=t, timeout=300,
                env={**os.environ, "PYTHONPATH": str(REPO), **env})
            rc, err = proc.returncode, proc.stderr
        else:
            monkeypatch.chdir(t)
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: exit status 2 and a usage message
                rc = e.code
            err = capsys.readouterr().err
    finally:
        for p in t.rglob("*"):  # undo read-only set-ups so the folder can be removed
            if p.is_dir() and not os.access(p, os.W_OK) and str(p).startswith(str(t)):
                p.chmod(0o755)
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert SECRET not in err, err
    msg = "\n".join(ln for ln in err.splitlines() if ln.startswith(("evolkit: error: ", "evolkit ", "usage:"))
                    or ": error: " in ln)
    assert msg, err
    for needle in case.needles:
        assert _sub(needle, t, url) in err, (needle, err)
    for needle in case.stderr:
        assert _sub(needle, t, url) in err, (needle, err)
    assert len(server.log) == requests_before, "a request was sent before the input was checked"
    after = _tree(t)
    changed = [p for p, h in before.items() if after.get(p) != h and p != str(t)]
    assert not changed, (changed, err)
    print(err.strip())  # shown with pytest -rP: the messages a user sees


def test_good_input_passes_the_same_checks(finished_run: Path, server: FaultServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The checks refuse bad input only: the same commands with good input succeed."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    conf = tmp_path / "c.yaml"
    conf.write_text(_sub(cfg(), tmp_path, server.base_url))
    sent = len(server.log)
    saved = (run / "config.yaml").read_bytes()
    # A finished run resumed with its own settings, and with the config it was made with: nothing is sent again.
    assert main(["run", "-o", str(run), "--resume", "--no-progress"]) == 0
    assert main(["run", str(conf), "-o", str(run), "--resume", "--no-progress"]) == 0
    assert len(server.log) == sent
    assert (run / "config.yaml").read_bytes() == saved
    # New run folders: an empty folder, a folder with only hidden files, a folder under new folders.
    seeds_only = ["--set", "stages={}", "--no-progress"]
    for folder in (tmp_path / "empty", tmp_path / "hidden", tmp_path / "a" / "b" / "c"):
        if folder.name != "c":
            folder.mkdir()
        if folder.name == "hidden":
            (folder / ".gitkeep").write_text("")
        assert main(["run", str(conf), "-o", str(folder), *seeds_only]) == 0, capsys.readouterr().err
        assert (folder / "seeds" / "problems.parquet").exists()
    # --resume into a folder that holds no run: says so, and starts one.
    assert main(["run", str(conf), "-o", str(tmp_path / "fresh"), "--resume", *seeds_only]) == 0
    assert "holds no run to resume (no manifest.json): starting a new run there" in capsys.readouterr().err
    # Publishing the finished run to a new folder and again over its own publish.
    for _ in range(2):
        assert main(["publish", str(run), "--local", str(tmp_path / "pub")]) == 0, capsys.readouterr().err
    assert (tmp_path / "pub" / "provenance.json").exists()
    assert len(server.log) == sent
