"""Pipeline stages. Each stage module exposes ``Config`` (its part of the YAML) and ``run(ctx) -> summary``."""

from __future__ import annotations

from pydantic import BaseModel

from . import evolve, irm, prm, sft

#: Stage name -> its config model, in the order stages run.
STAGE_CONFIGS: dict[str, type[BaseModel]] = {
    "sft": sft.Config,
    "evolve": evolve.Config,
    "irm": irm.Config,
    "prm": prm.Config,
}
