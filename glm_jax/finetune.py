"""Fine-tuning GLM on cloze tasks (spec 4.1, 4.3): epochs, evaluation, best model.

The protocol of the official ``finetune_glm.py``: start from a pretrained model,
train for a number of epochs with AdamW (lr 1e-5, 10% warmup, then linear decay
to 0.1x, weight decay 0.1, clip 1.0, dropout on), evaluate on the validation split
at the end of every epoch, and keep the best model: the reported dev score is the
best over epochs. The best parameters are exported as a glm-jax model directory
(``<output_dir>/best``, with the tokenizer of the starting model) and described in
``<output_dir>/best.json``.

It runs on the one training loop (glm_jax/loop.py) that pretraining runs on, with
the one step factory (glm_jax/train.py); what fine-tuning plugs in is epoch
boundaries (logged, saved and evaluated), the epoch evaluation with best-model
export, the pretrained starting state, and an :class:`Objective`: the loss and how
a validation split is scored. Two families of tasks have one:

* cloze (``cloze.ClozeObjective``, the default): SuperGLUE, choices scored by the
  model, data from ``glm_jax.data.superglue.finetune_data.SuperGLUEData``;
* conditional generation (``glm_jax.seq2seq_finetune.Seq2SeqObjective``, spec
  4.4): label-smoothed token loss, texts decoded by beam search and scored with
  ROUGE/BLEU, data from ``glm_jax.data.seq2seq_evaluation.Seq2SeqData``.

A run
restarted with the same output directory resumes from its latest checkpoint: the
data position is a function of the step (epoch ``step // steps_per_epoch``,
shuffled with ``seed + epoch``, that many batches skipped).

Where the batches and the validation metrics come from is a :class:`ClozeData`
(anything with its three methods; the objective decides what its ``evaluate`` is
handed).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import cloze, loop, multihost, nonfinite, sharding, train_state
from glm_jax.checkpointing import CheckpointConfig
from glm_jax.model_dir import replace_model_dir
from glm_jax.typed_config import require_at_least, require_divisible, require_positive, to_yaml
from glm_jax.model import ModelConfig
from glm_jax.model.config import RUNTIME_FIELDS, architecture_changes
from glm_jax.optim import OptimizerConfig
from glm_jax.seq2seq_finetune import Seq2SeqConfig
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
      task: SuperGLUE task (boolq, cb, copa, multirc, record, rte, wic, wsc) or
        seq2seq task (cnn_dm, cnn_dm_org, xsum, gigaword, squad_qg: the ``seq2seq``
        section applies); the CLI sets it from ``--task``.
      pattern_id: the pattern (spec 4.2); None: the official script's (spec 4.3).
      data_dir: a folder in the official layout (SuperGLUE: ``RTE/train.jsonl``,
        ...; seq2seq: ``train.source``/``.target``, ...); None: TFDS (prepared,
        nothing is downloaded).
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
      peak_tflops: as in ``train``: the devices' peak for the MFU estimate.
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
    peak_tflops: Optional[float] = None

    def __post_init__(self):
        nonfinite.check_policy(self.on_nonfinite, self.max_consecutive_skips, "finetune")
        require_positive("finetune", self, "epochs", "batch_size", "eval_batch_size", "num_microbatches", "log_every")
        require_divisible("finetune", self, "batch_size", "num_microbatches")
        if self.loss not in cloze.LOSSES:
            raise ValueError(f"finetune.loss must be one of {cloze.LOSSES}, got {self.loss!r}")
        require_at_least("finetune", self, 0, "length_penalty")
        require_at_least("finetune", self, 8, "max_seq_length", or_null=True)


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
    seq2seq: Seq2SeqConfig = dataclasses.field(default_factory=Seq2SeqConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __str__(self) -> str:
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


class Objective(Protocol):
    """What a family of tasks plugs into fine-tuning: its loss and its scoring.

    Attributes:
      weight_key: the train step's metric that weighs a step in a log interval.
      loss_name: how the evaluation's extra ``loss`` (if any) is labelled.
    """

    weight_key: str
    loss_name: str

    def build(self, config: "FinetuneRunConfig", mesh: Any) -> tuple[Any, Callable]:
        """``(optimizer, jitted train_step)`` for the resolved run config."""

    def static(self, batch: Batch) -> Hashable:
        """The train step's static argument for a local batch."""

    def evaluate(self, params: Any, data: ClozeData, output_dir: Optional[str]
                 ) -> tuple[dict[str, float], dict[str, float]]:
        """``(metrics in percent, extra scalars such as {"loss": ...})`` of ``params``
        on ``data``'s validation split; predictions go to ``output_dir``."""


# -------------------------------------------------------------------------- loop


@dataclasses.dataclass
class FinetuneResult:
    """What a run leaves behind besides its files."""

    state: train_state.TrainState
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
    objective: Optional[Objective] = None,
    tokenizer: Any = None,
    print_fn: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune on the one training loop (glm_jax/loop.py), evaluating at each
    epoch end and exporting the best model.

    Args:
      config: the resolved run config (saved with each checkpoint).
      data: batches and validation metrics.
      pretrained: ``param_shardings -> params``, the starting weights laid out as
        asked (e.g. ``lambda s: load_model_dir(path, shardings=s)[1]``); not called
        when resuming from a checkpoint.
      objective: the loss and the scoring; None: cloze (``cloze.ClozeObjective``).
      tokenizer: a ``glm_jax.data.tokenizers.TokenizerConfig`` with absolute file
        paths, stored with the exported best model; None exports weights and config only.
    """
    ft = config.finetune
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
    objective = objective if objective is not None else cloze.ClozeObjective()
    optimizer, train_step = objective.build(config, mesh)
    best = read_best(output_dir)

    def batches(start_step: int) -> Iterator[Batch]:
        # The position is a function of the step: epoch e is shuffled with seed + e.
        for epoch in range(start_step // steps_per_epoch, ft.epochs):
            skip = start_step - epoch * steps_per_epoch if epoch == start_step // steps_per_epoch else 0
            served = skip
            for batch in itertools.islice(iter(data.train_batches(epoch)), skip, steps_per_epoch):
                served += 1
                yield batch
            if served < steps_per_epoch:
                raise ValueError(
                    f"the training data of epoch {epoch + 1} ended after step {epoch * steps_per_epoch + served}, "
                    f"before its {steps_per_epoch} batches (ClozeData.steps_per_epoch)"
                )

    def end_epoch(step: int, state: train_state.TrainState, writer) -> dict[str, Any]:
        nonlocal best
        record, best = _end_epoch(config, data, objective, state, step, step // steps_per_epoch, writer, best,
                                  tokenizer, print_fn)
        return record

    def describe(start_step: int, mesh) -> list[str]:
        oc = config.optimizer
        return [
            f"fine-tuning {ft.task} on {jax.device_count()} {jax.devices()[0].platform} device(s), mesh "
            f"{dict(mesh.shape)}: {ft.epochs} epochs x {steps_per_epoch} steps of {ft.batch_size} examples, "
            f"steps {start_step}->{total}",
            f"learning rate: peak {oc.learning_rate:g}, warmup {describe_warmup(oc)}, {oc.decay_style} decay "
            f"to {oc.lr_decay_ratio:g}x at step {total} (optimizer.decay_steps = epochs x steps per epoch)",
        ]

    task = loop.LoopTask(
        train_step=train_step,
        batches=batches,
        init_state=lambda shardings: _initial_state(pretrained(shardings.params), optimizer, shardings),
        weight_key=objective.weight_key,
        is_boundary=lambda step: step % steps_per_epoch == 0,
        evaluate=end_epoch,
        # Saved at an epoch's end, then stopped before its evaluation finished:
        # evaluate it first, so the best-epoch choice sees every epoch.
        pending_evaluation=lambda step: step % steps_per_epoch == 0 and not _epoch_evaluated(
            ft.output_dir, step // steps_per_epoch),
        static=objective.static,
        extra=lambda step: {"epoch": (step - 1) // steps_per_epoch + 1},
        describe=describe,
    )
    settings = loop.LoopSettings(
        section="finetune", total_steps=total, global_batch_size=ft.batch_size, log_every=ft.log_every,
        output_dir=ft.output_dir, on_nonfinite=ft.on_nonfinite, max_consecutive_skips=ft.max_consecutive_skips,
        peak_tflops=ft.peak_tflops,
    )
    result = loop.run(settings, task, run_config=config, model_config=config.model, optimizer=optimizer, mesh=mesh,
                      checkpoint=config.checkpoint, print_fn=print_fn)
    if best is not None and not result.stopped_early:
        print_fn(
            f"best {best['metric']} {best['score']:.2f} at epoch {best['epoch']} (step {best['step']}); "
            f"model in {output_dir / BEST_DIR}"
        )
    return FinetuneResult(result.state, result.start_step, result.final_step, steps_per_epoch, result.history, best,
                          result.stopped_early)


def describe_warmup(optimizer: OptimizerConfig) -> str:
    """``5 steps``; a fractional warm-up (``optimizer.warmup`` of a short run) says so:
    ``0.6 steps (optimizer.warmup=0.1 of 6)``, which the schedule keeps as a float, as
    the official one does."""
    steps = optimizer.warmup_iters
    if float(steps).is_integer():
        return f"{steps:g} steps"
    return f"{steps:g} steps (optimizer.warmup={optimizer.warmup:g} of {optimizer.decay_steps})"


def _initial_state(params: Any, optimizer, state_shardings: train_state.TrainState) -> train_state.TrainState:
    def init(p):
        return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    return jax.jit(init, in_shardings=(state_shardings.params,), out_shardings=state_shardings)(params)


EPOCH_DONE = "evaluated.json"  # eval/epoch_N/evaluated.json: epoch N is evaluated and its best kept


def _end_epoch(config, data, objective, state, step, epoch, writer, best, tokenizer, print_fn):
    """Evaluates epoch ``epoch``, keeps the best model, then marks the epoch done."""
    record = _evaluate_epoch(config, data, objective, state, step, epoch, writer, print_fn)
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


def _evaluate_epoch(config, data, objective, state, step, epoch, writer, print_fn) -> dict[str, Any]:
    out_dir = Path(config.finetune.output_dir) / "eval" / f"epoch_{epoch}"
    scores, extra = objective.evaluate(state.params, data, str(out_dir))
    if not scores:
        raise ValueError(f"evaluating {config.finetune.task} on {config.finetune.eval_split} returned no metrics")
    writer.write(step, {**scores, **extra}, prefix="eval/")
    writer.flush()
    table = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
    loss = f" | {objective.loss_name} {extra['loss']:.4f}" if "loss" in extra else ""
    print_fn(f"epoch {epoch} (step {step}) {config.finetune.eval_split}: {table}{loss}")
    record = {"step": step, "epoch": epoch, "metrics": scores}
    if "loss" in extra:
        record["eval_loss"] = extra["loss"]
    return record


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
    extra = {RUN_CONFIG: str(run_config)} if run_config is not None else None
    return replace_model_dir(final, model_config, host_params, tokenizer=tokenizer, extra_files=extra)