"""Pretraining windows: documents concatenated into ``[CLS]``-led token windows.

Spec 3.1. Each document becomes ``[CLS] doc eos``; the documents are laid end to end
in one stream (so a window crosses document boundaries and a long document spans
several windows) and the stream is cut into windows of ``length`` tokens, each
starting with ``[CLS]``::

    docs   a1 a2 a3 a4 a5 | b1 b2 | c1 ...
    stream CLS a1 a2 a3 a4 a5 eos CLS b1 b2 eos CLS c1 ...
    length 6: [CLS a1 a2 a3 a4 a5] [CLS eos CLS b1 b2 eos] [CLS c1 ...]

A window is ``[CLS]`` + the next ``length - 1`` stream tokens, except when those
start a document: then the document's own ``[CLS]`` opens the window, which is one
token shorter. The official ``BlockDataset`` instead samples documents by length
and aligns long-document windows to sentence starts; we keep the stream order that
seqio's shuffle produced and cut anywhere. The stream's last partial window is
dropped.

**Length budget.** The objectives (glm_jax/data/spans.py) cut a window of ``n`` tokens to
``min(n, T - 2k)`` when they blank ``k`` spans (``T - 1`` for suffix generation),
so the default ``length = T - 2`` leaves room for one span: a document-level
example fills ``T`` exactly, a token-level one drops about ``2k - 2`` tokens
(``k`` ~ ``0.15 L / 3.16``, i.e. ~8% at T = 512). Pass a smaller ``length`` (e.g.
``T - 46``) to trade that for padding.
"""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf

from glm_jax.command_tokens import CommandTokens


def default_window_length(seq_len: int) -> int:
    """``T - 2``: the longest text a one-span example can hold."""
    return seq_len - 2


def document_windows(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]] = None,
    *,
    command_tokens: CommandTokens,
    length: Optional[int] = None,
    text_key: str = "targets",
    docs_per_step: int = 64,
) -> tf.data.Dataset:
    """seqio preprocessor: tokenized documents -> ``[CLS]``-led windows.

    Args:
      dataset: documents ``{text_key: int [m]}``, tokenized, without eos; other
        features are dropped.
      sequence_length: task feature lengths; ``length`` defaults to
        ``sequence_length['text']`` (the text cap, ``data.text_length``: windows as
        long as the official samples) or else
        ``default_window_length(sequence_length['tokens'])``.
      command_tokens: gives the ``[CLS]`` and eos ids.
      length: tokens per window, ``[CLS]`` included (>= 2).
      text_key: the feature holding the tokens, in and out.
      docs_per_step: documents concatenated per step (only affects speed).

    Returns:
      ``{text_key: int32 [length - 1 or length]}`` windows.
    """
    if length is None:
        if not sequence_length or "tokens" not in sequence_length:
            raise ValueError("give the window length or sequence_length['tokens']")
        length = sequence_length.get("text") or default_window_length(sequence_length["tokens"])
    if length < 2:
        raise ValueError(f"window length must be >= 2, got {length}")
    cls, eos = command_tokens.cls, command_tokens.eos
    chunk = length - 1  # stream tokens per window; [CLS] is prepended

    def frame(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        doc = tf.cast(features[text_key], tf.int32)
        return tf.concat([[cls], doc, [eos]], 0)

    def cut(carry: tf.Tensor, docs: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The carry is the stream's unfinished tail; emit every full chunk.
        stream = tf.concat([carry, docs.flat_values], 0)
        full = tf.size(stream) // chunk * chunk
        return stream[full:], tf.reshape(stream[:full], [-1, chunk])

    def open_with_cls(piece: tf.Tensor) -> dict[str, tf.Tensor]:
        # A piece that starts a document already has its [CLS].
        skip = tf.cast(tf.equal(piece[0], cls), tf.int32)
        return {text_key: tf.concat([[cls], piece], 0)[skip:]}

    return (
        dataset.map(frame, num_parallel_calls=tf.data.AUTOTUNE)
        .ragged_batch(docs_per_step)
        .scan(tf.zeros([0], tf.int32), cut)
        .unbatch()
        .map(open_with_cls, num_parallel_calls=tf.data.AUTOTUNE)
    )
