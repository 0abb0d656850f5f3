"""Checkpoints of the train state, the data position and the config, with orbax.

Each saved step is one directory written by an orbax ``CheckpointManager``::

    <directory>/<step>/
      state/     the train-state pytree (StandardSave: OCDBT + zarr; each process
                 writes only its own shards, so this works for any mesh)
      data/      the data iterator's position, one ``process_<i>/`` per process
      config/    config.yaml: the run's resolved config, for provenance
    <directory>/quarantine/
                 step directories that could not be restored, moved aside

A step directory appears under its final name only once every item is written
(orbax writes ``<step>.orbax-checkpoint-tmp`` and renames it), so a run killed in
the middle of a save leaves an uncommitted directory, never a torn step.

Saving is asynchronous by default: ``save`` blocks only while the arrays are
copied to host memory and the data position is written, then the train loop
continues while the bytes go to disk. The data position is written
synchronously on purpose: the loop advances the iterator as soon as ``save``
returns.

Restoring (``restore_latest``) goes into the shardings of the abstract target you
pass, on whatever mesh you have now. A checkpoint that fails to restore is skipped
for the previous one with a warning, then moved to ``quarantine/`` (never
deleted), so the run can save that step again.

Preemption: inside ``install_preemption_handler()``, SIGTERM sets a flag. The loop
asks ``should_stop(step)`` after every step; it is also True at JAX's preemption
sync point in multi-process runs, where all hosts agree on the step::

    with install_preemption_handler(), Checkpointer(config.checkpoint) as ckpt:
        restored = ckpt.restore_latest(abstract_state, data)
        step, state = restored if restored else (0, init_state())
        while step < num_steps:
            state = train_step(state, next(data))
            step += 1
            ckpt.save(step, state, data_iterator=data, config=config)
            if ckpt.should_stop(step):
                ckpt.save(step, state, data_iterator=data, config=config, force=True)
                break
    # leaving the `with` waits for the last save to commit

``step`` is the number of completed train steps: the state saved at step s is the
state after s updates, and the data iterator has yielded exactly s batches.

Modules: ``checkpointer`` (CheckpointConfig, Checkpointer; ``watchdog``: storage faults mid-save), ``data`` (data
iterator positions), ``preemption`` (SIGTERM), ``items`` (orbax handlers for the
data and config items).
"""

from glm_jax.checkpointing.checkpointer import CheckpointConfig, CheckpointError, Checkpointer
from glm_jax.checkpointing.data import (
    DataIteratorState,
    JsonIteratorState,
    SkippingIterator,
    StatefulIterator,
    TfDataIteratorState,
    as_iterator_state,
)
from glm_jax.checkpointing.preemption import (
    install_preemption_handler,
    preempted_exit_code,
    preemption_requested,
)

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "Checkpointer",
    "DataIteratorState",
    "JsonIteratorState",
    "SkippingIterator",
    "StatefulIterator",
    "TfDataIteratorState",
    "as_iterator_state",
    "install_preemption_handler",
    "preempted_exit_code",
    "preemption_requested",
]
