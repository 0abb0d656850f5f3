"""Evaluate a cloze task through ``seqio.Evaluator``, and write the predictions.

How the pieces meet (seqio 0.0.20, ``seqio/evaluation.py`` and ``metrics.py``):

* The Evaluator caches the task's split (``shuffle=False``: file order, so the
  enumeration index of an example is its ``example_id``) and runs
  :class:`~glm_jax.data.superglue.converter.ClozeFeatureConverter` on it.
* Its ``predict_fn`` gets that enumerated dataset. Ours batches it exactly as
  :func:`~glm_jax.data.superglue.converter.cloze_batches` does, hands the batches to the
  caller's ``predict_fn(batches) -> {example_id: choice index}``, and returns
  ``[(position, [choice])]``.
* The ``label`` output feature has a pass-through vocabulary, so "decoding" a
  prediction gives ``[choice]`` and the gold target ``[label]``; the task's
  postprocess (``registry.postprocess``) maps them to what the metric compares,
  reading the cached example for MultiRC's group and ReCoRD's candidates/answers.
* The metric functions are ``glm_jax.data.superglue.metrics.METRIC_FNS[task]``.

The Evaluator (and so the tokenised split) is built once per task and split and
reused by later calls, e.g. at each epoch end of fine-tuning.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.superglue.converter import ClozeFeatureConverter, batch_numpy, resolve_num_choices
from glm_jax.data.superglue.registry import postprocess, task_info

Batch = dict[str, np.ndarray]
PredictFn = Callable[[Iterator[Batch]], Mapping[int, int]]

_EVALUATORS: dict[tuple, tuple[seqio.Task, ClozeFeatureConverter, seqio.Evaluator]] = {}


def _evaluator(task_name: str, split: str, num_choices: Optional[int]) -> tuple[ClozeFeatureConverter,
                                                                                  seqio.Evaluator]:
    task = seqio.get_mixture_or_task(task_name)
    info = task_info(task_name)
    choices = resolve_num_choices(info, split, num_choices)
    key = (task_name, split, choices)
    cached = _EVALUATORS.get(key)
    if cached is None or cached[0] is not task:  # re-registered task: rebuild
        converter = ClozeFeatureConverter(info, choices)
        evaluator = seqio.Evaluator(task_name, converter, eval_split=split, use_memory_cache=True,
                                    async_compute_metrics=False, target_field_name="label")
        if not evaluator.eval_tasks:
            raise ValueError(f"{task_name} has no {split!r} split to evaluate")
        cached = _EVALUATORS[key] = (task, converter, evaluator)
    return cached[1], cached[2]


def evaluate(
    task_name: str,
    split: str,
    predict_fn: PredictFn,
    *,
    output_dir: Optional[str] = None,
    batch_size: int = 16,
    num_choices: Optional[int] = None,
) -> dict[str, float]:
    """The task's metrics (percentages) for the predictions of ``predict_fn``.

    Args:
      task_name: a registered cloze task (``glm_superglue_rte``).
      split: ``validation`` (or ``train``); on ``test`` nothing is scored (no labels):
        the predictions are written and ``{}`` is returned.
      predict_fn: ``predict_fn(batches) -> {example_id: choice}``; ``batches`` yields
        the fixed-shape numpy batches of ``cloze_batches`` (unshuffled, padding rows
        with ``example_id == -1``); ``choice`` is the argmax label index
        (single-token tasks) or candidate index (multi-token tasks). Every example
        id of the split must get a choice.
      output_dir: where ``{task_name}_{split}_predictions.jsonl`` is written: one line
        per example with ``example_id``, ``guid``, ``choice``, the postprocessed
        ``prediction`` and (when labelled) ``target``.
      batch_size: rows per batch given to ``predict_fn`` (spec 4.3: 16).
      num_choices: ``C`` of multi-token tasks; None: the split's maximum.

    Raises:
      ValueError: a missing example id, or a choice outside the example's labels or
        candidates.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    converter, evaluator = _evaluator(task_name, split, num_choices)
    info = converter.info
    labelled = split != "test"

    def seqio_predict_fn(enumerated) -> list[tuple[int, list[int]]]:
        def count(i, ex):  # (position, example id, number of valid choices)
            valid = tf.reduce_sum(ex["choice_mask"]) if info.multi_token else tf.constant(info.num_labels)
            return i, ex["example_id"], valid

        positions, num_choices_of = {}, {}
        for pos, eid, valid in enumerated.map(count).as_numpy_iterator():
            positions[int(eid)], num_choices_of[int(eid)] = int(pos), int(valid)
        ds = enumerated.map(lambda i, ex: ex)
        choices = predict_fn(batch_numpy(ds, converter, batch_size, math.ceil(len(positions) / batch_size), False))
        missing = sorted(set(positions) - {int(k) for k in choices})
        if missing:
            raise ValueError(f"{task_name} {split}: predict_fn gave no choice for {len(missing)} example ids "
                             f"(first: {missing[:5]})")
        out = []
        for eid, pos in positions.items():
            choice = int(choices[eid])
            if not 0 <= choice < num_choices_of[eid]:
                raise ValueError(f"{task_name} {split}: example {eid}: choice {choice} outside its "
                                 f"{num_choices_of[eid]} choices")
            out.append((pos, [choice]))
        return out

    metrics_future, outputs = evaluator.evaluate(compute_metrics=labelled, predict_fn=seqio_predict_fn)
    scores = metrics_future.result()[task_name] if labelled else {}
    if output_dir is not None:
        chosen = outputs[task_name][seqio.metrics.ModelOutputType.PREDICTION]
        write_predictions(os.path.join(output_dir, f"{task_name}_{split}_predictions.jsonl"), info.task,
                          evaluator.cached_task_datasets[task_name].as_numpy_iterator(), chosen, labelled)
    return {name: float(value) for name, value in scores.items()}


def write_predictions(path: str, task: str, examples: Iterator[Mapping[str, Any]], chosen: list[Any],
                      labelled: bool) -> None:
    """One JSON line per example, in example order (see :func:`evaluate`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex, choice in zip(examples, chosen, strict=True):
            index = int(np.asarray(choice).reshape(-1)[0])
            line = {"example_id": int(ex["index"]), "guid": ex["guid"].decode("utf-8"), "choice": index,
                    "prediction": postprocess(task, [index], ex, is_target=False)}
            if labelled:
                line["target"] = postprocess(task, ex["label"], ex, is_target=True)
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
