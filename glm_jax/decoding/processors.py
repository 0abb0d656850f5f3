"""Logit processors for the jitted decode loops: pure functions on ``[rows, vocab]``.

Forbidden tokens get ``-inf``, as the Hugging Face processors the official code
uses do; every processor leaves at least one finite entry per row.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jnp.ndarray
NEG_INF = -jnp.inf


def forbid_end_before_min_length(
    scores: Array, blank_length: Array, min_length: int, end_ids: Sequence[int]
) -> Array:
    """Forbid the end tokens in rows whose current blank is shorter than ``min_length``.

    Args:
      scores: ``[rows, vocab]`` logits or log-probabilities.
      blank_length: ``[rows]`` int, tokens generated in each row's current blank.
    """
    if min_length <= 0:
        return scores
    is_end = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(end_ids)].set(True)
    too_short = (blank_length < min_length)[:, None]
    return jnp.where(too_short & is_end[None, :], NEG_INF, scores)


def repeated_ngram_tokens(generated: Array, length: Array, ngram_size: int, vocab_size: int) -> Array:
    """Tokens that would complete an n-gram already in ``generated[:, :length]``.

    The fairseq / Hugging Face NoRepeatNGram rule: with p the last ``n - 1``
    generated tokens, ban every token that followed p earlier.

    Args:
      generated: ``[rows, max_len]`` int, the tokens generated so far (any value
        beyond ``length``).
      length: int scalar, how many are real (the same for every row: each decode
        step samples one token per row).
      ngram_size: n >= 1.
      vocab_size: V.

    Returns:
      ``[rows, vocab]`` bool, True where banned.
    """
    rows, max_len = generated.shape
    n = ngram_size
    if n > max_len:  # no n-gram fits in the buffer, so none can repeat
        return jnp.zeros((rows, vocab_size), bool)
    # The prefix p: generated[length - n + 1 : length] (clipped indices are harmless:
    # with length < n - 1 no window below is complete, so nothing matches).
    prefix_idx = jnp.clip(length - (n - 1) + jnp.arange(n - 1), 0, max_len - 1)
    prefix = generated[:, prefix_idx]  # [rows, n - 1]
    starts = jnp.arange(max_len - n + 1)  # window j covers j .. j + n - 1
    windows = generated[:, starts[:, None] + jnp.arange(n - 1)[None, :]]  # [rows, J, n - 1]
    following = generated[:, starts + n - 1]  # [rows, J]
    complete = (starts + n - 1 < length)[None, :]  # the whole n-gram was generated
    match = jnp.all(windows == prefix[:, None, :], axis=-1) & complete
    banned = jnp.zeros((rows, vocab_size), bool)
    return banned.at[jnp.arange(rows)[:, None], following].max(match)


def warp_for_sampling(logits: Array, temperature: float, top_k: int, top_p: float) -> Array:
    """Temperature, then top-k, then top-p (nucleus), in the Hugging Face order.

    Top-k keeps every token tied with the k-th largest; top-p keeps the smallest
    set of most likely tokens whose probability reaches ``top_p`` (always >= 1).
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, NEG_INF, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly likelier tokens
        keep_sorted = mass_before < top_p
        rows = jnp.arange(logits.shape[0])[:, None]
        keep = jnp.zeros(logits.shape, bool).at[rows, order].set(keep_sorted)
        logits = jnp.where(keep, logits, NEG_INF)
    return logits
