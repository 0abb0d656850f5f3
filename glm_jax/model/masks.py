"""Every GLM attention pattern, in one place.

GLM's rule (spec section 2.2): a query at q may attend to a key at k iff
``k < sep or k <= q``. Part A (the first ``sep`` tokens) is bidirectional; Part B
sees all of Part A and itself causally; Part A never sees Part B.

The model accepts the pattern in three forms, each turned into a boolean
``[batch, 1, q_len, kv_len]`` mask here (True = may attend):

* ``sep [batch]``: one Part A length per row.
* ``attention_mask [batch, q, kv]`` or ``[batch, 1, q, kv]``: an explicit 0/1 mask,
  the official code's 4-D form.
* ``segment_ids [batch, T]`` plus ``part_a [batch, T]``: packed rows holding several
  examples. A token sees only its own segment; inside it, the GLM rule holds with
  ``part_a[k]`` standing for ``k < sep`` of that segment. Use
  :func:`part_a_from_segment_sep` when you have one sep per segment instead.

Padding is not masked inside Part A, as in the official code (spec 2.4): right
padding sits in the causal region, so real tokens never see it.

Incremental decoding (a key/value cache of fixed length, see glm_jax/model/glm.py)
uses :func:`cache_mask`. There padding *is* masked: a batch of contexts of different
lengths is right-padded inside one bidirectional prefill, where the official rule
would let every real token see the padding. Each cache slot therefore carries a
validity flag, and a key is visible only if its slot holds a real token.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def sep_mask(sep: jnp.ndarray, q_len: int, kv_len: Optional[int] = None) -> jnp.ndarray:
    """GLM mask from Part A lengths.

    Args:
      sep: ``[batch]`` int, the length of Part A per row.
      q_len: number of query positions (the last ``q_len`` of the ``kv_len`` keys).
      kv_len: number of key positions; defaults to ``q_len``.

    Returns:
      ``[batch, 1, q_len, kv_len]`` bool. Query i sits at absolute position
      ``kv_len - q_len + i``, so queries appended after a cached prefix work too.
    """
    kv_len = q_len if kv_len is None else kv_len
    sep = jnp.asarray(sep).reshape(-1)
    q_idx = jnp.arange(q_len)[:, None] + (kv_len - q_len)
    k_idx = jnp.arange(kv_len)[None, :]
    causal = k_idx <= q_idx  # [q, kv]
    prefix = k_idx[None] < sep[:, None, None]  # [batch, 1, kv]
    return (causal[None] | prefix)[:, None]


def cache_mask(
    key_valid: jnp.ndarray, cache_index: jnp.ndarray, q_len: int, sep: jnp.ndarray
) -> jnp.ndarray:
    """GLM mask for ``q_len`` new tokens written into a key/value cache.

    The new tokens occupy slots ``cache_index .. cache_index + q_len - 1``. A new
    token at slot s sees slot k iff slot k holds a real token and either ``k <= s``
    (everything cached before it, and this call's tokens causally) or k is among
    the first ``sep`` tokens of this call (they form a bidirectional Part A). With
    an empty cache and all tokens valid this is exactly :func:`sep_mask`; a decode
    step (``sep = 0``) sees the whole cache, as the official code's memory does
    (spec 1.7).

    Args:
      key_valid: ``[batch, cache_len]`` bool, True where a slot holds a real token,
        already updated with this call's tokens.
      cache_index: int scalar, the slot of this call's first token.
      q_len: number of new tokens.
      sep: ``[batch]`` int, how many of this call's tokens are Part A.

    Returns:
      ``[batch, 1, q_len, cache_len]`` bool.
    """
    cache_len = key_valid.shape[-1]
    sep = jnp.asarray(sep).reshape(-1)
    k_idx = jnp.arange(cache_len)
    q_slot = cache_index + jnp.arange(q_len)
    causal = k_idx[None, :] <= q_slot[:, None]  # [q, cache_len]
    prefix = k_idx[None, None, :] < (cache_index + sep)[:, None, None]  # [batch, 1, cache_len]
    return ((causal[None] | prefix) & key_valid[:, None, :])[:, None]


def segment_mask(segment_ids: jnp.ndarray, part_a: jnp.ndarray) -> jnp.ndarray:
    """GLM mask for packed rows.

    Args:
      segment_ids: ``[batch, T]`` int; tokens of one example share an id. Id 0 marks
        padding, which only sees other padding.
      part_a: ``[batch, T]`` bool; True where the token is in its example's Part A.

    Returns:
      ``[batch, 1, T, T]`` bool.
    """
    t = segment_ids.shape[-1]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    visible = causal[None] | part_a.astype(bool)[:, None, :]
    return (same_segment & visible)[:, None]


def part_a_from_segment_sep(segment_ids: jnp.ndarray, segment_sep: jnp.ndarray) -> jnp.ndarray:
    """Per-token Part A flags from one sep per segment.

    Args:
      segment_ids: ``[batch, T]`` int, segments numbered 1, 2, ... in order of
        appearance, each contiguous; 0 is padding.
      segment_sep: ``[batch, num_segments]`` int; ``segment_sep[b, s - 1]`` is the
        Part A length of segment ``s``, counted from the segment's first token.

    Returns:
      ``[batch, T]`` bool.
    """
    t = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(t), segment_ids.shape)
    # A token's offset inside its segment: index minus the index of the segment's start.
    is_start = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    start = jax.lax.cummax(jnp.where(is_start, idx, 0), axis=1)
    offset = idx - start
    seg_index = jnp.clip(segment_ids - 1, 0, segment_sep.shape[-1] - 1)
    sep = jnp.take_along_axis(segment_sep, seg_index, axis=1)
    return (offset < sep) & (segment_ids > 0)


def from_dense(attention_mask: jnp.ndarray) -> jnp.ndarray:
    """Normalise an explicit 0/1 mask to ``[batch, 1, q, kv]`` bool."""
    if attention_mask.ndim == 3:
        attention_mask = attention_mask[:, None]
    if attention_mask.ndim != 4 or attention_mask.shape[1] != 1:
        raise ValueError(
            "attention_mask must have shape [batch, q, kv] or [batch, 1, q, kv], "
            f"got {attention_mask.shape}"
        )
    return attention_mask.astype(bool) if attention_mask.dtype != jnp.bool_ else attention_mask


def build(
    q_len: int,
    *,
    sep: Optional[jnp.ndarray] = None,
    attention_mask: Optional[jnp.ndarray] = None,
    segment_ids: Optional[jnp.ndarray] = None,
    part_a: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """The ``[batch, 1, q_len, q_len]`` bool mask from exactly one pattern form."""
    given = [name for name, v in (("sep", sep), ("attention_mask", attention_mask),
                                  ("segment_ids", segment_ids)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give the attention pattern as exactly one of sep, attention_mask or "
            f"segment_ids (+ part_a); got {given or 'none'}"
        )
    if sep is not None:
        return sep_mask(sep, q_len)
    if attention_mask is not None:
        mask = from_dense(attention_mask)
        if mask.shape[-1] != q_len or mask.shape[-2] != q_len:
            raise ValueError(f"attention_mask must be [batch, 1, {q_len}, {q_len}], got {mask.shape}")
        return mask
    if part_a is None:
        raise ValueError("segment_ids needs part_a (per-token Part A flags); see part_a_from_segment_sep")
    return segment_mask(segment_ids, part_a)
