"""The training loop: data in, sharded steps, progress, evaluation, checkpoints.

Everything it runs is built elsewhere (train step: glm_jax/train.py; checkpoints:
glm_jax/checkpointing; metrics: glm_jax/metrics.py); this module only orders them.
The loop syncs with the host once per ``train.log_every`` steps, when it turns the
interval's device metrics into a progress line and TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from glm_jax import metrics as metrics_lib
from glm_jax import multihost, sharding, train
from glm_jax.checkpointing import Checkpointer, as_iterator_state, install_preemption_handler
from glm_jax.config import Config, to_yaml
from glm_jax.nonfinite import NonFiniteGuard
from glm_jax.optim import make_optimizer

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]

# Dense bf16 peak per device, TFLOP/s (vendor figures), for the MFU estimate.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


@dataclasses.dataclass
class TrainResult:
    """What a run leaves behind (besides its checkpoints and logs)."""

    state: train.TrainState
    start_step: int
    final_step: int
    history: list[dict[str, float]]  # one record per log interval (and evaluation)
    stopped_early: bool  # preempted (SIGTERM / JAX preemption sync point)


def peak_flops(config: Config) -> Optional[float]:
    """Total peak FLOP/s of the devices, or None when unknown (e.g. CPU)."""
    per_device = config.train.peak_tflops
    if per_device is None:
        per_device = PEAK_TFLOPS.get(jax.devices()[0].device_kind)
    return None if per_device is None else per_device * 1e12 * jax.device_count()


def _to_global(batch: Batch, mesh, global_batch_size: int) -> dict[str, jax.Array]:
    return multihost.global_batch_from_local(
        {k: np.asarray(v) for k, v in batch.items()}, mesh, global_batch_size
    )


def evaluate(
    eval_step: Callable, params: Any, batches: Iterable[Batch], mesh, global_batch_size: int, max_batches: int
) -> dict[str, float]:
    """Token-level loss and infilling accuracy over up to ``max_batches`` batches."""
    sums = {"ce": 0.0, "correct": 0.0, "loss_tokens": 0.0}
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        out = eval_step(params, _to_global(batch, mesh, global_batch_size))
        for key in sums:
            sums[key] += float(out[key])
    tokens = max(sums["loss_tokens"], 1.0)
    return {"loss": sums["ce"] / tokens, "accuracy": sums["correct"] / tokens, "loss_tokens": sums["loss_tokens"]}


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
        (e.g. SkippingIterator), its position is checkpointed too, so a resumed run sees exactly the batches an
        uninterrupted one would have.
      eval_data: returns a fresh iterable of held-out batches for each evaluation.
    """
    tc = config.train
    is_main = jax.process_index() == 0
    output_dir = Path(tc.output_dir)
    mesh = sharding.mesh_from_config(config.mesh)
    optimizer, schedule = make_optimizer(config.optimizer)
    abstract_state, state_shardings = train.train_state_shardings(config.model, optimizer, mesh)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
    )
    train_step = train.make_train_step(
        config.model, optimizer, mesh, schedule=schedule, num_microbatches=tc.num_microbatches, seed=tc.seed
    )
    eval_step = train.make_eval_step(config.model, mesh)

    ckpt_config = config.checkpoint
    if ckpt_config.directory is None:
        ckpt_config = dataclasses.replace(ckpt_config, directory=str(output_dir / "checkpoints"))
    try:
        data_state = as_iterator_state(train_data)
        train_data = data_state
    except TypeError:
        data_state = None
        logger.warning("train_data cannot be checkpointed: a resumed run will not see the same batches")

    guard = NonFiniteGuard(tc.on_nonfinite, tc.max_consecutive_skips, "train")
    history: list[dict[str, float]] = []
    stopped_early = False
    with install_preemption_handler(), Checkpointer(ckpt_config) as checkpointer:
        restored = checkpointer.restore_latest(target, data_iterator=data_state)
        if restored is None:
            start_step, state = 0, train.init_train_state(config.model, optimizer, mesh, tc.seed)
        else:
            start_step, state = restored
            print_fn(f"resumed from step {start_step} ({ckpt_config.directory})")
        if is_main:
            (output_dir).mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(to_yaml(config))
        # Opened once a state is in hand: a run that cannot start leaves no event file.
        writer = metrics_lib.MetricsWriter(output_dir / "logs", enabled=is_main)
        n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))
        print_fn(
            f"training {n_params:,} parameters on {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"mesh {dict(mesh.shape)}, steps {start_step}->{tc.steps}, global batch {tc.global_batch_size}"
        )

        def check_health() -> int:
            # Before anything leaves the device for good (a save, an export, an
            # evaluation record): a NaN state is never kept (glm_jax/nonfinite.py).
            return guard.check(checkpointer.describe_latest())

        progress = None
        interval: list[dict[str, jax.Array]] = []
        step = start_step
        while step < tc.steps:
            batch = _to_global(next(train_data), mesh, tc.global_batch_size)
            if progress is None:
                seq_len = batch["tokens"].shape[1]
                progress = metrics_lib.Progress(
                    tc.steps, metrics_lib.train_flops_per_token(config.model, seq_len), peak_flops(config),
                    start_step=step,
                )
            state, step_metrics = train_step(state, batch)
            step += 1
            interval.append(step_metrics)
            guard.observe(step, step_metrics)
            if step % tc.log_every == 0 or step == tc.steps:
                record = _log_interval(step, interval, progress, writer, print_fn)
                history.append(record)
                interval = []
                check_health()
            stop = checkpointer.should_stop(step)
            if stop or step == tc.steps or checkpointer.would_save(step):
                check_health()
                # The last step is saved before the final evaluation, which may fail.
                checkpointer.save(step, state, data_iterator=data_state, config=config, force=stop or step == tc.steps)
            if stop:
                print_fn(f"preempted: saved step {step} and stopping")
                stopped_early = True
                break
            if eval_data is not None and tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
                check_health()
                history.append(_run_eval(step, eval_step, state, eval_data, mesh, tc, writer, print_fn))
        if not stopped_early and step > start_step and eval_data is not None:
            history.append(_run_eval(step, eval_step, state, eval_data, mesh, tc, writer, print_fn))
    writer.close()
    if is_main:
        # logs/loss_curve.png beside the TensorBoard events; never fails the run (warns instead).
        from glm_jax.plots import write_run_curves

        write_run_curves(output_dir / "logs")
    return TrainResult(state, start_step, step, history, stopped_early)


def _log_interval(step, interval, progress, writer, print_fn) -> dict[str, float]:
    host = [metrics_lib.to_host(m) for m in interval]
    loss_tokens = sum(m["loss_tokens"] for m in host)
    tokens = sum(m["tokens"] for m in host)
    # Token-weighted over the interval, like the per-step loss itself.
    record = {
        "loss": sum(m["loss"] * m["loss_tokens"] for m in host) / max(loss_tokens, 1.0),
        "accuracy": sum(m["accuracy"] * m["loss_tokens"] for m in host) / max(loss_tokens, 1.0),
        "grad_norm": host[-1]["grad_norm"],
        "param_norm": host[-1]["param_norm"],
        "learning_rate": host[-1].get("learning_rate", float("nan")),
        "skipped_steps": sum(m["nonfinite"] for m in host),
    }
    rates = progress.update(step, tokens)
    record.update(rates)
    writer.write(step, record, prefix="train/")
    writer.flush()
    print_fn(progress.line(step, record, rates))
    return {"step": step, **record}


def _run_eval(step, eval_step, state, eval_data, mesh, tc, writer, print_fn) -> dict[str, float]:
    result = evaluate(eval_step, state.params, eval_data(), mesh, tc.global_batch_size, tc.eval_batches)
    writer.write(step, result, prefix="eval/")
    writer.flush()
    print_fn(f"eval at step {step}: loss {result['loss']:.4f} | infilling accuracy {result['accuracy']:.4f}")
    return {"step": step, **{f"eval_{k}": v for k, v in result.items()}}
