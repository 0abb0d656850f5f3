"""The GLM model: config, masks and the Flax module."""

from glm_jax.model.config import ModelConfig
from glm_jax.model.glm import GLM, init_cache, stack_layers, unstack_layers

__all__ = ["GLM", "ModelConfig", "init_cache", "stack_layers", "unstack_layers"]
