"""The whole RLEIF loop as one command: ``evolkit rleif RECIPE.yaml``.

WizardMath's recipe (arXiv 2308.09583): supervised fine-tuning on verified teacher solutions, then an instruction reward
model (IRM) and a process reward model (PRM) trained from judge labels, then PPO on the evolved instructions with the
reward r = rI x rA from those two models. Every hand-off goes through a published dataset or a saved model:

```
seeds --[run: sft]--> published/sft-data --[trainers.sft]--> models/sft (the policy)
seeds --[run: evolve, irm, prm (the policy's own solutions)]--> published/reward-data
published/reward-data --[trainers.reward]--> models/irm     --[trainers.prm]--> models/prm
models/sft + models/irm + models/prm + published/reward-data (rl_prompts) --[trainers.ppo]--> models/ppo
models/ppo --[evolkit eval, WizardMath protocol]--> eval/
```

The recipe names the two data runs (ordinary run configs: backend, seeds, stages), the trainer configs and the
evaluation. The loop's folder holds every artifact and ``rleif.json``, the record of the steps done and the settings
they were done with: a killed loop continues with ``--resume`` (a finished step is not redone, a data run resumes like
any run, a trainer step is redone from its start), and a step whose settings changed since it was done is refused
unless ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, EvolkitError

log = logging.getLogger("evolkit.rleif")
RECIPES = Path(__file__).resolve().parent / "recipes"
TRAINER_CONFIGS = Path(__file__).resolve().parent.parent / "trainers" / "configs"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainStep(_Model):
    """One trainer run: ``python -m trainers.<script> --config CONFIG [--key value ...]``."""

    #: A trainer YAML (a path, or the name of one in trainers/configs, e.g. ``sft_tiny``).
    config: str
    #: The base model (the policy's base for ``sft``; the reward models' base for ``reward`` and ``prm``; unused by
    #: ``ppo``, which starts from the SFT policy). The embedded model's name (smollm2-135m-instruct) works offline.
    model_name_or_path: str | None = None
    #: More settings for the trainer's command line (``{max_steps: 2}`` -> ``--max_steps 2``).
    args: dict[str, Any] = {}
    #: How to start it on several GPUs, e.g. ``[accelerate, launch, --config_file,
    #: trainers/configs/deepspeed_zero3.yaml]`` (``-m trainers.<script> ...`` follows); empty: this Python.
    launcher: list[str] = []


class Train(_Model):
    sft: TrainStep
    reward: TrainStep
    prm: TrainStep
    ppo: TrainStep
    #: The RL algorithm (the recipe's is PPO; GRPO and RLOO use TRL's trainers with the same reward).
    rl: Literal["ppo", "grpo", "rloo"] = "ppo"


class EvalStep(_Model):
    bench: str = "gsm8k"
    #: The first N test problems (a slice, for a quick check; null: all of them).
    limit: int | None = Field(50, gt=0)
    checker: Literal["evolkit", "wizardmath", "both"] = "wizardmath"
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    max_tokens: int | None = Field(None, gt=0)
    #: More `evolkit eval` arguments, as given on its command line.
    args: list[str] = []


class Recipe(_Model):
    name: str = "rleif"
    output_dir: str | None = None
    #: The SFT-data run (a run config: backend, sampling, seeds, stages with sft).
    data: dict[str, Any]
    #: The reward-data run (evolve, irm, prm): its ``policy_backend`` is the SFT policy the loop trained, served as
    #: ``policy_backend`` says (the model is filled in).
    reward_data: dict[str, Any]
    policy_backend: dict[str, Any] = {"kind": "transformers"}
    train: Train
    eval: EvalStep = EvalStep()

    @property
    def root(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)


def load_recipe(path: str | os.PathLike[str], output_dir: str | None = None) -> Recipe:
    from .config import parse_yaml, validate

    p = Path(path)
    if not p.exists() and (RECIPES / f"{path}.yaml").exists():
        p = RECIPES / f"{path}.yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such recipe file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        from .config import _format_validation

        raise ConfigError(_format_validation(e, str(p))) from None
    if output_dir:
        recipe.output_dir = output_dir
    # The two runs are validated now, so a mistake shows before hours of work.
    validate(_run_data(recipe, "data"), f"{p}: data")
    validate(_run_data(recipe, "reward_data"), f"{p}: reward_data")
    if "sft" not in (recipe.data.get("stages") or {}):
        raise ConfigError(f"{p}: data.stages: the SFT-data run needs the sft stage")
    missing = [s for s in ("evolve", "irm", "prm") if s not in (recipe.reward_data.get("stages") or {})]
    if missing:
        raise ConfigError(f"{p}: reward_data.stages: the reward-data run needs {', '.join(missing)}")
    for name in ("sft", "reward", "prm", "ppo"):
        trainer_config(getattr(recipe.train, name).config, f"{p}: train.{name}.config")
    return recipe


def trainer_config(name: str, where: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = TRAINER_CONFIGS / f"{name}.yaml"
    if cand.exists():
        return cand
    raise ConfigError(f"{where}: {name!r} is neither a YAML file nor a config in trainers/configs")


def _run_data(recipe: Recipe, which: str) -> dict[str, Any]:
    """The run config of a data run, placed in the loop's folder; the reward-data run gets the SFT policy."""
    data = json.loads(json.dumps(getattr(recipe, which)))
    data.setdefault("name", f"{recipe.name}-{which.replace('_', '-')}")
    data["output_dir"] = str(recipe.root / which.replace("_", "-"))
    if which == "reward_data":
        data["policy_backend"] = {**recipe.policy_backend, "model": str(recipe.root / "models" / "sft")}
        prm = data.setdefault("stages", {}).setdefault("prm", {}) or {}
        prm.setdefault("sources", ["policy"])
        data["stages"]["prm"] = prm
    return data


# ------------------------------------------------------------------------------------------------------------ steps
class Loop:
    """The loop's steps over one folder, with the record of what is done (``rleif.json``)."""

    def __init__(self, recipe: Recipe, show_progress: bool = True):
        self.recipe = recipe
        self.root = recipe.root
        self.show_progress = show_progress
        self.state_path = self.root / "rleif.json"

    # -- record ------------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"steps": {}}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EvolkitError(f"{self.state_path}: not a valid loop record ({e})") from None

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    def steps(self) -> list[tuple[str, dict[str, Any], Callable[[], str]]]:
        """(name, the settings it depends on, the function that does it and returns its artifact)."""
        r = self.recipe
        pub = self.root / "published"
        models = self.root / "models"
        rl = r.train.rl
        return [
            ("sft-data", _run_data(r, "data"), lambda: self._run("data")),
            ("publish-sft-data", {}, lambda: self._publish(self.root / "data", pub / "sft-data")),
            ("train-sft", r.train.sft.model_dump(), lambda: self._train(
                "sft", r.train.sft, pub / "sft-data", models / "sft", r.train.sft.model_name_or_path)),
            ("reward-data", _run_data(r, "reward_data"), lambda: self._run("reward_data")),
            ("publish-reward-data", {}, lambda: self._publish(self.root / "reward-data", pub / "reward-data")),
            ("train-irm", r.train.reward.model_dump(), lambda: self._train(
                "reward", r.train.reward, pub / "reward-data", models / "irm", r.train.reward.model_name_or_path)),
            ("train-prm", r.train.prm.model_dump(), lambda: self._train(
                "prm", r.train.prm, pub / "reward-data", models / "prm", r.train.prm.model_name_or_path)),
            (f"train-{rl}", {**r.train.ppo.model_dump(), "rl": rl}, lambda: self._train(
                rl, r.train.ppo, pub / "reward-data", models / rl, str(models / "sft"),
                {"irm_model_name_or_path": str(models / "irm"), "prm_model_name_or_path": str(models / "prm")})),
            ("eval", r.eval.model_dump(), lambda: self._eval(models / rl, self.root / "eval")),
        ]

    def run(self, resume: bool = False, force: bool = False) -> dict[str, Any]:
        if resume and force:
            raise EvolkitError("--resume and --force: choose one (continue the loop, or redo it)")
        if self.state_path.exists() and not (resume or force):
            raise EvolkitError(f"{self.root} already holds a loop. Use --resume to continue it, --force to redo it, "
                               f"or -o to choose another folder.")
        self.root.mkdir(parents=True, exist_ok=True)
        state = {"steps": {}} if force else self.state()
        if force:
            self._save(state)
        steps = self.steps()
        digests = {name: _digest(settings) for name, settings, _ in steps}
        # A step done with other settings (and every step after it) would mix two recipes: refuse.
        changed = [n for n, _, _ in steps if n in state["steps"] and state["steps"][n].get("settings") != digests[n]]
        if changed:
            raise ConfigError(f"{self.root}: step(s) {', '.join(changed)} were done with other settings; use the "
                              f"recipe they were made with, --force to redo the loop, or another folder (-o)")
        redo_rest = False
        for i, (name, _settings, fn) in enumerate(steps, 1):
            done = state["steps"].get(name, {}).get("status") == "done"
            if done and not redo_rest:
                log.info("rleif [%d/%d] %s: done (%s)", i, len(steps), name, state["steps"][name].get("artifact"))
                continue
            redo_rest = True  # an upstream artifact is new: what depends on it is redone
            log.info("rleif [%d/%d] %s ...", i, len(steps), name)
            t0 = time.time()
            artifact = fn()
            state["steps"][name] = {"status": "done", "artifact": artifact, "settings": digests[name],
                                    "seconds": round(time.time() - t0, 1)}
            self._save(state)
            log.info("rleif [%d/%d] %s: done in %.0f s -> %s", i, len(steps), name, time.time() - t0, artifact)
        return state

    # -- the kinds of step -------------------------------------------------------------------------------------------
    def _run(self, which: str) -> str:
        from .config import validate
        from .pipeline import check_resume, run_all
        from .store import RunStore

        cfg = validate(_run_data(self.recipe, which), f"{which}")
        store = RunStore(cfg.run_dir, create=False)
        if store.manifest_path.exists():
            check_resume(cfg, store)
        run_all(cfg, cfg.run_dir, show_progress=self.show_progress)
        return str(cfg.run_dir)

    def _publish(self, run_dir: Path, out: Path) -> str:
        from .cli import main as cli_main

        rc = cli_main(["publish", str(run_dir), "--local", str(out), "--overwrite"])
        if rc != 0:
            raise EvolkitError(f"publishing {run_dir} to {out} failed (exit {rc})")
        return str(out)

    def _train(self, script: str, step: TrainStep, dataset: Path, out: Path, model: str | None,
               extra: dict[str, Any] | None = None) -> str:
        cmd = [*(step.launcher or [sys.executable]), "-m", f"trainers.{script}", "--config",
               str(trainer_config(step.config, f"train.{script}.config")), "--dataset_name", str(dataset),
               "--output_dir", str(out)]
        if model:
            cmd += ["--model_name_or_path", model]
        for k, v in {**(extra or {}), **step.args}.items():
            cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
        log.info("rleif: %s", " ".join(cmd[1:]))
        proc = subprocess.run(cmd, cwd=Path.cwd())
        if proc.returncode != 0:
            raise EvolkitError(f"trainers.{script} failed (exit {proc.returncode}); fix the cause and run the loop "
                               f"again with --resume (finished steps are kept)")
        return str(out)

    def _eval(self, model: Path, out: Path) -> str:
        from .cli import main as cli_main

        e = self.recipe.eval
        args = ["eval", "--model", str(model), "--bench", e.bench, "--checker", e.checker, "--backend", e.backend,
                "-o", str(out), "--force"]
        if e.limit:
            args += ["--limit", str(e.limit)]
        if e.max_tokens:
            args += ["--max-tokens", str(e.max_tokens)]
        if not self.show_progress:
            args.append("--no-progress")
        rc = cli_main(args + list(e.args))
        if rc != 0:
            raise EvolkitError(f"evaluating {model} failed (exit {rc})")
        return str(out)


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------------------- CLI
def cmd_rleif(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.output_dir)
    state = Loop(recipe, show_progress=not args.no_progress).run(resume=args.resume, force=args.force)
    print(f"rleif: {len(state['steps'])} steps done in {recipe.root}")
    for name, info in state["steps"].items():
        print(f"  {name:<20} {info.get('seconds', 0):>8.0f} s  {info.get('artifact')}")
    report = Path(state["steps"].get("eval", {}).get("artifact", "")) / "report.md"
    if report.is_file():
        print(report.read_text())
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "rleif", help="the whole RLEIF loop: SFT data -> SFT -> IRM/PRM data on the policy -> reward models -> PPO -> eval",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="loop recipe YAML (or a packaged one by name: rleif_tiny, rleif_7b)")
    p.add_argument("-o", "--output-dir", help="the loop's folder (default: the recipe's output_dir or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue a loop: finished steps are kept")
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_rleif)
