"""Test doubles: stand-ins that tests plug into evolkit through its public extension points.

``deterministic.DeterministicBackend`` is a fake model backend, reached from a run config through the general
``backend: {kind: custom, factory: ...}`` feature; :func:`fake_backend` spells that config.
"""

from __future__ import annotations

from typing import Any

FACTORY = "tests.doubles.deterministic:DeterministicBackend"


def fake_backend(model: str = "deterministic", **options: Any) -> dict[str, Any]:
    """The run-config ``backend`` entry of the deterministic fake (options: accuracy, noise, delay)."""
    cfg: dict[str, Any] = {"kind": "custom", "factory": FACTORY, "model": model}
    if options:
        cfg["options"] = options
    return cfg


#: The same as YAML flow mapping, for config texts written by tests.
FAKE_YAML = "{kind: custom, factory: '" + FACTORY + "', model: deterministic}"
