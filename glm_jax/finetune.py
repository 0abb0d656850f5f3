"""Fine-tuning GLM on cloze tasks (spec 4.1, 4.3): epochs, evaluation, best model.

The protocol of the official ``finetune_glm.py``: start from a pretrained model,
train for a number of epochs with AdamW (lr 1e-5, 10% warmup, then linear decay
to 0.1x, weight decay 0.1, clip 1.0, dropout on), evaluate on the validation split
at the end of every epoch, and keep the best model: the reported dev score is the
best over epochs. The best parameters are exported as a glm-jax model directory
(``<output_dir>/best``, with the tokenizer of the starting model) and described in
``<output_dir>/best.json``.

The pieces are the pretraining loop's: the train state, its shardings and the
gradient accumulation (glm_jax/train.py), orbax checkpoints with preemption
(glm_jax/checkpointing), progress lines and TensorBoard scalars
(glm_jax/metrics.py); only the loss (glm_jax/cloze.py) and the epoch structure
differ. A run restarted with the same output directory resumes from its latest
checkpoint: the data position is a function of the step (epoch ``step //
steps_per_epoch``, shuffled with ``seed + epoch``, that many batches skipped).

Where the batches and the validation metrics come from is a :class:`ClozeData`:
``glm_jax.finetune_cli.SuperGLUEData`` for the seqio tasks of tasks/superglue, or
anything with its three methods.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import cloze, multihost, nonfinite, sharding, train
from glm_jax import metrics as metrics_lib
from glm_jax.checkpointing import CheckpointConfig, Checkpointer, install_preemption_handler
from glm_jax.model import ModelConfig
from glm_jax.model.config import RUNTIME_FIELDS, architecture_changes
from glm_jax.optim import OptimizerConfig
from glm_jax.sharding import MeshConfig

Batch = Mapping[str, np.ndarray]
PredictFn = Callable[[Iterator[Batch]], dict[int, int]]

BEST_DIR = "best"
BEST_RECORD = "best.json"
# Written into the exported best model directory: the run's config, so that
# `glm-jax eval` scores the model with the same task settings.
RUN_CONFIG = "finetune.yaml"

# ModelConfig fields a fine-tuning run may change from the starting model's.
RUNTIME_MODEL_FIELDS = RUNTIME_FIELDS


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The ``finetune`` config section: the task and the epoch loop.

    Attributes:
      task: SuperGLUE task (boolq, cb, copa, multirc, record, rte, wic, wsc); the
        CLI sets it from ``--task``.
      pattern_id: the pattern (spec 4.2); None: the official script's (spec 4.3).
      data_dir: a folder in the official JSONL layout (``RTE/train.jsonl``, ...);
        None: TFDS ``super_glue`` (prepared, nothing is downloaded).
      max_seq_length: row length L; None: the task's (spec 4.3).
      epochs: passes over the training split; the schedule spans all of them.
      batch_size: examples per update, over all devices and microbatches.
      eval_batch_size: examples per evaluation batch.
      num_microbatches: gradient accumulation; the update equals the full batch's.
      loss: ``cross_entropy`` over the choices, or WSC's ``mix`` (spec 4.1).
      length_penalty: multi-token scores are divided by n_tokens ** this (WSC: 1).
      train_split, eval_split: the splits trained on and evaluated each epoch.
      validation_metric: the metric that picks the best epoch; None: the first one
        the evaluation returns (the official default).
      seed: seeds the shuffling (``seed + epoch``) and the dropout masks.
      output_dir: checkpoints/, logs/, eval/epoch_N/ predictions, best/, best.json.
      log_every: steps between progress lines.
      on_nonfinite, max_consecutive_skips: as in ``train`` (glm_jax/nonfinite.py).
    """

    task: Optional[str] = None
    pattern_id: Optional[int] = None
    data_dir: Optional[str] = None
    max_seq_length: Optional[int] = None
    epochs: int = 1
    batch_size: int = 16
    eval_batch_size: int = 16
    num_microbatches: int = 1
    loss: str = "cross_entropy"
    length_penalty: float = 0.0
    train_split: str = "train"
    eval_split: str = "validation"
    validation_metric: Optional[str] = None
    seed: int = 0
    output_dir: str = "runs/finetune"
    log_every: int = 10
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 10

    def __post_init__(self):
        nonfinite.check_policy(self.on_nonfinite, self.max_consecutive_skips, "finetune")
        for name in ("epochs", "batch_size", "eval_batch_size", "num_microbatches", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"finetune.{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.num_microbatches:
            raise ValueError(
                f"finetune.batch_size ({self.batch_size}) must be divisible by "
                f"finetune.num_microbatches ({self.num_microbatches})"
            )
        if self.loss not in cloze.LOSSES:
            raise ValueError(f"finetune.loss must be one of {cloze.LOSSES}, got {self.loss!r}")
        if self.length_penalty < 0:
            raise ValueError(f"finetune.length_penalty must be >= 0, got {self.length_penalty}")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"finetune.max_seq_length must be >= 8 or null, got {self.max_seq_length}")


@dataclasses.dataclass(frozen=True)
class FinetuneRunConfig:
    """A fine-tuning run (``glm-jax finetune``); YAML files under configs/finetune/.

    ``model`` starts as the pretrained model directory's config; a file or an
    override may change only :data:`RUNTIME_MODEL_FIELDS` (dropout, dtype, remat).
    ``optimizer.decay_steps`` is replaced by the run's total steps (epochs x steps
    per epoch), so ``optimizer.warmup`` is a fraction of the whole run.
    """

    model: ModelConfig
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __str__(self) -> str:
        from glm_jax.config import to_yaml

        return to_yaml(self)


def check_same_architecture(run: ModelConfig, pretrained: ModelConfig, where: str) -> None:
    """ValueError naming every model field outside RUNTIME_MODEL_FIELDS that differs."""
    diffs = architecture_changes(run, pretrained)
    if diffs:
        raise ValueError(
            f"the fine-tuning config changes the architecture of {where} ({'; '.join(diffs)}); only "
            f"{', '.join(RUNTIME_MODEL_FIELDS)} may differ"
        )


# ---------------------------------------------------------------------- data side


class ClozeData(Protocol):
    """Where the loop gets its batches and its validation metrics.

    Batches are dicts of numpy arrays in the contract's layout (cloze.py), holding
    this process's rows of each global batch.
    """

    def steps_per_epoch(self) -> int:
        """Full training batches per epoch."""

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        """Epoch ``epoch``'s batches (at least steps_per_epoch), the same order on every call."""

    def evaluate(self, predict_fn: PredictFn, output_dir: Optional[str]) -> dict[str, float]:
        """Metrics of ``predict_fn``'s choices on the validation split; ``predict_fn``
        gets an iterator of whole batches (padding rows: example_id -1) and returns
        ``{example_id: choice index}``. Predictions may be written to ``output_dir``."""


# -------------------------------------------------------------------------- loop


@dataclasses.dataclass
class FinetuneResult:
    """What a run leaves behind besides its files."""

    state: train.TrainState
    start_step: int
    final_step: int
    steps_per_epoch: int
    history: list[dict[str, float]]  # progress records and one record per evaluation
    best: Optional[dict[str, Any]]  # the best.json record
    stopped_early: bool


def run(
    config: FinetuneRunConfig,
    data: ClozeData,
    pretrained: Callable[[Any], Any],
    *,
    tokenizer: Any = None,
    print_fn: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune, evaluating at each epoch end and exporting the best model.

    Args:
      config: the resolved run config (saved with each checkpoint).
      data: batches and validation metrics.
      pretrained: ``param_shardings -> params``, the starting weights laid out as
        asked (e.g. ``lambda s: load_model_dir(path, shardings=s)[1]``); not called
        when resuming from a checkpoint.
      tokenizer: a ``glm_jax.model_dir.TokenizerConfig`` with absolute file paths,
        stored with the exported best model; None exports weights and config only.
    """
    ft = config.finetune
    is_main = jax.process_index() == 0
    output_dir = Path(ft.output_dir)
    mesh = sharding.mesh_from_config(config.mesh)
    steps_per_epoch = data.steps_per_epoch()
    if steps_per_epoch < 1:
        raise ValueError(
            f"the {ft.train_split} split of {ft.task} has fewer examples than one batch "
            f"(finetune.batch_size={ft.batch_size})"
        )
    total = ft.epochs * steps_per_epoch
    # The schedule spans the whole run; the saved configs say so.
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, decay_steps=total))
    optimizer, train_step, eval_step = cloze.steps_for(
        config.model, config.optimizer, mesh, ft.loss, ft.length_penalty, ft.num_microbatches, ft.seed,
        ft.on_nonfinite == "skip_step",
    )
    abstract_state, state_shardings = train.train_state_shardings(config.model, optimizer, mesh)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
    )
    ckpt_config = config.checkpoint
    if ckpt_config.directory is None:
        ckpt_config = dataclasses.replace(ckpt_config, directory=str(output_dir / "checkpoints"))

    writer = metrics_lib.MetricsWriter(output_dir / "logs", enabled=is_main)
    history: list[dict[str, float]] = []
    stopped_early = False
    guard = nonfinite.NonFiniteGuard(ft.on_nonfinite, ft.max_consecutive_skips, "finetune")
    with install_preemption_handler(), Checkpointer(ckpt_config) as checkpointer:
        restored = checkpointer.restore_latest(target)
        if restored is None:
            start_step, state = 0, _initial_state(pretrained(state_shardings.params), optimizer, state_shardings)
        else:
            start_step, state = restored
            print_fn(f"resumed from step {start_step} ({ckpt_config.directory})")
        best = read_best(output_dir)
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(str(config))
        print_fn(
            f"fine-tuning {ft.task} on {jax.device_count()} {jax.devices()[0].platform} device(s), mesh "
            f"{dict(mesh.shape)}: {ft.epochs} epochs x {steps_per_epoch} steps of {ft.batch_size} examples, "
            f"steps {start_step}->{total}"
        )
        oc = config.optimizer
        print_fn(
            f"learning rate: peak {oc.learning_rate:g}, warmup {oc.warmup_iters:g} steps, {oc.decay_style} decay "
            f"to {oc.lr_decay_ratio:g}x at step {total} (optimizer.decay_steps = epochs x steps per epoch)"
        )
        resumed_at_epoch_end = start_step and start_step % steps_per_epoch == 0
        if resumed_at_epoch_end and not _epoch_evaluated(ft.output_dir, start_step // steps_per_epoch):
            # Saved at the epoch's end, then stopped before its evaluation finished:
            # evaluate it now, so the best-epoch choice sees every epoch.
            record, best = _end_epoch(config, data, eval_step, state, start_step, start_step // steps_per_epoch, mesh,
                                      writer, best, tokenizer, print_fn)
            history.append(record)
        progress, interval, step = None, [], start_step
        while step < total and not stopped_early:
            epoch = step // steps_per_epoch
            batches = itertools.islice(iter(data.train_batches(epoch)), step % steps_per_epoch, None)
            for local_batch in batches:
                batch = multihost.global_batch_from_local(
                    {k: np.asarray(v) for k, v in local_batch.items()}, mesh, ft.batch_size
                )
                if progress is None:
                    progress = metrics_lib.Progress(
                        total, metrics_lib.train_flops_per_token(config.model, batch["tokens"].shape[-1]),
                        _peak_flops(), start_step=step,
                    )
                # Multi-token rows need logits only over their answers (cloze.window_logits).
                window = cloze.answer_window(local_batch["loss_mask"]) if cloze.is_multi_token(local_batch) else None
                state, step_metrics = train_step(state, batch, window)
                step += 1
                interval.append(step_metrics)
                guard.observe(step, step_metrics)
                epoch_end = step % steps_per_epoch == 0
                if step % ft.log_every == 0 or epoch_end:
                    history.append(_log_interval(step, epoch, interval, progress, writer, print_fn))
                    interval = []
                stop = checkpointer.should_stop(step)
                if stop or epoch_end or checkpointer.would_save(step):
                    # A NaN state is never saved, evaluated or exported (glm_jax/nonfinite.py).
                    guard.check(checkpointer.describe_latest())
                    checkpointer.save(step, state, config=config, force=stop or epoch_end)
                if epoch_end:
                    record, best = _end_epoch(config, data, eval_step, state, step, epoch + 1, mesh, writer, best,
                                              tokenizer, print_fn)
                    history.append(record)
                if stop:
                    print_fn(f"preempted: saved step {step} and stopping")
                    stopped_early = True
                    break
                if epoch_end:
                    break
            else:
                raise ValueError(
                    f"the training data of epoch {epoch + 1} ended after step {step}, before its "
                    f"{steps_per_epoch} batches (ClozeData.steps_per_epoch)"
                )
    writer.close()
    if best is not None and not stopped_early:
        print_fn(
            f"best {best['metric']} {best['score']:.2f} at epoch {best['epoch']} (step {best['step']}); "
            f"model in {output_dir / BEST_DIR}"
        )
    return FinetuneResult(state, start_step, step, steps_per_epoch, history, best, stopped_early)


def _initial_state(params: Any, optimizer, state_shardings: train.TrainState) -> train.TrainState:
    def init(p):
        return train.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    return jax.jit(init, in_shardings=(state_shardings.params,), out_shardings=state_shardings)(params)


def _peak_flops() -> Optional[float]:
    from glm_jax.trainer import PEAK_TFLOPS

    per_device = PEAK_TFLOPS.get(jax.devices()[0].device_kind)
    return None if per_device is None else per_device * 1e12 * jax.device_count()


def _log_interval(step, epoch, interval, progress, writer, print_fn) -> dict[str, float]:
    host = [metrics_lib.to_host(m) for m in interval]
    examples = max(sum(m["examples"] for m in host), 1.0)
    record = {
        # Example-weighted over the interval, like each step's loss.
        "loss": sum(m["loss"] * m["examples"] for m in host) / examples,
        "accuracy": sum(m["accuracy"] * m["examples"] for m in host) / examples,
        "grad_norm": host[-1]["grad_norm"],
        "param_norm": host[-1]["param_norm"],
        "learning_rate": host[-1].get("learning_rate", float("nan")),
        "skipped_steps": sum(m["nonfinite"] for m in host),
    }
    rates = progress.update(step, sum(m["tokens"] for m in host))
    record.update(rates)
    writer.write(step, record, prefix="train/")
    writer.flush()
    print_fn(f"epoch {epoch + 1} | " + progress.line(step, record, rates))
    return {"step": step, "epoch": epoch + 1, **record}


EPOCH_DONE = "evaluated.json"  # eval/epoch_N/evaluated.json: epoch N is evaluated and its best kept


def _end_epoch(config, data, eval_step, state, step, epoch, mesh, writer, best, tokenizer, print_fn):
    """Evaluates epoch ``epoch``, keeps the best model, then marks the epoch done."""
    record = _evaluate_epoch(config, data, eval_step, state, step, epoch, mesh, writer, print_fn)
    best = _keep_best(config, record, best, state.params, tokenizer, print_fn)
    if jax.process_index() == 0:
        done = Path(config.finetune.output_dir) / "eval" / f"epoch_{epoch}" / EPOCH_DONE
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(record) + "\n")
    return record, best


def _epoch_evaluated(output_dir: str, epoch: int) -> bool:
    """Whether a run finished epoch ``epoch``'s evaluation; process 0 decides for
    every process (the evaluation is a collective)."""
    done = (Path(output_dir) / "eval" / f"epoch_{epoch}" / EPOCH_DONE).is_file()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
    return done


def _evaluate_epoch(config, data, eval_step, state, step, epoch, mesh, writer, print_fn) -> dict[str, Any]:
    sums: dict[str, float] = {}

    def predict_fn(batches: Iterator[Batch]) -> dict[int, int]:
        choices, batch_sums = cloze.predict(eval_step, state.params, batches, mesh)
        sums.update(batch_sums)
        return choices

    out_dir = Path(config.finetune.output_dir) / "eval" / f"epoch_{epoch}"
    scores = data.evaluate(predict_fn, str(out_dir))
    if not scores:
        raise ValueError(f"evaluating {config.finetune.task} on {config.finetune.eval_split} returned no metrics")
    loss = sums["loss"] / max(sums["examples"], 1.0)
    writer.write(step, {**scores, "loss": loss}, prefix="eval/")
    writer.flush()
    table = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
    print_fn(f"epoch {epoch} (step {step}) {config.finetune.eval_split}: {table} | choice loss {loss:.4f}")
    return {"step": step, "epoch": epoch, "eval_loss": loss, "metrics": scores}


def _keep_best(config, record, best, params, tokenizer, print_fn) -> Optional[dict[str, Any]]:
    ft = config.finetune
    scores = record["metrics"]
    metric = ft.validation_metric or next(iter(scores))
    if metric not in scores:
        raise ValueError(f"finetune.validation_metric={metric!r} is not among the metrics {sorted(scores)}")
    if best is not None and not scores[metric] > best["score"]:
        return best
    new = {"epoch": record["epoch"], "step": record["step"], "metric": metric, "score": scores[metric],
           "metrics": scores}
    output_dir = Path(ft.output_dir)
    host_params = multihost.gather_to_host(params)  # every process: a collective with several
    if jax.process_index() == 0:
        export_model_dir(output_dir / BEST_DIR, config.model, host_params, tokenizer, run_config=config)
        (output_dir / BEST_RECORD).write_text(json.dumps(new, indent=1) + "\n")
    print_fn(f"new best {metric} {scores[metric]:.2f}: exported {output_dir / BEST_DIR}")
    return new


def read_best(output_dir: str | Path) -> Optional[dict[str, Any]]:
    """The ``best.json`` record of a run (None before its first evaluation)."""
    path = Path(output_dir) / BEST_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def export_model_dir(
    final: Path, model_config: ModelConfig, host_params: Any, tokenizer: Any = None, *, run_config: Any = None
) -> Path:
    """Write the model directory ``final`` from host params (glm_jax.model_dir.replace_model_dir);
    with ``run_config``, its YAML goes beside the weights as :data:`RUN_CONFIG`."""
    from glm_jax.model_dir import replace_model_dir

    extra = {RUN_CONFIG: str(run_config)} if run_config is not None else None
    return replace_model_dir(final, model_config, host_params, tokenizer=tokenizer, extra_files=extra)