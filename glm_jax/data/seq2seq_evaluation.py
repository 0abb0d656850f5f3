"""Evaluating a seq2seq task through ``seqio.Evaluator``, and the task as the data of
the fine-tuning loop.

:func:`evaluate` hands the split (unshuffled, in fixed-shape batches of
glm_jax/data/seq2seq_tasks.py) to a ``generate_fn`` that returns each example's
generated ids; seqio decodes them with the task's vocabulary, applies the task's
postprocess and metric functions against the references, and the predictions go
to a JSON-lines file. :class:`Seq2SeqData` is the ``glm_jax.finetune.ClozeData``
of ``glm-jax finetune`` and ``glm-jax eval`` for these tasks.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import seqio

from glm_jax.data.seq2seq_tasks import Seq2SeqFeatureConverter, postprocess, seq2seq_batches, task_info
from glm_jax.data.split_data import EpochData, fixed_batches

GenerateFn = Callable[[Iterator[dict[str, np.ndarray]]], Mapping[int, list[int]]]
_EVALUATORS: dict[tuple[str, str], tuple[seqio.Task, seqio.Evaluator]] = {}


def _evaluator(task_name: str, split: str) -> seqio.Evaluator:
    task = seqio.get_mixture_or_task(task_name)
    cached = _EVALUATORS.get((task_name, split))
    if cached is None or cached[0] is not task:  # re-registered task: rebuild
        evaluator = seqio.Evaluator(task_name, Seq2SeqFeatureConverter(task_info(task_name)), eval_split=split,
                                    use_memory_cache=True, async_compute_metrics=False)
        if not evaluator.eval_tasks:
            raise ValueError(f"{task_name} has no {split!r} split to evaluate")
        cached = _EVALUATORS[(task_name, split)] = (task, evaluator)
    return cached[1]


def evaluate(task_name: str, split: str, generate_fn: GenerateFn, *, output_dir: Optional[str] = None,
             batch_size: int = 16) -> dict[str, float]:
    """The task's metrics (percent) of the texts ``generate_fn`` writes.

    Args:
      generate_fn: ``batches -> {example_id: generated token ids}`` (without
        ``[eop]`` and padding); ``batches`` as :func:`seq2seq_batches` unshuffled.
      output_dir: where ``{task_name}_{split}_predictions.jsonl`` goes: per example
        ``example_id``, ``guid``, ``prediction`` (text) and ``reference``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    evaluator = _evaluator(task_name, split)
    converter = Seq2SeqFeatureConverter(task_info(task_name))

    def seqio_predict_fn(enumerated) -> list[tuple[int, list[int]]]:
        positions = {int(eid): int(pos) for pos, eid in enumerated.map(
            lambda i, ex: (i, ex["example_id"])).as_numpy_iterator()}
        ds = enumerated.map(lambda i, ex: ex)
        generated = generate_fn(fixed_batches(ds, converter.padding_rows, batch_size, math.ceil(len(positions) / batch_size), False))
        missing = sorted(set(positions) - {int(k) for k in generated})
        if missing:
            raise ValueError(f"{task_name} {split}: no text generated for {len(missing)} example ids "
                             f"(first: {missing[:5]})")
        # One length for all (seqio stacks them), padded with -1 (GeneratedTextVocabulary).
        width = max([len(ids) for ids in generated.values()] + [1])
        return [(pos, list(generated[eid]) + [-1] * (width - len(generated[eid]))) for eid, pos in positions.items()]

    metrics_future, outputs = evaluator.evaluate(compute_metrics=True, predict_fn=seqio_predict_fn)
    scores = metrics_future.result()[task_name]
    if output_dir is not None:
        generated = outputs[task_name][seqio.metrics.ModelOutputType.PREDICTION]  # token ids, in example order
        vocabulary = task_info(task_name).vocabulary
        path = os.path.join(output_dir, f"{task_name}_{split}_predictions.jsonl")
        os.makedirs(output_dir, exist_ok=True)
        examples = evaluator.cached_task_datasets[task_name].as_numpy_iterator()
        with open(path, "w", encoding="utf-8") as f:
            for ex, tokens in zip(examples, generated, strict=True):
                f.write(json.dumps({"example_id": int(ex["index"]), "guid": ex["guid"].decode("utf-8"),
                                    "prediction": postprocess(task_info(task_name).task, vocabulary.decode(
                                        [int(t) for t in tokens if t >= 0])), "reference": ex["targets_pretokenized"].decode("utf-8")},
                                   ensure_ascii=False) + "\n")
    return {name: float(value) for name, value in scores.items()}


class Seq2SeqData(EpochData):
    """A registered seq2seq task as the data of the fine-tuning loop
    (``glm_jax.finetune.ClozeData``): each epoch's shuffled training batches (this
    process's shard) and the metrics of generated texts.

    Args:
      task_name: from :func:`register_seq2seq_task`.
      config: the run's ``finetune`` section (splits, batch sizes, seed).
      mesh: the run's mesh: with several processes each reads its own shard.
    """

    def __init__(self, task_name: str, config: Any, mesh: Any):
        super().__init__(config, mesh)
        self.task_name = task_name
        self.info = task_info(task_name)

    def num_examples(self, split: str) -> int:
        return self.info.num_examples(split)

    def train_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches of ``[local_batch, ...]`` rows, shuffled with ``seed + epoch``."""
        return seq2seq_batches(self.task_name, self.config.train_split, batch_size=self.local_batch, shuffle=True,
                               seed=self.config.seed + epoch, drop_remainder=True, shard=self.process_shard())

    def evaluate(self, generate_fn: GenerateFn, output_dir: Optional[str], split: Optional[str] = None
                 ) -> dict[str, float]:
        """The task's metrics of ``generate_fn``'s texts on ``split`` (default: the eval split)."""
        return evaluate(self.task_name, split or self.config.eval_split, generate_fn, output_dir=output_dir,
                        batch_size=self.config.eval_batch_size)

