"""GLM's example layout from chosen spans: Part A, Part B and the 2D positions.

Spec 2.2 (blank infilling). For a text ``[CLS] x1 x2 x3 x4 x5 x6`` with spans
``x3`` and ``x5 x6`` and Part B order (x5 x6), (x3):

    tokens             CLS x1 x2 [M] x4 [M] | sop x5  x6  sop x3
    targets            CLS x1 x2 [M] x4 [M] | x5  x6  eop x3  eop
    loss_mask           0   0  0  0   0  0  |  1   1   1   1   1
    position_ids        0   1  2  3   4  5  |  5   5   5   3   3
    block_position_ids  0   0  0  0   0  0  |  1   2   3   1   2
    sep = 6

Labels are aligned with the inputs (``targets[t]`` is predicted at ``t``), not
shifted. Every feature is int32 ``[L + 2k]``; ``sep`` is an int32 scalar.

Suffix generation (spec 2.3) is the same layout with one span, the text's suffix,
minus its last Part B token: ``tokens = src [gMASK] [sop] tgt[:-1]``,
``targets = src [gMASK] tgt`` (no ``[eop]``), block ids ``1..g``, ``L + 1`` tokens.
"""

from __future__ import annotations

from typing import Optional, Union

import tensorflow as tf

FEATURES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")


def infilling_layout(
    text: tf.Tensor,
    starts: tf.Tensor,
    lengths: tf.Tensor,
    order: tf.Tensor,
    *,
    mask_id: Union[int, tf.Tensor],
    sop_id: int,
    eop_id: int,
    block_positions: bool = True,
    suffix: Union[bool, tf.Tensor] = False,
    dblock_id: Optional[int] = None,
    dblock_prob: Union[float, tf.Tensor] = 0.0,
    seed: Optional[tf.Tensor] = None,
) -> dict[str, tf.Tensor]:
    """Blank the spans of ``text`` and append them, in ``order``, as Part B.

    Args:
      text: int32 ``[L]``.
      starts: int32 ``[k]``, ascending, non-overlapping spans inside ``text``.
      lengths: int32 ``[k]``.
      order: int32 ``[k]``, a permutation: Part B holds span ``order[0]`` first.
      mask_id: the token that replaces each span in Part A.
      sop_id, eop_id: ``[sop]`` opens each Part B span, ``[eop]`` is its last target.
      block_positions: False = the ablation without block positions (all 1 in Part B).
      suffix: True for suffix generation: drop the example's last token (the
        ``[eop]`` target of its one span, which ends the text).
      dblock_id, dblock_prob, seed: replace each Part B input token except ``[sop]``
        by ``dblock_id`` with probability ``dblock_prob`` (targets unchanged).
        ``dblock_id=None`` turns the corruption off.

    Returns:
      The example: ``tokens, targets, loss_mask, position_ids, block_position_ids``
      (int32 ``[L + 2k]``, one less with ``suffix``) and ``sep`` (int32,
      ``L - sum(lengths) + k``).
    """
    text_len = tf.size(text)
    ones = tf.ones_like(starts)
    # +1 at a span's start, -1 one past its end: the running sum marks covered tokens.
    edges = tf.math.unsorted_segment_sum(
        tf.concat([ones, -ones], 0), tf.concat([starts, starts + lengths], 0), text_len + 1
    )
    covered = tf.cumsum(edges)[:text_len] > 0
    is_start = tf.math.unsorted_segment_sum(ones, starts, text_len) > 0
    part_a = tf.gather(tf.where(is_start, mask_id, text), tf.where(~covered | is_start)[:, 0])
    sep = tf.size(part_a)

    # A span's mask sits at its start minus the tokens removed by earlier spans.
    mask_pos = starts - tf.cumsum(lengths - 1, exclusive=True)
    start_b = tf.gather(starts, order)
    len_b = tf.gather(lengths, order)
    seg_end = tf.cumsum(len_b + 1)  # [sop] + span in, span + [eop] out
    b_len = tf.reduce_sum(len_b + 1)
    b_index = tf.range(b_len)
    seg = tf.searchsorted(seg_end, b_index, side="right", out_type=tf.int32)  # token -> span
    offset = b_index - tf.gather(seg_end - len_b - 1, seg)
    source = tf.gather(start_b, seg) + offset  # text index of the target token
    last = tf.maximum(text_len - 1, 0)
    b_targets = tf.where(
        tf.equal(offset, tf.gather(len_b, seg)), eop_id, tf.gather(text, tf.minimum(source, last))
    )
    b_inputs = tf.where(tf.equal(offset, 0), sop_id, tf.gather(text, tf.maximum(source - 1, 0)))
    if dblock_id is not None:
        if seed is None:
            raise ValueError("[dBLOCK] corruption needs a seed")
        hit = tf.random.stateless_uniform([b_len], seed) < dblock_prob
        b_inputs = tf.where(hit & (offset > 0), dblock_id, b_inputs)
    b_block = offset + 1 if block_positions else tf.ones_like(offset)

    example = {
        "tokens": tf.concat([part_a, b_inputs], 0),
        "targets": tf.concat([part_a, b_targets], 0),
        "loss_mask": tf.concat([tf.zeros([sep], tf.int32), tf.ones([b_len], tf.int32)], 0),
        "position_ids": tf.concat([tf.range(sep), tf.gather(tf.gather(mask_pos, order), seg)], 0),
        "block_position_ids": tf.concat([tf.zeros([sep], tf.int32), b_block], 0),
    }
    if suffix is not False:
        size = sep + b_len - tf.cast(suffix, tf.int32)
        example = {name: value[:size] for name, value in example.items()}
    return {**example, "sep": sep}
