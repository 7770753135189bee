"""Publishing a run's datasets (``evolkit publish``): one Hugging Face dataset repo, or a local folder with exactly the
repo's layout.

* :mod:`.specs`: what goes where (which run outputs make which config, the publish settings, the split by root
  problem);
* :mod:`.validate`: every row against ``schemas/<config>.schema.json`` (pydantic and ``jsonschema``);
* :mod:`.card`: the dataset card (``hub_cards/dataset_card.md.jinja``);
* :mod:`.hub`: the targets (a local folder, a Hub repo in one commit);
* :mod:`.build`: the staged folder (Parquet, plots, card, provenance, secrets scrubbed) and :func:`publish_run`;
* :mod:`.cli`: the ``evolkit publish`` command.
"""

from __future__ import annotations

from .build import (
    PublishResult,
    Scrubber,
    arrow_schema,
    build,
    collect,
    json_columns,
    load_hint,
    publish_run,
    publish_secrets,
    write_config_parquet,
)
from .card import make_card, public_path, public_paths, summary_items
from .hub import Build, hub_error, push, write_local
from .specs import CONFIG_SPECS, SPECS, ConfigData, ConfigSpec, Lineage, PublishError, PublishOptions, assign_splits
from .validate import load_schema, validate_rows

__all__ = [
    "CONFIG_SPECS", "SPECS", "Build", "ConfigData", "ConfigSpec", "Lineage", "PublishError", "PublishOptions",
    "PublishResult", "Scrubber", "arrow_schema", "assign_splits", "build", "collect", "hub_error", "json_columns",
    "load_hint", "load_schema", "make_card", "public_path", "public_paths", "publish_run", "publish_secrets", "push",
    "summary_items", "validate_rows", "write_config_parquet", "write_local",
]
