"""What ``glm-jax train`` does around :func:`glm_jax.pretrain.run`: check every input
before the first step, build the batches, export the trained model.

    run = pretrain_setup.prepare(config)              # raises on any bad input, writes nothing
    if not pretrain_setup.finished(run, config, export=True):
        result = pretrain.run(config, *pretrain_setup.batches(config))
        pretrain_setup.export(run, config, result)    # <output_dir>/model

With several processes every function is called by every process (in the same
order: :func:`export` gathers the parameters); only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import jax

from glm_jax import model_dir, multihost, run_dir, sharding
from glm_jax.config import Config
from glm_jax.data import pipeline
from glm_jax.data.tokenizers import tokenizer_of

MODEL_DIR = "model"  # <train.output_dir>/model: the exported model directory


@dataclasses.dataclass(frozen=True)
class PretrainRun:
    """A pretraining run whose inputs have been checked, before its first step.

    Attributes:
      output_dir: ``train.output_dir``.
      model_path: where the trained model is exported, ``<output_dir>/model``.
      latest: the checkpoint step the run resumes from; None for a fresh run.
      vocabulary: the data's vocabulary; its tokenizer is exported with the model.
      is_main: whether this process writes files (process 0).
    """

    output_dir: Path
    model_path: Path
    latest: Optional[int]
    vocabulary: Any
    is_main: bool


def check_vocabulary(vocabulary: Any, config: Config) -> None:
    """The data's token ids must index the model's embedding table; ValueError otherwise."""
    if vocabulary.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"data.task={config.data.task!r} has a vocabulary of {vocabulary.vocab_size} ids, more than "
            f"model.vocab_size={config.model.vocab_size}: set model.vocab_size to at least {vocabulary.vocab_size}")


def check_positions(config: Config) -> None:
    """Position ids must index the model's position table (a gather past its end reads
    a clamped row, silently); ValueError naming the keys otherwise."""
    if config.data.position_range > config.model.max_position_embeddings:
        key = "data.text_length" if config.data.text_length else "data.sequence_length"
        raise ValueError(
            f"{key}={config.data.position_range} gives position ids beyond model.max_position_embeddings="
            f"{config.model.max_position_embeddings}; rows may be longer than the positions only with "
            "data.text_length (the text cap)")


def prepare(config: Config) -> PretrainRun:
    """Register ``config.data``'s tasks and check the run before any work: its
    directories are writable, its checkpoints are of this model and not past
    ``train.steps``, the vocabulary fits the model, the splits exist. Removes what a
    killed export left beside ``<output_dir>/model``.

    Raises:
      ValueError (RunDirError, DataError, ...): the first problem, in one line.
    """
    pipeline.register_tasks(config.data)
    is_main = jax.process_index() == 0
    output_dir = Path(config.train.output_dir)
    checkpoint_dir = config.checkpoint.directory or str(output_dir / "checkpoints")
    if is_main:
        run_dir.check_writable(output_dir, "train.output_dir")
        if config.checkpoint.directory:
            run_dir.check_writable(checkpoint_dir, "checkpoint.directory")
    latest = run_dir.check_resume(output_dir, checkpoint_dir, config.model, config.train.steps)
    vocabulary = pipeline.vocabulary_of(config.data)
    check_vocabulary(vocabulary, config)
    check_positions(config)
    pipeline.check_splits(config.data)
    model_path = output_dir / MODEL_DIR
    if is_main:
        model_dir.remove_stale_exports(model_path)
    return PretrainRun(output_dir, model_path, latest, vocabulary, is_main)


def finished(run: PretrainRun, config: Config, *, export: bool) -> bool:
    """Whether nothing is left to do: the run is at ``train.steps`` and, if it is to
    be exported, its model directory is complete."""
    return run.latest == config.train.steps and export and model_dir.is_model_dir(run.model_path)


def batches(config: Config) -> tuple[Iterator, Optional[Callable[[], Iterator]]]:
    """``(train batches, eval batches factory or None)`` for :func:`glm_jax.pretrain.run`:
    this process's rows of each global batch."""
    mesh = sharding.mesh_from_config(config.mesh)
    local_batch = len(multihost.process_batch_indices(mesh, config.train.global_batch_size))
    eval_data = None
    if config.data.eval_split is not None:
        eval_data = lambda: pipeline.eval_batches(config.data, local_batch)  # noqa: E731
    return pipeline.train_batches(config.data, local_batch), eval_data


def export(run: PretrainRun, config: Config, params: Any) -> Optional[Path]:
    """Write ``params`` (the trained state's) as the model directory ``run.model_path``
    with the data's tokenizer; returns its path on process 0, None on the others.

    Every process must call it (the parameters are gathered to the host). The
    checkpoints remain the source of truth; the export is replaced whole, and only
    by the model this run trained (the non-finite guard checked it at the final
    save; :func:`prepare` refused another architecture).
    """
    host_params = multihost.gather_to_host(params)
    if not run.is_main:
        return None
    return model_dir.replace_model_dir(run.model_path, config.model, host_params,
                                       tokenizer=tokenizer_of(run.vocabulary))
