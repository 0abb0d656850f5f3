"""Official GLM checkpoints <-> glm-jax params.

* :func:`load_official` reads any official layout (``mp_rank_XX_model_states.pt``,
  model-parallel shard directories, Hugging Face ``pytorch_model.bin`` /
  ``*.safetensors`` / sharded indexes, ``.npz``), infers the ModelConfig from the
  shapes, validates every key and shape, and returns float32 Flax params.
* :func:`export_official` writes params back in the official key layout
  (``.pt`` / ``.bin`` with torch; ``.safetensors`` / ``.npz`` without).
* :func:`convert_checkpoint` is ``glm-jax convert`` (glm_jax/convert/cli.py):
  load, then save a model directory (glm_jax/model_dir.py) with the tokenizer.

torch is not needed to read zip-format ``.pt`` / ``.bin`` files:
:mod:`glm_jax.convert.torch_pickle` reads them with a restricted unpickler that
never runs pickled code.

The names below load on first use, so that ``glm-jax --help`` (which builds the
convert subcommand's parser from glm_jax/convert/cli.py) imports no JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TorchCheckpoint": ("glm_jax.convert.torch_pickle", "TorchCheckpoint"),
    "convert_checkpoint": ("glm_jax.convert.api", "convert_checkpoint"),
    "export_official": ("glm_jax.convert.api", "export_official"),
    "infer_config": ("glm_jax.convert.layout", "infer_config"),
    "load_official": ("glm_jax.convert.api", "load_official"),
    "load_torch_checkpoint": ("glm_jax.convert.torch_pickle", "load_torch_checkpoint"),
    "merge_model_parallel": ("glm_jax.convert.model_parallel", "merge"),
    "read_checkpoint": ("glm_jax.convert.sources", "read_checkpoint"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
