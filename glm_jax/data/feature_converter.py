"""``GLMFeatureConverter``: GLM examples -> fixed-length model batches, padded or packed.

Task features (from glm_jax/data/objectives.py), per example::

    tokens, targets, loss_mask, position_ids, block_position_ids   int32 [n <= T]
    sep                                                            int32 scalar

Model features, every row of length ``T = task_feature_lengths['tokens']``:

* ``pack=False``: the five sequences padded (or truncated) to ``T``, plus ``sep``.
* ``pack=True``: several examples per row, laid end to end, plus ``segment_ids``
  (int32; 1, 2, ... per example in the row, 0 on padding) and ``part_a`` (bool;
  True on each example's first ``sep`` tokens). Every example keeps its own
  position and block ids; the model's segment mask (glm_jax/model/masks.py) keeps
  the examples apart.

Padding: tokens get the vocabulary's pad id (0 without command tokens), every other
feature 0. The padding sits after Part B, in the causal region, so no real token
attends to it (spec 2.2 step 6). Truncating an example cuts its Part B; the
objectives never produce examples longer than ``T``, so this is only a safety net.

Packing is first-fit over a few open rows (:func:`pack_examples`); seqio's own
packer would regenerate the position ids, so it cannot be used. Packed rows hold
the examples in a different order than they came.
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from glm_jax.command_tokens import CommandTokens

FeatureSpec = seqio.FeatureConverter.FeatureSpec

SEQUENCE_FEATURES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")


class GLMFeatureConverter(seqio.FeatureConverter):
    """Pads or packs GLM examples to the task's length (see module docstring).

    ``task_feature_lengths`` may be ``{'tokens': T}``: every sequence feature of an
    example has the same length, so one number sets them all.
    """

    TASK_FEATURES = {
        **{name: FeatureSpec(dtype=tf.int32) for name in SEQUENCE_FEATURES},
        "sep": FeatureSpec(dtype=tf.int32, rank=0),
    }
    PACKING_FEATURE_DTYPES = {"segment_ids": tf.int32, "part_a": tf.bool}

    def __init__(
        self,
        pack: bool = False,
        command_tokens: Optional[CommandTokens] = None,
        apply_length_check: bool = True,
        pack_bins: int = 8,
    ):
        """Args:
        pack: pack several examples per row (with segment_ids and part_a).
        command_tokens: gives the pad id for tokens (0 if None).
        apply_length_check: seqio's runtime length assertions.
        pack_bins: rows open at once while packing (1 = sequential packing).
        """
        if pack_bins < 1:
            raise ValueError(f"pack_bins must be >= 1, got {pack_bins}")
        self._pad_id = 0 if command_tokens is None else command_tokens.pad
        self._pack_bins = pack_bins
        super().__init__(pack=pack, use_custom_packing_ops=False, apply_length_check=apply_length_check)

    @property
    def MODEL_FEATURES(self) -> Mapping[str, FeatureSpec]:  # noqa: N802 (seqio's name)
        """The sequences, plus ``sep`` when unpacked (packed rows add the packing features)."""
        features = {name: FeatureSpec(dtype=tf.int32) for name in SEQUENCE_FEATURES}
        if not self.pack:
            features["sep"] = FeatureSpec(dtype=tf.int32, rank=0)
        return features

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        """seqio's conversion and validations, after expanding ``{'tokens': T}``."""
        missing = [name for name in self.TASK_FEATURES if name not in ds.element_spec]
        if missing:
            # seqio's own message names only the first missing feature; the usual
            # cause is a seqio.Mixture, which keeps only its tasks' declared features.
            raise ValueError(
                f"GLMFeatureConverter: the dataset lacks the GLM features {missing} (it has "
                f"{sorted(ds.element_spec)}). A seqio.Mixture keeps only its tasks' declared "
                "output_features: declare the whole example, as glm_jax.data.pretraining.output_features does."
            )
        return super().__call__(ds, self._expand_lengths(task_feature_lengths))

    def _expand_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        if "tokens" not in task_feature_lengths:
            raise ValueError(f"task_feature_lengths needs 'tokens', got {dict(task_feature_lengths)}")
        length = task_feature_lengths["tokens"]
        lengths = {name: length for name in self.TASK_FEATURES}
        for name, value in task_feature_lengths.items():
            if name not in lengths:
                raise ValueError(f"unknown task feature {name!r}; GLM's are {sorted(lengths)}")
            if name in SEQUENCE_FEATURES and value != length:
                raise ValueError(
                    f"every GLM sequence feature has the length of 'tokens' ({length}); got {name}={value}"
                )
            lengths[name] = value
        return lengths

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        length = self._expand_lengths(task_feature_lengths)["tokens"]
        lengths = {name: length for name in SEQUENCE_FEATURES}
        if self.pack:
            lengths.update({name: length for name in self.PACKING_FEATURE_DTYPES})
        else:
            lengths["sep"] = 1  # rank 0: seqio skips its length check
        return lengths

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        length = task_feature_lengths["tokens"]
        if self.pack:
            return pack_examples(ds, length, self._pack_bins, self._pad_id)
        return ds.map(lambda ex: self._pad(_truncate(ex, length), length), num_parallel_calls=tf.data.AUTOTUNE)

    def _pad(self, example: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
        """Right-pad every sequence to ``length``: tokens with the pad id, the rest with 0."""
        out = {}
        for name, value in example.items():
            if value.shape.rank == 0:
                out[name] = value
                continue
            fill = self._pad_id if name == "tokens" else 0
            padded = tf.pad(value, [[0, length - tf.size(value)]], constant_values=tf.cast(fill, value.dtype))
            out[name] = tf.ensure_shape(padded, [length])
        return out


def _truncate(example: Mapping[str, tf.Tensor], length: int) -> dict[str, tf.Tensor]:
    """Cut the sequences to ``length`` and keep ``sep`` within it; drop other features."""
    out = {name: example[name][:length] for name in SEQUENCE_FEATURES}
    out["sep"] = tf.minimum(example["sep"], length)
    return out


def pack_examples(ds: tf.data.Dataset, length: int, num_bins: int = 8, pad_id: int = 0) -> tf.data.Dataset:
    """First-fit packing over ``num_bins`` open rows of ``length`` tokens.

    Each example (truncated to ``length`` first) goes into the first open row with
    room for it. When none has room, the fullest row is emitted and the example
    starts a new row in its place; at the end of the data the open rows are
    emitted, fullest first. The result is a pure function of the input order.
    ``num_bins=1`` is plain sequential ("next-fit") packing.

    Args:
      ds: GLM examples (the task features).
      length: row length ``T``.
      num_bins: rows kept open at once.
      pad_id: the tokens' padding.

    Returns:
      Rows of the five sequences, ``segment_ids`` (int32) and ``part_a`` (bool),
      all ``[T]``, padded.
    """
    names = (*SEQUENCE_FEATURES, "part_a", "segment_ids")
    # Inside the scan an example is one int32 [n, F] tensor and the open rows one
    # [num_bins, T, F] tensor: each step is a handful of ops, not a few per feature.
    is_segment_column = tf.one_hot(len(names) - 1, len(names), dtype=tf.int32)

    def columns(example: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        example = _truncate(example, length)
        size = tf.size(example["tokens"])
        part_a = tf.cast(tf.range(size) < example["sep"], tf.int32)
        values = [example[name] for name in SEQUENCE_FEATURES] + [part_a, tf.zeros([size], tf.int32)]
        return tf.stack(values, axis=1), tf.constant(False)

    # num_bins "flush" elements at the end make the scan emit every open row.
    flush = tf.data.Dataset.from_tensors((tf.zeros([0, len(names)], tf.int32), tf.constant(True)))
    initial = (
        tf.zeros([num_bins, length, len(names)], tf.int32),
        tf.zeros([num_bins], tf.int32),  # tokens used per row
        tf.zeros([num_bins], tf.int32),  # segments per row
    )

    def step(state, element):
        rows, used, segments = state
        example, is_flush = element
        size = tf.shape(example)[0]
        fits = (used + size <= length) & ~is_flush
        any_fits = tf.reduce_any(fits)
        # The first row with room, else the fullest row (emitted, then reused).
        target = tf.where(
            any_fits, tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
            tf.argmax(used, output_type=tf.int32),
        )
        emit = ~any_fits & (used[target] > 0)
        # Slots past a row's used length hold stale tokens of an emitted row: zero them
        # on the way out instead of clearing the row (a copy of the whole state).
        filled = tf.range(length) < used[target]
        emitted = (tf.where(filled[:, None], rows[target], 0), emit)

        start = tf.where(emit, 0, used[target])
        segment = tf.where(emit, 0, segments[target]) + 1
        slots = tf.stack([tf.fill([size], target), start + tf.range(size)], axis=1)
        rows = tf.tensor_scatter_nd_update(rows, slots, example + segment * is_segment_column)
        used = tf.tensor_scatter_nd_update(used, [[target]], [start + size])
        segments = tf.tensor_scatter_nd_update(segments, [[target]], [tf.where(size > 0, segment, segment - 1)])
        return (rows, used, segments), emitted

    def finish(row: tf.Tensor, emit: tf.Tensor) -> dict[str, tf.Tensor]:
        out = dict(zip(names, tf.unstack(row, num=len(names), axis=1)))
        out["tokens"] = tf.where(out["segment_ids"] > 0, out["tokens"], pad_id)
        out["part_a"] = tf.cast(out["part_a"], tf.bool)
        return out

    return (
        ds.map(columns, num_parallel_calls=tf.data.AUTOTUNE)
        .concatenate(flush.repeat(num_bins))
        .scan(initial, step)
        .filter(lambda row, emit: emit)
        .map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    )
