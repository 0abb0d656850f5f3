"""Several processes, one mesh: distributed start-up and per-process input.

JAX runs one Python process per host; together they see every device, and a jitted
step runs on all of them (multi-controller SPMD). Each process must therefore

1. call :func:`initialize` before any other JAX call, and
2. feed only its own rows of the global batch: :func:`process_batch_indices` says
   which, and :func:`global_batch_from_local` assembles the global arrays.

On CPU the cross-process collectives go through gloo: the flag
``jax_cpu_collectives_implementation`` defaults to ``'gloo'`` in JAX 0.10, so no
setting is needed (tests/test_multihost.py runs two CPU processes with it).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from glm_jax import sharding


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    local_device_ids: Optional[Sequence[int]] = None,
    auto_detect: bool = False,
    timeout_s: int = 300,
) -> bool:
    """Join the distributed run, if one is configured.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes, process_id: this run's size and this process's rank.
      local_device_ids: restrict this process to some local devices.
      auto_detect: with no address given, let JAX detect the cluster (Cloud TPU,
        SLURM, Open MPI, Kubernetes) instead of running single-process.
      timeout_s: how long to wait for the other processes to join.

    Returns:
      True if ``jax.distributed`` was initialised, False for a single-process run
      (no address, no auto-detection).

    Raises:
      ValueError: an address without ``num_processes`` and ``process_id`` or the
        reverse, or a ``process_id`` outside ``[0, num_processes)``.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given) and not auto_detect:
        return False
    if any(given) and not all(given):
        raise ValueError(
            "coordinator_address, num_processes and process_id must be given together, got "
            f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:  # type: ignore[operator]
        raise ValueError(f"process_id {process_id} is not in [0, num_processes={num_processes})")
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    return True


def process_batch_indices(mesh: Mesh, global_batch_size: int) -> np.ndarray:
    """The rows of the global batch that this process must load, ascending.

    They are the rows held by this process's devices under the batch sharding
    (data x fsdp); replicas over ``tensor`` share rows. Usually one contiguous block,
    but not necessarily, so the answer is an index array.

    Raises:
      ValueError: ``global_batch_size`` does not divide over the batch shards.
    """
    shards = int(np.prod([mesh.shape[a] for a in sharding.BATCH_AXES]))
    if global_batch_size % shards:
        raise ValueError(
            f"train.global_batch_size ({global_batch_size}) is not divisible by the data*fsdp mesh size ({shards})"
        )
    index_map = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    blocks = sorted({rows[0].indices(global_batch_size)[:2] for rows in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def global_batch_from_local(
    local_batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    global_batch_size: Optional[int] = None,
) -> dict[str, jax.Array]:
    """Global ``[global_batch, ...]`` arrays, sharded over data x fsdp, from each
    process's rows (in the order of :func:`process_batch_indices`).

    Args:
      local_batch: this process's rows of every feature, ``[local_batch, ...]``.
      mesh: the mesh the train step runs on.
      global_batch_size: checked against the local rows when given; otherwise
        inferred (local rows times the number of processes sharing the batch).

    With one process this is ``shard_batch``: the local batch is the global one.
    """
    batch_sharding = sharding.batch_sharding(mesh)
    expected_rows = None
    if global_batch_size is not None:
        expected_rows = len(process_batch_indices(mesh, global_batch_size))
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        if expected_rows is not None and value.shape[0] != expected_rows:
            raise ValueError(
                f"batch feature {name!r} has {value.shape[0]} local rows; with a global batch of "
                f"{global_batch_size} this process holds {expected_rows}"
            )
        global_shape = None if global_batch_size is None else (global_batch_size, *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(batch_sharding, value, global_shape)
    return out


def gather_to_host(tree):
    """Numpy copies of (possibly sharded) arrays. With several processes each holds only
    its shards, so this is a collective: every process must call it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
