"""The train state and its sharded layout: what a step updates and where it lives.

The state is a plain pytree (step, params, optimizer state), laid out from the
model's logical axis annotations (glm_jax/sharding.py): parameters and optimizer
moments share one layout, optimizer scalars (Adam's count) are replicated. Nothing
here allocates more than a device's shards: shapes come from ``jax.eval_shape``,
and a fresh state is created inside one jit whose outputs carry the shardings.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glm_jax import sharding
from glm_jax.model import GLM, ModelConfig


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a plain pytree (no functions inside),
    so it checkpoints and shards as is.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the model parameters (unboxed).
      opt_state: the optax state of the optimizer.
    """

    step: jax.Array
    params: Any
    opt_state: Any



@contextlib.contextmanager
def tracing_under(mesh: Mesh, rules: Any):
    """The mesh and rules while a jitted function traces (``jax.set_mesh`` is not
    allowed inside jit; the abstract mesh is all the constraints need)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value (scalars, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _init_inputs(mesh: Mesh) -> dict[str, jax.Array]:
    """A dummy batch for tracing ``model.init``: parameter shapes do not depend on the
    batch, and one row per data-parallel shard keeps every constraint divisible."""
    rows = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    ids = jnp.zeros((rows, 2), jnp.int32)
    return dict(tokens=ids, position_ids=ids, block_position_ids=ids, sep=jnp.ones((rows,), jnp.int32))


def params_layout(
    model_config: ModelConfig, mesh: Mesh, rules: Any = sharding.LOGICAL_AXIS_RULES
) -> tuple[Any, Any]:
    """``(abstract_params, param_shardings)`` of the model on ``mesh``, without
    allocating anything. Raises ValueError naming any parameter whose dimension does
    not divide its mesh axes."""
    model = GLM(model_config)
    with tracing_under(mesh, rules):
        return sharding.abstract_params_and_shardings(
            lambda rng: model.init(rng, **_init_inputs(mesh))["params"], mesh, jax.random.key(0), rules=rules
        )


def train_state_shardings(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> tuple[TrainState, TrainState]:
    """``(abstract_state, state_shardings)``: ShapeDtypeStructs and NamedShardings.

    Optimizer-state trees shaped like the parameters (Adam's mu and nu) take the
    parameters' shardings; every other optimizer leaf (counts) is replicated.
    """
    abstract_params, param_shardings = params_layout(model_config, mesh, rules)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    whole = replicated(mesh)
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, param_sharding: param_sharding,
        abstract_opt_state,
        param_shardings,
        transform_non_params=lambda _: whole,
    )
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt_state
    )
    shardings = TrainState(step=whole, params=param_shardings, opt_state=opt_shardings)
    return abstract, shardings


def init_train_state(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array | int,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> TrainState:
    """A fresh state, created directly in its sharded layout.

    Init runs inside one jit whose outputs carry the state shardings, so every device
    materialises only its shards; no host ever holds the full model.

    Args:
      rng: a PRNG key or an int seed; with several processes, the same on each.
    """
    model = GLM(model_config)
    _, shardings = train_state_shardings(model_config, optimizer, mesh, rules)
    # A host constant, not an argument: a process-local key array cannot be an
    # input of a computation that spans processes.
    if isinstance(rng, int):
        seed, key_data = rng, None
    else:
        seed = None
        is_typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
        key_data = np.asarray(jax.random.key_data(rng) if is_typed else rng)

    def init() -> TrainState:
        key = jax.random.key(seed) if key_data is None else jax.random.wrap_key_data(key_data)
        with tracing_under(mesh, rules):
            params = nn.unbox(model.init(key, **_init_inputs(mesh))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return jax.jit(init, out_shardings=shardings)()
