"""The training loop: one for every task (pretraining, cloze fine-tuning, ...).

A task plugs in what differs (:class:`LoopTask`): its jitted train step (one
step factory, glm_jax/train.py, with the task's loss), its batches, its initial
state, and its evaluation. The loop owns what every run shares, in this order per
step: global batch from this process's rows (glm_jax/multihost.py), the update,
the non-finite guard (glm_jax/nonfinite.py), a progress line and TensorBoard
scalars every ``log_every`` steps, orbax checkpoints with preemption
(glm_jax/checkpointing), evaluation. It syncs with the host once per log interval.

Order at a step that does several things: log, save, stop if preempted, evaluate.
The state is saved before any evaluation (which may fail or be cut short), and a
preempted run stops without evaluating: its grace period is for the save. A state
with a NaN/inf is never saved, evaluated or exported.

A *boundary* step (the last one, and those the task names: for fine-tuning every
epoch's end) is always logged, saved and evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, Optional

import jax
import numpy as np

from glm_jax import metrics as metrics_lib
from glm_jax import multihost, train_state
from glm_jax.checkpointing import CheckpointConfig, Checkpointer, install_preemption_handler
from glm_jax.model import ModelConfig
from glm_jax.nonfinite import NonFiniteGuard
from glm_jax.plots import write_run_curves
from glm_jax.typed_config import to_yaml

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]
Record = dict[str, Any]

# Dense bf16 peak per device, TFLOP/s (vendor figures), for the MFU estimate.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,
    "NVIDIA H200": 989.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,  # what libtpu's v5p devices report as device_kind (v5e is "TPU v5 lite")
    "TPU v6 lite": 918.0,
}


def peak_flops(per_device_tflops: Optional[float] = None) -> Optional[float]:
    """Total peak FLOP/s of the devices (``per_device_tflops``, else the table for
    this device kind), or None when unknown (e.g. CPU)."""
    per_device = per_device_tflops if per_device_tflops is not None else PEAK_TFLOPS.get(jax.devices()[0].device_kind)
    return None if per_device is None else per_device * 1e12 * jax.device_count()


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from a run's config section (``train`` or ``finetune``).

    Attributes:
      section: the config section's name, used in messages (``train.on_nonfinite``).
      total_steps: the step the run ends at.
      global_batch_size: rows of each global batch (all processes).
      log_every: steps between progress lines.
      eval_every: steps between evaluations besides the boundaries; None: only at them.
      output_dir: config.yaml and logs/ (and checkpoints/ unless
        ``checkpoint.directory`` is set).
      on_nonfinite, max_consecutive_skips: glm_jax/nonfinite.py.
      peak_tflops: per device, for the MFU estimate; None: the table's.
    """

    section: str
    total_steps: int
    global_batch_size: int
    log_every: int
    output_dir: str
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 10
    eval_every: Optional[int] = None
    peak_tflops: Optional[float] = None


@dataclasses.dataclass
class LoopTask:
    """What one task plugs into the loop.

    Attributes:
      train_step: the jitted ``(state, global_batch, static) -> (state, metrics)``
        of :func:`glm_jax.train.make_train_step`; its metrics carry ``weight_key``.
      batches: ``start_step -> iterator`` of this process's batches from that step on.
      init_state: ``state_shardings -> TrainState`` for a run without a checkpoint.
      weight_key: the metric that weighs each step in an interval's mean
        (``loss_tokens`` for token losses, ``examples`` for per-example ones).
      data_state: the batches' checkpointable position (saved and restored with
        the state), or None when ``batches`` derives it from the step.
      is_boundary: steps that are always logged, saved and evaluated besides the last.
      evaluate: ``(step, state, writer) -> record``: evaluates, prints and writes
        ``eval/`` scalars with the run's ``metrics.MetricsWriter``; or None.
      pending_evaluation: ``start_step -> bool``: a resumed run's start was saved but
        not evaluated (then it is evaluated first).
      static: ``local_batch -> hashable`` static argument of ``train_step`` (None).
      extra: ``step -> dict`` added to each progress record (e.g. the epoch).
      describe: ``(start_step, mesh) -> lines`` printed once the state is in hand.
    """

    train_step: Callable[..., tuple[train_state.TrainState, dict[str, jax.Array]]]
    batches: Callable[[int], Iterator[Batch]]
    init_state: Callable[[Any], train_state.TrainState]
    weight_key: str
    data_state: Any = None
    is_boundary: Optional[Callable[[int], bool]] = None
    evaluate: Optional[Callable[[int, train_state.TrainState, metrics_lib.MetricsWriter], Record]] = None
    pending_evaluation: Callable[[int], bool] = lambda step: False
    static: Callable[[Batch], Hashable] = lambda batch: None
    extra: Callable[[int], Record] = lambda step: {}
    describe: Callable[[int, Any], list[str]] = lambda start, mesh: []


@dataclasses.dataclass
class LoopResult:
    """What a run leaves behind besides its files."""

    state: train_state.TrainState
    start_step: int
    final_step: int
    history: list[Record]  # one record per log interval and per evaluation
    stopped_early: bool  # preempted (SIGTERM / JAX preemption sync point)


def checkpoint_config(config: CheckpointConfig, output_dir: str | Path) -> CheckpointConfig:
    """``config`` with its directory defaulting to ``<output_dir>/checkpoints``."""
    if config.directory is not None:
        return config
    return dataclasses.replace(config, directory=str(Path(output_dir) / "checkpoints"))


def run(
    settings: LoopSettings,
    task: LoopTask,
    *,
    run_config: Any,
    model_config: ModelConfig,
    optimizer: Any,
    mesh: jax.sharding.Mesh,
    checkpoint: CheckpointConfig,
    print_fn: Callable[[str], None] = print,
) -> LoopResult:
    """Train ``task`` from its latest checkpoint (or its initial state) to
    ``settings.total_steps``.

    Args:
      run_config: the resolved run config, written to ``<output_dir>/config.yaml``
        and saved with every checkpoint.
      model_config, optimizer, mesh: what the state is built and laid out from
        (glm_jax/train_state.py ``train_state_shardings``).
      checkpoint: the ``checkpoint`` config section (directory resolved here).
    """
    is_main = jax.process_index() == 0
    output_dir = Path(settings.output_dir)
    total = settings.total_steps
    abstract_state, state_shardings = train_state.train_state_shardings(model_config, optimizer, mesh)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
    )
    ckpt_config = checkpoint_config(checkpoint, output_dir)
    data_state = task.data_state
    guard = NonFiniteGuard(settings.on_nonfinite, settings.max_consecutive_skips, settings.section)
    history: list[Record] = []
    stopped_early = False
    with install_preemption_handler(), Checkpointer(ckpt_config) as checkpointer:
        restored = checkpointer.restore_latest(target, data_iterator=data_state)
        if restored is None:
            start_step, state = 0, task.init_state(state_shardings)
        else:
            start_step, state = restored
            print_fn(f"resumed from step {start_step} ({ckpt_config.directory})")
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(to_yaml(run_config))
        # Opened once a state is in hand: a run that cannot start leaves no event file.
        writer = metrics_lib.MetricsWriter(output_dir / "logs", enabled=is_main)
        for line in task.describe(start_step, mesh):
            print_fn(line)

        def check_health() -> int:
            # Before anything leaves the device for good (a save, an export, an
            # evaluation record): a NaN state is never kept (glm_jax/nonfinite.py).
            return guard.check(checkpointer.describe_latest())

        def evaluate(step: int) -> None:
            check_health()
            history.append(task.evaluate(step, state, writer))
            writer.flush()

        if task.evaluate is not None and start_step and task.pending_evaluation(start_step):
            evaluate(start_step)  # saved, then stopped before its evaluation finished
        progress = None
        interval: list[dict[str, jax.Array]] = []
        step = start_step
        batches = task.batches(start_step) if start_step < total else iter(())
        while step < total:
            local_batch = next(batches)
            batch = multihost.global_batch_from_local(
                {k: np.asarray(v) for k, v in local_batch.items()}, mesh, settings.global_batch_size
            )
            if progress is None:
                flops = metrics_lib.train_flops_per_token(model_config, batch["tokens"].shape[-1])
                progress = metrics_lib.Progress(
                    total, flops, peak_flops(settings.peak_tflops), start_step=step,
                    output_layer_flops=metrics_lib.output_layer_flops_per_position(model_config))
            state, step_metrics = task.train_step(state, batch, task.static(local_batch))
            step += 1
            interval.append(step_metrics)
            guard.observe(step, step_metrics)
            boundary = step == total or (task.is_boundary is not None and task.is_boundary(step))
            if step % settings.log_every == 0 or boundary:
                history.append(log_interval(step, interval, progress, writer, print_fn, task))
                interval = []
                check_health()
            stop = checkpointer.should_stop(step)
            if stop or boundary or checkpointer.would_save(step):
                check_health()
                checkpointer.save(step, state, data_iterator=data_state, config=run_config, force=stop or boundary)
            if stop:
                print_fn(f"preempted: saved step {step} and stopping")
                stopped_early = True
                break
            if task.evaluate is not None and (boundary or (settings.eval_every and step % settings.eval_every == 0)):
                evaluate(step)
    writer.close()
    if is_main:
        write_run_curves(output_dir / "logs")  # logs/loss_curve.png; warns instead of failing
    return LoopResult(state, start_step, step, history, stopped_early)


def log_interval(step: int, interval: list, progress, writer, print_fn, task: LoopTask) -> Record:
    """The interval's progress record (means weighted by ``task.weight_key``, like
    each step's own loss), written as ``train/`` scalars and printed."""
    host = [metrics_lib.to_host(m) for m in interval]
    weight = max(sum(m[task.weight_key] for m in host), 1.0)
    record = {
        "loss": sum(m["loss"] * m[task.weight_key] for m in host) / weight,
        "accuracy": sum(m["accuracy"] * m[task.weight_key] for m in host) / weight,
        "grad_norm": host[-1]["grad_norm"],
        "param_norm": host[-1]["param_norm"],
        "learning_rate": host[-1].get("learning_rate", float("nan")),
        "skipped_steps": sum(m["nonfinite"] for m in host),
    }
    logit_positions = sum(m["logit_positions"] for m in host) if "logit_positions" in host[0] else None
    rates = progress.update(step, sum(m["tokens"] for m in host), logit_positions)
    record.update(rates)
    writer.write(step, record, prefix="train/")
    writer.flush()
    extra = task.extra(step)
    prefix = "".join(f"{key} {value} | " for key, value in extra.items())
    print_fn(prefix + progress.line(step, record, rates))
    return {"step": step, **extra, **record}
