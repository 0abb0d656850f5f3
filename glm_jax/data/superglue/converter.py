"""Cloze task features -> fixed-shape model batches (the issue 6 contract).

Model features of one example (batches add a leading ``[B]``):

Single-token tasks (BoolQ, CB, RTE, WiC, MultiRC)::

    tokens, position_ids, block_position_ids   int32 [L]
    sep, mask_position                         int32 []    sep == index of the [sop] row read
    choice_ids                                 int32 [K]   verbalizer token ids, label order
    label                                      int32 []    gold label index, -1 unknown
    example_id                                 int32 []    index in the split, -1 padding row

Multi-token tasks (COPA, WSC, ReCoRD), candidates padded to ``C = num_choices``::

    tokens, position_ids, block_position_ids,
    targets, loss_mask                         int32 [C, L]
    sep, mask_position, answer_lengths         int32 [C]   answer_lengths: tokens + [eop]
    choice_mask                                int32 [C]   1 real candidate, 0 padding
    label, example_id                          int32 []    label: gold candidate (-1 unknown)

A padding candidate is all pad tokens with ``sep = 0``, zero targets, loss and
``answer_lengths`` (so a per-candidate mean must guard the division). A padding
row (``example_id == -1``) has label -1 and ``choice_mask`` 0 everywhere; it fills
the last partial batch and, with several shards, the batches a shard lacks, so
that every host yields the same number of batches.

:class:`ClozeFeatureConverter` does the per-example conversion in ``tf.data`` (it
is also what ``seqio.Evaluator`` runs); :func:`cloze_batches` batches it to numpy.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.split_data import fixed_batches
from glm_jax.data.superglue.registry import ClozeTaskInfo, task_info

FeatureSpec = seqio.FeatureConverter.FeatureSpec

_SEQUENCES = ("tokens", "position_ids", "block_position_ids")
_MULTI_SEQUENCES = (*_SEQUENCES, "targets", "loss_mask")
_PER_CANDIDATE = ("sep", "mask_position", "answer_lengths", "choice_mask")


class ClozeFeatureConverter(seqio.FeatureConverter):
    """Per-example conversion of a registered cloze task's features (module docstring).

    Args:
      info: the task (``registry.task_info(name)``).
      num_choices: ``C`` for multi-token tasks (ignored for single-token ones). An
        example with more candidates fails with its task and guid in the message.
    """

    def __init__(self, info: ClozeTaskInfo, num_choices: Optional[int] = None):
        self.info = info
        if info.multi_token and (num_choices is None or num_choices < 1):
            raise ValueError(f"{info.name}: multi-token tasks need num_choices >= 1, got {num_choices}")
        self.num_choices = num_choices if info.multi_token else None
        rank = 2 if info.multi_token else 1
        # seqio reads these per instance: the rank of tokens depends on the task.
        self.TASK_FEATURES = {  # noqa: N815 (seqio's name)
            "tokens": FeatureSpec(dtype=tf.int32, rank=rank, sequence_dim=rank - 1),
            "label": FeatureSpec(dtype=tf.int32, rank=1),
        }
        # Shapes are static (set by the preprocessor, ensured below): seqio's runtime
        # length asserts would only add tf.data stages.
        super().__init__(pack=False, apply_length_check=False)

    @property
    def MODEL_FEATURES(self) -> Mapping[str, FeatureSpec]:  # noqa: N802 (seqio's name)
        scalar = {k: FeatureSpec(dtype=tf.int32, rank=0) for k in ("label", "example_id")}
        if not self.info.multi_token:
            return {**{k: FeatureSpec(dtype=tf.int32) for k in (*_SEQUENCES, "choice_ids")},
                    "sep": FeatureSpec(dtype=tf.int32, rank=0),
                    "mask_position": FeatureSpec(dtype=tf.int32, rank=0), **scalar}
        return {**{k: FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1) for k in _MULTI_SEQUENCES},
                **{k: FeatureSpec(dtype=tf.int32) for k in _PER_CANDIDATE}, **scalar}

    def task_feature_lengths(self) -> dict[str, int]:
        return {"tokens": self.info.max_seq_length, "label": 1}

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        length = task_feature_lengths["tokens"]
        lengths = {"label": 1, "example_id": 1}  # rank 0: seqio skips their check
        if not self.info.multi_token:
            return {**lengths, **{k: length for k in _SEQUENCES}, "sep": 1, "mask_position": 1,
                    "choice_ids": self.info.num_labels}
        return {**lengths, **{k: length for k in _MULTI_SEQUENCES}, **{k: self.num_choices for k in _PER_CANDIDATE}}

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        return ds.map(self.convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def convert_example(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {"label": tf.reshape(ex["label"], []), "example_id": tf.cast(ex["index"], tf.int32)}
        if not self.info.multi_token:
            keys = (*_SEQUENCES, "sep", "mask_position", "choice_ids")
            return {**out, **{k: ex[k] for k in keys}}
        c, total = tf.shape(ex["tokens"])[0], self.num_choices
        check = tf.debugging.Assert(
            c <= total, [f"{self.info.name}: example", ex["guid"], "has", c, f"candidates, more than num_choices "
                         f"{total}"])
        with tf.control_dependencies([check]):
            extra = total - c
        pad_id = self.info.vocabulary.command_tokens.pad
        for key in _MULTI_SEQUENCES:
            fill = pad_id if key == "tokens" else 0
            out[key] = tf.ensure_shape(tf.pad(ex[key], [[0, extra], [0, 0]], constant_values=fill),
                                       [total, self.info.max_seq_length])
        for key in ("sep", "mask_position", "answer_lengths"):
            out[key] = tf.ensure_shape(tf.pad(ex[key], [[0, extra]]), [total])
        out["choice_mask"] = tf.ensure_shape(tf.pad(tf.ones([c], tf.int32), [[0, extra]]), [total])
        return out

    def padding_rows(self, n: int) -> dict[str, np.ndarray]:
        """``n`` padding rows (``example_id`` -1), as numpy."""
        length = self.info.max_seq_length
        pad_id = self.info.vocabulary.command_tokens.pad
        rows = {"label": np.full([n], -1, np.int32), "example_id": np.full([n], -1, np.int32)}
        if not self.info.multi_token:
            rows.update({k: np.zeros([n, length], np.int32) for k in _SEQUENCES})
            rows.update(sep=np.zeros([n], np.int32), mask_position=np.zeros([n], np.int32),
                        choice_ids=np.tile(self.info.verbalizer_ids().astype(np.int32), (n, 1)))
        else:
            total = self.num_choices
            rows.update({k: np.zeros([n, total, length], np.int32) for k in _MULTI_SEQUENCES})
            rows.update({k: np.zeros([n, total], np.int32) for k in _PER_CANDIDATE})
        rows["tokens"][...] = pad_id
        return rows


def resolve_num_choices(info: ClozeTaskInfo, split: str, num_choices: Optional[int]) -> Optional[int]:
    """``C`` for a multi-token task's split: ``num_choices`` or the split's maximum.

    Raises ValueError naming the task and the first example with more candidates.
    """
    if not info.multi_token:
        return None
    if num_choices is None:
        return info.max_candidates(split)
    for example in info.examples(split):
        if len(example.candidates) > num_choices:
            raise ValueError(f"{info.name} {split}: example {example.guid} has {len(example.candidates)} candidates, "
                             f"more than num_choices={num_choices}")
    return num_choices


def batch_numpy(ds: tf.data.Dataset, converter: ClozeFeatureConverter, batch_size: int, num_batches: int,
                drop_remainder: bool) -> Iterator[dict[str, np.ndarray]]:
    """``num_batches`` batches of ``batch_size`` rows from model-feature examples,
    padded with the converter's padding rows (glm_jax/data/split_data.fixed_batches)."""
    return fixed_batches(ds, converter.padding_rows, batch_size, num_batches, drop_remainder)


def cloze_batches(
    task_name: str,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_choices: Optional[int] = None,
    drop_remainder: bool = False,
    shard: Optional[seqio.ShardInfo] = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a registered cloze task's split as fixed-shape numpy batches.

    Args:
      task_name: a task from :func:`glm_jax.data.superglue.register_superglue_tasks`.
      split: ``train``, ``validation`` or ``test``.
      batch_size: rows per batch (per host when sharded).
      shuffle: a permutation of the split drawn from ``seed`` (the same on every
        host); call once per epoch with a new seed (e.g. ``seed + epoch``).
        Without it, the split's file order.
      num_choices: ``C`` of multi-token tasks; None: the most candidates of any
        example in the split.
      drop_remainder: drop the last partial batch instead of padding it.
      shard: ``seqio.ShardInfo(process_index, process_count)``: this host's disjoint
        part (positions ``index::num_shards`` of the order above). Every host gets
        the same number of batches: ``ceil(ceil(N / n) / B)``, or
        ``floor(floor(N / n) / B)`` with ``drop_remainder``.

    Yields:
      dicts of int32 arrays with the module docstring's features and a leading ``[B]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = task_info(task_name)
    converter = ClozeFeatureConverter(info, resolve_num_choices(info, split, num_choices))
    total, shards = info.num_examples(split), (shard.num_shards if shard else 1)
    if drop_remainder:
        num_batches = (total // shards) // batch_size
    else:
        num_batches = math.ceil(math.ceil(total / shards) / batch_size)
    task = seqio.get_mixture_or_task(task_name)
    # No sequence_length: the rows are already L long (trimming would only add a stage).
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=shuffle, seed=seed, shard_info=shard,
                          num_epochs=1, trim_output_features=False)
    ds = converter(ds, converter.task_feature_lengths())
    yield from batch_numpy(ds, converter, batch_size, num_batches, drop_remainder)
