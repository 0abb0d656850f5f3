"""Pretraining as a task of the one training loop (glm_jax/loop.py).

What pretraining plugs in: GLM's token-level loss (``train.TokenLoss``, spec
3.5) in the one step factory, the endless, checkpointable batches of a seqio task
(glm_jax/data/pipeline.py), a freshly initialised state, and an evaluation of the
held-out split's token loss and infilling accuracy every ``train.eval_every`` steps
and at the end. The ``train`` config section (glm_jax/train.py ``TrainConfig``)
sets the loop.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from glm_jax import loop, multihost, sharding, train, train_state
from glm_jax import metrics as metrics_lib
from glm_jax.checkpointing import as_iterator_state
from glm_jax.config import Config
from glm_jax.optim import make_optimizer

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]
TrainResult = loop.LoopResult


def evaluate(
    eval_step: Callable, params: Any, batches: Iterable[Batch], mesh, global_batch_size: int, max_batches: int
) -> dict[str, float]:
    """Token-level loss and infilling accuracy over up to ``max_batches`` batches."""
    sums = {"ce": 0.0, "correct": 0.0, "loss_tokens": 0.0}
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        out = eval_step(params, multihost.global_batch_from_local(
            {k: np.asarray(v) for k, v in batch.items()}, mesh, global_batch_size))
        for key in sums:
            sums[key] += float(out[key])
    tokens = max(sums["loss_tokens"], 1.0)
    return {"loss": sums["ce"] / tokens, "accuracy": sums["correct"] / tokens, "loss_tokens": sums["loss_tokens"]}


def train_step_for(config: Config, mesh) -> tuple[Any, Callable, Callable]:
    """``(optimizer, schedule, jitted train step)`` of a pretraining run on ``mesh``:
    what ``glm-jax train`` runs and ``glm-jax compile`` compiles for a TPU slice."""
    tc = config.train
    optimizer, schedule = make_optimizer(config.optimizer)
    train_step = train.make_train_step(
        config.model, optimizer, mesh, loss=train.TokenLoss(logits_capacity=tc.logits_capacity), schedule=schedule,
        num_microbatches=tc.num_microbatches, seed=tc.seed, skip_nonfinite=tc.on_nonfinite == "skip_step",
    )
    return optimizer, schedule, train_step


def run(
    config: Config,
    train_data: Iterator[Batch],
    eval_data: Optional[Callable[[], Iterable[Batch]]] = None,
    *,
    print_fn: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.model`` for ``config.train.steps`` steps, resuming if possible.

    Args:
      config: the resolved run config (saved with every checkpoint).
      train_data: this process's batches ``[global_batch / processes, ...]``, endless.
        If it is a glm_jax.checkpointing.DataIteratorState or has get_state/set_state
        (e.g. SkippingIterator), its position is checkpointed too, so a resumed run
        sees exactly the batches an uninterrupted one would have.
      eval_data: returns a fresh iterable of held-out batches for each evaluation.
    """
    tc = config.train
    mesh = sharding.mesh_from_config(config.mesh)
    optimizer, _, train_step = train_step_for(config, mesh)
    eval_step = train.make_eval_step(config.model, mesh, loss=train.TokenLoss(logits_capacity=tc.logits_capacity))
    try:
        data_state = as_iterator_state(train_data)
        train_data = data_state
    except TypeError:
        data_state = None
        logger.warning("train_data cannot be checkpointed: a resumed run will not see the same batches")

    def evaluate_at(step: int, state: train_state.TrainState, writer: metrics_lib.MetricsWriter) -> dict[str, float]:
        result = evaluate(eval_step, state.params, eval_data(), mesh, tc.global_batch_size, tc.eval_batches)
        writer.write(step, result, prefix="eval/")
        print_fn(f"eval at step {step}: loss {result['loss']:.4f} | infilling accuracy {result['accuracy']:.4f}")
        return {"step": step, **{f"eval_{k}": v for k, v in result.items()}}

    def describe(start_step: int, mesh) -> list[str]:
        abstract_params = train_state.params_layout(config.model, mesh)[0]
        n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
        return [
            f"training {n_params:,} parameters on {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"mesh {dict(mesh.shape)}, steps {start_step}->{tc.steps}, global batch {tc.global_batch_size}"
        ]

    task = loop.LoopTask(
        train_step=train_step,
        batches=lambda start_step: train_data,  # its position was restored with the state
        init_state=lambda shardings: train_state.init_train_state(config.model, optimizer, mesh, tc.seed),
        weight_key=train.TokenLoss.count,
        data_state=data_state,
        evaluate=evaluate_at if eval_data is not None else None,
        describe=describe,
    )
    settings = loop.LoopSettings(
        section="train", total_steps=tc.steps, global_batch_size=tc.global_batch_size, log_every=tc.log_every,
        output_dir=tc.output_dir, on_nonfinite=tc.on_nonfinite, max_consecutive_skips=tc.max_consecutive_skips,
        eval_every=tc.eval_every or None, peak_tflops=tc.peak_tflops,
    )
    return loop.run(settings, task, run_config=config, model_config=config.model, optimizer=optimizer, mesh=mesh,
                    checkpoint=config.checkpoint, print_fn=print_fn)
