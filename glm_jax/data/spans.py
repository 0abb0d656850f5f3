"""Where the blanks go: span choice for GLM's three objectives, in stateless TF ops.

Each function takes one window ``text = [CLS] t1 ... t(n-1)`` (int32 ``[n]``, several
documents possibly, each followed by eos and the next one opened by ``[CLS]``), the
task's sequence length ``T`` and a stateless seed, and returns the spans to blank out
plus the length ``L <= n`` the window is cut to. Spec: glm_spec.md sections 2.2, 3.2.

**Length budget.** Blanking ``k`` spans in a text of ``L`` tokens gives an example of
``L + 2k`` tokens (each span leaves one mask token in Part A and adds ``[sop]`` /
``[eop]`` around its copy in Part B), or ``L + 1`` for suffix generation. The
official code lets that exceed the sequence length; here every objective cuts the
window to ``L = min(n, C, T - 2k)`` (``T - 1`` for suffix generation) while it
chooses the spans, so that an example never exceeds the row length ``T``. ``C``,
the text cap (``data.text_length``), bounds the text, and so the positions, on its
own: with ``T = C + 64`` and windows of ``C`` tokens, rows grow to ``C + 2k`` as the
official ones do and Part A spans the official position range; without it
(``C = T``) the text shrinks to make room for Part B. The mask ratio is taken of
the cut length ``L``. What is cut off the window's end is dropped (about ``2k - 2``
tokens per token-level window when windows hold ``T - 2`` tokens; see
glm_jax/data/windows.py).

**Never masked.** Position 0 (``[CLS]``), every ``[CLS]`` and eos inside the window
("barriers"): spans lie inside one document's text; and, for the token and
document objectives, the window's last token (the official sample's last token).
The sentence objective may take the window's final sentence, as the official
``sentence_spans`` list does.
Between two token-level spans there is at least one unmasked token.

All randomness is ``tf.random.stateless_*`` keyed by the ``seed`` argument
(``int32/int64 [2]``), so an example is a pure function of (text, seed).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf


class Spans(NamedTuple):
    """Blanks chosen in one window.

    Attributes:
      starts: int32 ``[k]``, ascending start index of each span in the window.
      lengths: int32 ``[k]``, tokens per span (>= 1).
      text_length: int32 scalar ``L``; the window is cut to ``text[:L]``.
    """

    starts: tf.Tensor
    lengths: tf.Tensor
    text_length: tf.Tensor


class GenerationSpan(NamedTuple):
    """The one long span of the document-level objective.

    Attributes:
      suffix: bool scalar; True = generate the last ``length`` tokens after a
        ``[gMASK]`` (spec 2.3), False = blank ``text[start:start+length]``.
      start: int32 scalar, the span's start (``text_length - length`` for a suffix).
      length: int32 scalar, tokens to generate (0 only for windows of < 3 tokens).
      text_length: int32 scalar ``L``; the window is cut to ``text[:L]``.
    """

    suffix: tf.Tensor
    start: tf.Tensor
    length: tf.Tensor
    text_length: tf.Tensor


def truncated_poisson_pmf(lam: float, max_length: int) -> np.ndarray:
    """Span-length probabilities for ``1..max_length``: the Poisson(lam) pmf restricted
    there and renormalised (official: ``poisson.pmf(i, 3)`` weights, ``i`` in 1..39).
    float64 ``[max_length]``."""
    i = np.arange(1, max_length + 1)
    log_pmf = i * math.log(lam) - lam - np.array([math.lgamma(k + 1) for k in i])
    pmf = np.exp(log_pmf - log_pmf.max())
    return pmf / pmf.sum()


def _inverse_cdf(pmf: np.ndarray) -> tf.Tensor:
    """float64 ``[C]`` cumulative table for inverse-CDF sampling; the last entry is 1."""
    cdf = np.cumsum(pmf)
    cdf[-1] = 1.0
    return tf.constant(cdf, tf.float64)


def _compress(x: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """``x[keep]`` for 1-D tensors, in fewer ops than ``tf.boolean_mask``."""
    return tf.gather(x, tf.where(keep)[:, 0])


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _is_barrier(text: tf.Tensor, barrier_ids: Sequence[int]) -> tf.Tensor:
    """bool ``[n]``: tokens a span may not cover or cross ([CLS], eos)."""
    out = tf.zeros_like(text, tf.bool)
    for i in barrier_ids:
        out |= tf.equal(text, i)
    return out


def _shift_right(x: tf.Tensor, fill: bool) -> tf.Tensor:
    """``x[i-1]`` at ``i`` (``fill`` at 0) for a 1-D bool tensor."""
    return tf.concat([[fill], x[:-1]], 0)


def _shift_left(x: tf.Tensor, fill: bool) -> tf.Tensor:
    """``x[i+1]`` at ``i`` (``fill`` at the end) for a 1-D bool tensor."""
    return tf.concat([x[1:], [fill]], 0)


def _floor_ratio(length: tf.Tensor, ratio: float) -> tf.Tensor:
    """``int(ratio * length)`` exactly as Python computes it (float64), int32."""
    return tf.cast(tf.floor(tf.cast(length, tf.float64) * ratio), tf.int32)


def _uniform_below(seed: tf.Tensor, bound: tf.Tensor) -> tf.Tensor:
    """One int32 uniform in ``[0, bound)`` per element of ``bound`` (bound >= 1)."""
    u = tf.random.stateless_uniform(tf.shape(bound), seed, dtype=tf.float32)
    draw = tf.cast(tf.floor(u * tf.cast(bound, tf.float32)), tf.int32)
    return tf.minimum(draw, bound - 1)  # guard the float rounding at u -> 1


# --------------------------------------------------------------------------- token


def _cap(seq_len: int, text_cap: Optional[int]) -> int:
    """The most text tokens: ``C`` (at most ``T``), or ``T`` without a cap."""
    return seq_len if text_cap is None else min(text_cap, seq_len)


def token_spans(
    text: tf.Tensor,
    seq_len: int,
    seed: tf.Tensor,
    *,
    barrier_ids: Sequence[int],
    ratio: float,
    length_pmf: np.ndarray,
    text_cap: Optional[int] = None,
) -> Spans:
    """Token-level blanks: Poisson span lengths until ``int(ratio * L)`` tokens are masked.

    Lengths are drawn i.i.d. from ``length_pmf`` (already a random order, as the
    official ``generate_blank_data`` shuffles them). The ``j``-th draw would cut the
    window to ``L_j = min(n, C, T - 2j)``; we stop at the first ``k`` whose lengths
    sum to at least ``int(ratio * L_k)``. The spans are then placed by :func:`place_spans`.

    Args:
      text: int32 ``[n]``, the window.
      seq_len: ``T``, the task's sequence length.
      seed: stateless seed ``[2]``.
      barrier_ids: ids never masked nor crossed ([CLS], eos).
      ratio: the mask ratio (official ``bert_ratio`` 0.15), < 0.5.
      length_pmf: ``[max_len]`` probabilities of lengths ``1..max_len``.
      text_cap: ``C``, the most text tokens (module docstring); None: ``T``.

    Returns:
      :class:`Spans`.
    """
    length_seed, place_seed = _split(seed, 2)
    cap = _cap(seq_len, text_cap)
    n = tf.size(text)
    # k spans mask >= k tokens and the target never exceeds int(ratio * T): this many
    # draws always reach it.
    max_spans = max(1, int(ratio * cap))
    u = tf.random.stateless_uniform([max_spans], length_seed, dtype=tf.float64)
    draws = tf.searchsorted(_inverse_cdf(length_pmf), u, side="right", out_type=tf.int32) + 1
    j = tf.range(max_spans + 1)
    text_len_j = tf.minimum(tf.minimum(n, cap), seq_len - 2 * j)
    masked_j = tf.concat([[0], tf.cumsum(draws)], 0)
    reached = tf.cast(masked_j >= _floor_ratio(text_len_j, ratio), tf.int32)
    k = tf.argmax(reached, output_type=tf.int32)  # the first j that reaches the target
    text_len = text_len_j[k]
    text = text[:text_len]
    maskable = _maskable(text, barrier_ids)
    starts, lengths = place_spans(draws[:k], maskable, ratio, place_seed)
    return Spans(starts, lengths, text_len)


def _maskable(text: tf.Tensor, barrier_ids: Sequence[int]) -> tf.Tensor:
    """bool ``[L]``: positions a span may cover (not 0, not L-1, no barrier)."""
    idx = tf.range(tf.size(text))
    inner = (idx >= 1) & (idx <= tf.size(text) - 2)
    return inner & ~_is_barrier(text, barrier_ids)


def _runs(maskable: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Maximal stretches of True: int32 ``run_start [R+1]``, ``run_len [R+1]``.

    A last, empty run is appended so that there is always a run (argmax and gather
    need one); it is never the longest unless it is the only one, and then nothing
    fits in it.
    """
    starts = tf.where(maskable & ~_shift_right(maskable, False))[:, 0]
    ends = tf.where(maskable & ~_shift_left(maskable, False))[:, 0]
    starts = tf.cast(starts, tf.int32)
    run_len = tf.cast(ends, tf.int32) - starts + 1
    return tf.concat([starts, [0]], 0), tf.concat([run_len, [0]], 0)


def place_spans(
    lengths: tf.Tensor, maskable: tf.Tensor, ratio: float, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Place spans of the given lengths on maskable runs, one free token between spans.

    Runs are the documents' maskable stretches. As in the official
    ``sample_span_in_document``, every run but the longest receives spans summing to
    at most ``int(ratio * run_len)`` (so they always fit) and the longest run takes
    the rest (see :func:`_assign_to_runs`). Spans that do not fit there are dropped;
    that happens only for windows of many tiny documents, where the official code
    drops the whole sample.

    Inside a run with ``k_r`` spans and ``slack`` free tokens beyond the mandatory
    gaps, each span draws ``u ~ U{0..slack}``; sorted, the ``i``-th span starts
    ``u_(i)`` plus the footprints (length + 1) of the spans before it after the run
    start (the official ``sample_spans``).

    Args:
      lengths: int32 ``[k]`` span lengths, in random order.
      maskable: bool ``[L]``.
      ratio: per-run quota ratio.
      seed: stateless seed ``[2]``.

    Returns:
      ``(starts, lengths)``, int32 ``[k']`` each, ascending by start, ``k' <= k``.
    """
    run_start, run_len = _runs(maskable)
    num_runs = tf.size(run_len)
    run_of_span = _assign_to_runs(lengths, run_len, ratio)

    # Only the longest run can overflow: keep the prefix of its spans that fits.
    longest = tf.argmax(run_len, output_type=tf.int32)
    to_longest = tf.equal(run_of_span, longest)
    footprint = lengths + 1
    used_longest = tf.cumsum(tf.where(to_longest, footprint, 0))
    keep = ~to_longest | (used_longest <= tf.gather(run_len, longest) + 1)
    lengths = _compress(lengths, keep)
    run_of_span = _compress(run_of_span, keep)
    footprint = lengths + 1

    used = tf.math.unsorted_segment_sum(footprint, run_of_span, num_runs) - 1
    slack = tf.gather(run_len - used, run_of_span)
    offset = _uniform_below(seed, slack + 1)
    # Sort by (run, offset): runs are in text order, so this is the order by start.
    key = tf.cast(run_of_span, tf.int64) * tf.cast(tf.size(maskable) + 1, tf.int64)
    order = tf.argsort(key + tf.cast(offset, tf.int64), stable=True)
    run_of_span = tf.gather(run_of_span, order)
    offset = tf.gather(offset, order)
    lengths = tf.gather(lengths, order)
    before = tf.cumsum(lengths + 1, exclusive=True)
    before_run = tf.gather(tf.math.unsorted_segment_min(before, run_of_span, num_runs), run_of_span)
    starts = tf.gather(run_start, run_of_span) + offset + before - before_run
    return starts, lengths


def _assign_to_runs(lengths: tf.Tensor, run_len: tf.Tensor, ratio: float) -> tf.Tensor:
    """int32 ``[k]``: the run each span goes to.

    Lay the span lengths end to end on a line and give every run but the longest a
    share of it, ``int(ratio * run_len)`` long, in text order. A span that falls
    entirely inside a run's share goes to that run (so the run's spans sum to at
    most its quota and always fit); every other span goes to the longest run. The
    official code fills the runs greedily one after another instead, which needs a
    loop over runs; this differs only in where a span that straddles two shares
    goes.
    """
    num_runs = tf.size(run_len)
    longest = tf.argmax(run_len, output_type=tf.int32)
    quota = tf.where(tf.range(num_runs) == longest, 0, _floor_ratio(run_len, ratio))
    share_end = tf.cumsum(quota)
    span_end = tf.cumsum(lengths)
    run = tf.searchsorted(share_end, span_end - lengths, side="right")  # share holding the start
    run_or_last = tf.minimum(run, num_runs - 1)
    inside = (run < num_runs) & (span_end <= tf.gather(share_end, run_or_last))
    return tf.where(inside, run_or_last, longest)


# ------------------------------------------------------------------------ sentence


def sentence_spans(
    text: tf.Tensor,
    seq_len: int,
    seed: tf.Tensor,
    *,
    barrier_ids: Sequence[int],
    sentence_end: tf.Tensor,
    ratio: float,
    text_cap: Optional[int] = None,
) -> Spans:
    """Sentence-level blanks: whole sentences in random order until ``int(ratio * L)``.

    A sentence runs up to and including a token whose ``sentence_end`` flag is set,
    or up to a barrier (an eos resets, spec 3.2), or up to the cut window's end (the
    final sentence, eligible as officially). Position 0 is never in a sentence. With ``k`` sentences the
    window is cut to ``L_k = min(n, C, T - 2k)``; for every candidate ``k`` (one
    ``[S+1, S]`` op) we take the first ``k`` eligible sentences of a random
    permutation and keep the smallest ``k`` that covers ``int(ratio * L_k)``. If
    none does, all eligible sentences of the largest feasible ``k`` are taken.
    Selected sentences may be adjacent (the official code allows it too).

    Args:
      text: int32 ``[n]``, the window.
      seq_len: ``T``.
      seed: stateless seed ``[2]``.
      barrier_ids: ids that end a sentence and are never masked ([CLS], eos).
      sentence_end: bool ``[vocab]``, True for tokens that end a sentence.
      ratio: the covered ratio (official ``gap_sentence_ratio`` 0.15).
      text_cap: ``C``, the most text tokens; None: ``T``.

    Returns:
      :class:`Spans`.
    """
    n = tf.size(text)
    cap = _cap(seq_len, text_cap)
    inside = (tf.range(n) >= 1) & ~_is_barrier(text, barrier_ids)
    is_end = tf.gather(sentence_end, text) & inside
    first = inside & (~_shift_right(inside, False) | _shift_right(is_end, False))
    last = inside & (is_end | ~_shift_left(inside, False))
    starts = tf.cast(tf.where(first)[:, 0], tf.int32)
    ends = tf.cast(tf.where(last)[:, 0], tf.int32)

    perm = tf.random.experimental.stateless_shuffle(tf.range(tf.size(starts)), seed)
    p_start, p_end = tf.gather(starts, perm), tf.gather(ends, perm)
    p_len = p_end - p_start + 1

    num = tf.size(starts)
    k = tf.range(num + 1)
    text_len_k = tf.minimum(tf.minimum(n, cap), seq_len - 2 * k)  # [S+1]
    eligible = p_end[None, :] <= text_len_k[:, None] - 1  # [S+1, S]: inside the cut window
    rank = tf.cumsum(tf.cast(eligible, tf.int32), axis=1)
    chosen = eligible & (rank <= k[:, None])
    count = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1)
    covered = tf.reduce_sum(tf.where(chosen, p_len[None, :], 0), axis=1)
    feasible = tf.equal(count, k)  # a prefix 0..k_max: eligibility shrinks as k grows
    ok = feasible & (covered >= _floor_ratio(text_len_k, ratio))
    fallback = tf.reduce_sum(tf.cast(feasible, tf.int32)) - 1
    best = tf.where(
        tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32), fallback
    )
    pick = chosen[best]
    sel_start = _compress(p_start, pick)
    sel_len = _compress(p_len, pick)
    by_start = tf.argsort(sel_start)
    return Spans(tf.gather(sel_start, by_start), tf.gather(sel_len, by_start), text_len_k[best])


# ------------------------------------------------------------------------ document


def generation_span(
    text: tf.Tensor,
    seq_len: int,
    seed: tf.Tensor,
    *,
    barrier_ids: Sequence[int],
    min_ratio: float,
    suffix_prob: float,
    text_cap: Optional[int] = None,
) -> GenerationSpan:
    """Document-level blank: one span of ``U{int(min_ratio * L), L - 2}`` tokens.

    With probability ``suffix_prob`` (official ``gpt_infill_prob``), or always when
    the window holds more than one document, the span is the window's suffix
    (generated after ``[gMASK]``, ``L = min(n, C, T - 1)``); otherwise it sits at a
    uniform place in ``[1, L - 2]`` (``L = min(n, C, T - 2)``). The official code draws
    one maximum length per batch; here each example draws its own.

    Args:
      text: int32 ``[n]``, the window.
      seq_len: ``T``.
      seed: stateless seed ``[2]``.
      barrier_ids: ids that separate documents ([CLS], eos).
      min_ratio: official ``gpt_min_ratio`` (0.5).
      suffix_prob: probability of suffix generation for a one-document window.
      text_cap: ``C``, the most text tokens; None: ``T``.

    Returns:
      :class:`GenerationSpan`.
    """
    mode_seed, length_seed, place_seed = _split(seed, 3)
    n = tf.minimum(tf.size(text), _cap(seq_len, text_cap))
    infill_len = tf.minimum(n, seq_len - 2)
    several_docs = tf.reduce_any(_is_barrier(text[1 : infill_len - 1], barrier_ids))
    coin = tf.random.stateless_uniform([], mode_seed)
    suffix = several_docs | (coin < suffix_prob)
    text_len = tf.where(suffix, tf.minimum(n, seq_len - 1), infill_len)

    high = tf.maximum(text_len - 2, 0)
    low = tf.minimum(_floor_ratio(text_len, min_ratio), high)
    length = low + _uniform_below(length_seed, high - low + 1)
    start_if_infill = 1 + _uniform_below(place_seed, tf.maximum(text_len - 1 - length, 1))
    start = tf.where(suffix, text_len - length, start_if_infill)
    return GenerationSpan(suffix, start, length, text_len)
