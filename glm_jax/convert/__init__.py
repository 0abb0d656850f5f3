"""Official GLM checkpoints <-> glm-jax params.

* :func:`load_official` reads any official layout (``mp_rank_XX_model_states.pt``,
  model-parallel shard directories, Hugging Face ``pytorch_model.bin`` /
  ``*.safetensors`` / sharded indexes, ``.npz``), infers the ModelConfig from the
  shapes, validates every key and shape, and returns float32 Flax params.
* :func:`export_official` writes params back in the official key layout
  (``.pt`` / ``.bin`` with torch; ``.safetensors`` / ``.npz`` without).
* :func:`convert_checkpoint` is ``glm-jax convert`` (glm_jax/cli/convert.py):
  load, then save a model directory (glm_jax/model_dir.py) with the tokenizer.

torch is not needed to read zip-format ``.pt`` / ``.bin`` files:
:mod:`glm_jax.convert.torch_pickle` reads them with a restricted unpickler that
never runs pickled code.
"""

from glm_jax.convert.api import convert_checkpoint, export_official, load_official
from glm_jax.convert.model_parallel import merge as merge_model_parallel
from glm_jax.convert.param_map import infer_config
from glm_jax.convert.sources import read_checkpoint
from glm_jax.convert.torch_pickle import TorchCheckpoint, load_torch_checkpoint

__all__ = [
    "TorchCheckpoint",
    "convert_checkpoint",
    "export_official",
    "infer_config",
    "load_official",
    "load_torch_checkpoint",
    "merge_model_parallel",
    "read_checkpoint",
]
