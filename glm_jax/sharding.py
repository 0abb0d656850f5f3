"""Device mesh and the one table of logical-axis rules.

The model names every parameter and key activation with logical axes (vocab, embed,
heads, mlp, activation_batch, ...; see glm_jax/model/glm.py). This module is the only
place that maps those names onto the mesh axes ``('data', 'fsdp', 'tensor')``:

* ``data``: pure data parallelism (parameters replicated).
* ``fsdp``: data parallelism with parameters and optimizer state sharded along
  ``embed`` (ZeRO-3 style; gathered per layer by XLA).
* ``tensor``: Megatron-style tensor parallelism over heads, MLP width and vocabulary.

The batch is split over ``data`` and ``fsdp`` together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or None = replicated). Parameters first, then activations.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("mlp", "tensor"),
    ("position", None),
    ("norm", None),
    ("layers", None),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def make_mesh(
    ici_shape: Sequence[int],
    dcn_shape: Optional[Sequence[int]] = None,
    devices: Optional[Sequence[jax.Device]] = None,
) -> Mesh:
    """Build a ``('data', 'fsdp', 'tensor')`` mesh with Auto axis types.

    Args:
      ici_shape: per-slice mesh shape ``(data, fsdp, tensor)``; one entry may be -1 to
        take the remaining devices.
      dcn_shape: across-slice shape for multi-slice TPU pods (hybrid mesh); None or
        all ones for a single slice. One entry may be -1.
      devices: defaults to ``jax.devices()``.

    Auto axis types matter: ``jax.make_mesh`` now defaults to Explicit axes, under
    which Flax's logical sharding constraints fail.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = tuple(dcn_shape) if dcn_shape is not None else (1, 1, 1)
    num_slices = _fill_shape(dcn, _count_slices(devices), "mesh.dcn_shape")
    ici = _fill_shape(tuple(ici_shape), len(devices) // math.prod(num_slices), "mesh.ici_shape")
    if math.prod(num_slices) > 1:
        device_array = mesh_utils.create_hybrid_device_mesh(ici, num_slices, devices)
    else:
        device_array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _count_slices(devices: Sequence[jax.Device]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def _fill_shape(shape: tuple[int, ...], total: int, name: str) -> tuple[int, ...]:
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"{name} must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
    if sum(1 for s in shape if s == -1) > 1:
        raise ValueError(f"{name}: at most one entry may be -1, got {shape}")
    known = math.prod(s for s in shape if s != -1)
    if any(s == 0 or s < -1 for s in shape) or total % known:
        raise ValueError(f"{name}={shape} does not divide the {total} available devices")
    filled = tuple(total // known if s == -1 else s for s in shape)
    if math.prod(filled) != total:
        raise ValueError(f"{name}={shape} uses {math.prod(filled)} devices but {total} are available")
    return filled


@contextlib.contextmanager
def activate(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Make ``mesh`` and the logical rules current, so the model's activation
    constraints resolve. Wrap both init and jitted calls in it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh


def batch_shards_in_context() -> int:
    """How many shards the batch axis has under the mesh being traced (the abstract
    mesh of ``train_state.tracing_under`` or ``jax.set_mesh``); 1 without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    return math.prod(mesh.shape.get(axis, 1) for axis in BATCH_AXES)


def logical_sharding(logical_specs: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """A pytree of logical PartitionSpecs -> a pytree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of every ``[batch, ...]`` input: the batch over data and fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def abstract_params_and_shardings(init_fn, mesh: Mesh, *init_args, rules=LOGICAL_AXIS_RULES):
    """Shapes and shardings of a model's parameters without allocating them.

    Args:
      init_fn: ``(*init_args) -> variables`` whose leaves are logically partitioned
        (e.g. ``GLM(cfg).init``).

    Returns:
      ``(abstract_variables, shardings)``: unboxed ShapeDtypeStructs and the matching
      NamedShardings. Raises ValueError naming any parameter whose dimension does not
      divide its mesh axes.
    """
    boxed = jax.eval_shape(init_fn, *init_args)
    specs = nn.get_partition_spec(boxed)
    shardings = logical_sharding(specs, mesh, rules)
    # Unbox without re-applying the constraints: these are shapes, not traced values.
    abstract = jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
        boxed,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )
    check_divisible(abstract, shardings)
    return abstract, shardings


def check_divisible(abstract: Any, shardings: Any) -> None:
    """Fail clearly when a dimension is not divisible by the mesh axes it is split over."""
    problems = []
    flat_abstract = jax.tree_util.tree_flatten_with_path(abstract)[0]
    flat_shardings = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat_abstract, flat_shardings):
        for dim, (size, axes) in enumerate(zip(leaf.shape, sharding.spec)):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            parts = math.prod(sharding.mesh.shape[a] for a in axes)
            if size % parts:
                problems.append(
                    f"{jax.tree_util.keystr(path)} dim {dim} (size {size}) is not divisible by "
                    f"mesh axes {axes} (size {parts})"
                )
    if problems:
        raise ValueError("parameters do not fit the mesh:\n  " + "\n  ".join(problems))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host-global batch on the mesh (single-process helper)."""
    sharding = batch_sharding(mesh)
    size = math.prod(mesh.shape[a] for a in BATCH_AXES)
    for name, value in batch.items():
        if np.shape(value)[0] % size:
            raise ValueError(
                f"batch feature {name!r} has batch size {np.shape(value)[0]}, "
                f"not divisible by the data*fsdp mesh size {size}"
            )
    return {name: jax.device_put(value, sharding) for name, value in batch.items()}


# ----------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The ``mesh`` section of a run config: how devices form ``(data, fsdp, tensor)``.

    Attributes:
      ici_shape: the mesh within a slice (or within one host's fast interconnect);
        one entry may be -1 for "all remaining devices". The default is pure FSDP.
      dcn_shape: how slices are combined (multi-slice TPU pods); (1, 1, 1) for one
        slice. The full mesh axis sizes are ``ici_shape * dcn_shape`` per axis.
    """

    ici_shape: tuple[int, int, int] = (1, -1, 1)
    dcn_shape: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self):
        for name in ("ici_shape", "dcn_shape"):
            shape = tuple(getattr(self, name))
            if len(shape) != len(MESH_AXES):
                raise ValueError(f"mesh.{name} must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
            if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
                raise ValueError(f"mesh.{name} entries must be positive, with at most one -1; got {shape}")


def mesh_from_config(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The mesh a config describes, over ``devices`` (default: all, every process).

    Raises ValueError naming ``mesh.ici_shape`` / ``mesh.dcn_shape`` when the shape
    does not match the number of devices.
    """
    return make_mesh(config.ici_shape, config.dcn_shape, devices)
