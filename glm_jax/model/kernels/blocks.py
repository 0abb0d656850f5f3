"""Tile classification for the GLM mask, from per-token metadata.

Every GLM pattern that a blockwise kernel runs is stated per token (see
glm_jax/model/masks.py): a query at i may attend to a key at j iff

    segment_ids[i] == segment_ids[j]  and  (j <= i  or  part_a[j])

(a plain ``sep`` row is one segment with ``part_a = arange(T) < sep``). A kernel cuts
the ``[T, T]`` score matrix into ``block_q x block_kv`` tiles; for each example and
tile this module says whether the tile is

* ``MASKED``: no query in it may see any key in it. The kernel skips it.
* ``FULL``: every query may see every key. The kernel runs it without a mask.
* ``PARTIAL``: anything else. The kernel builds the tile's mask with :func:`tile_mask`.

The classification reads only per-block summaries (min/max segment id, the segment
range of the block's Part A keys, whether all keys are Part A), so it costs
``O(batch * T / block_q * T / block_kv)``, never a ``[T, T]`` mask. It is sound for
any metadata (a tile called MASKED or FULL really is so); it is exact for a ``sep``
row. For packed rows (contiguous segments, padding id 0 at the end) it may call a
few MASKED or FULL tiles PARTIAL, which costs time, not correctness. Segment ids
must be below ``2**31 - 2`` (the two largest int32 values are reserved).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MASKED, FULL, PARTIAL = 0, 1, 2
# Segment id of the rows a kernel appends to reach a multiple of the block size: no
# real token shares it, so the appended keys are invisible to every real query.
PAD_SEGMENT = np.iinfo(np.int32).max
_PADDING_RANK = PAD_SEGMENT - 1


def sep_metadata(sep: jnp.ndarray, length: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``sep [batch]`` -> (segment_ids ``[batch, T]`` all 1, part_a ``[batch, T]``)."""
    sep = jnp.asarray(sep).reshape(-1, 1)
    part_a = jnp.arange(length)[None, :] < sep
    return jnp.ones(part_a.shape, jnp.int32), part_a


def pad_to_blocks(x: jnp.ndarray, length: int, value=0) -> jnp.ndarray:
    """Pad axis 1 of ``x`` (``[batch, T, ...]``) to ``length`` with ``value``."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def padded_length(length: int, block_q: int, block_kv: int) -> int:
    """The smallest length >= ``length`` that both block sizes divide."""
    step = int(np.lcm(block_q, block_kv))
    return -(-length // step) * step


def classify(segment_ids: jnp.ndarray, part_a: jnp.ndarray, block_q: int, block_kv: int) -> jnp.ndarray:
    """Classify every tile of every example.

    Args:
      segment_ids: ``[batch, T]`` int; T a multiple of both block sizes.
      part_a: ``[batch, T]`` bool.
      block_q, block_kv: tile sizes along queries and keys.

    Returns:
      ``[batch, T // block_q, T // block_kv]`` int32 of MASKED / FULL / PARTIAL.
    """
    batch, length = segment_ids.shape
    if length % block_q or length % block_kv:
        raise ValueError(f"length {length} must be a multiple of block_q {block_q} and block_kv {block_kv}")
    seg = segment_ids.astype(jnp.int32)
    # Padding (id 0) trails a packed row; renumbered past every example it keeps the
    # ids rising along the row, so the min/max ranges below stay tight. Only equality
    # matters to the mask, and the renumbering keeps ids distinct.
    seg = jnp.where(seg == 0, _PADDING_RANK, seg)
    part_a = part_a.astype(bool)
    seg_q = seg.reshape(batch, -1, block_q)
    seg_k = seg.reshape(batch, -1, block_kv)
    pa_k = part_a.reshape(batch, -1, block_kv)
    big = np.iinfo(np.int32).max
    q_min, q_max = seg_q.min(-1)[:, :, None], seg_q.max(-1)[:, :, None]  # [batch, nq, 1]
    k_min, k_max = seg_k.min(-1)[:, None, :], seg_k.max(-1)[:, None, :]  # [batch, 1, nk]
    # The segments that own a Part A key of the block (an empty range if there is none).
    pa_min = jnp.where(pa_k, seg_k, big).min(-1)[:, None, :]
    pa_max = jnp.where(pa_k, seg_k, -big).max(-1)[:, None, :]
    all_pa = pa_k.all(-1)[:, None, :]

    q_first = (jnp.arange(seg_q.shape[1]) * block_q)[None, :, None]
    q_last = q_first + block_q - 1
    k_first = (jnp.arange(seg_k.shape[1]) * block_kv)[None, None, :]
    k_last = k_first + block_kv - 1

    segments_meet = (q_min <= k_max) & (k_min <= q_max)
    # A visible pair needs a shared segment and either j <= i somewhere in the tile or
    # a Part A key of a segment that some query of the tile belongs to.
    some_causal = k_first <= q_last
    part_a_meets = (q_min <= pa_max) & (pa_min <= q_max)
    any_visible = segments_meet & (some_causal | part_a_meets)
    one_segment = (q_min == q_max) & (k_min == k_max) & (q_min == k_min)
    all_visible = one_segment & ((k_last <= q_first) | all_pa)
    return jnp.where(all_visible, FULL, jnp.where(any_visible, PARTIAL, MASKED)).astype(jnp.int32)


def kv_ranges(classes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per (example, query block): the first and one-past-last key block to visit.

    Args:
      classes: ``[batch, nq, nk]`` from :func:`classify`.

    Returns:
      ``(lo, hi)`` ``[batch, nq]`` int32; every non-MASKED tile of the row lies in
      ``[lo, hi)``. A row of masked tiles only (impossible for GLM patterns, where
      every query sees itself) gets ``lo == hi``.
    """
    nk = classes.shape[-1]
    live = classes != MASKED
    idx = jnp.arange(nk, dtype=jnp.int32)
    lo = jnp.where(live, idx, nk).min(-1)
    hi = jnp.where(live, idx + 1, 0).max(-1)
    return lo.astype(jnp.int32), jnp.maximum(hi, lo).astype(jnp.int32)


def q_ranges(classes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per (example, key block): the query-block range to visit (backward pass)."""
    return kv_ranges(jnp.swapaxes(classes, 1, 2))


def tile_mask(seg_q: jnp.ndarray, seg_k: jnp.ndarray, part_a_k: jnp.ndarray,
              q_first, k_first) -> jnp.ndarray:
    """The exact ``[block_q, block_kv]`` bool mask of one tile.

    Args:
      seg_q: ``[block_q]`` segment ids of the tile's queries.
      seg_k, part_a_k: ``[block_kv]`` segment ids and Part A flags of its keys.
      q_first, k_first: int scalars, absolute positions of the first query and key.
    """
    q_idx = q_first + jnp.arange(seg_q.shape[0])
    k_idx = k_first + jnp.arange(seg_k.shape[0])
    visible = (k_idx[None, :] <= q_idx[:, None]) | part_a_k[None, :]
    return (seg_q[:, None] == seg_k[None, :]) & visible


def classify_dense(mask: np.ndarray, block_q: int, block_kv: int) -> np.ndarray:
    """Exact tile classes of a dense ``[batch, T, T]`` mask (a reference for tests
    and for counting what an ideal kernel would skip)."""
    mask = np.asarray(mask, bool)
    batch, tq, tk = mask.shape
    tiles = mask.reshape(batch, tq // block_q, block_q, tk // block_kv, block_kv)
    anyv, allv = tiles.any(axis=(2, 4)), tiles.all(axis=(2, 4))
    return np.where(allv, FULL, np.where(anyv, PARTIAL, MASKED)).astype(np.int32)


def kernel_vjp(forward, backward):
    """The differentiable attention of a Pallas kernel pair (pallas_gpu, pallas_tpu).

    ``forward(q, k, v, seg, pa, block_q, block_kv, interpret) -> (out, lse)`` and
    ``backward(q, k, v, seg, pa, out, lse, d_out, block_q, block_kv, interpret) ->
    (dq, dk, dv)``; the result takes forward's arguments and returns ``out``.
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
    def attention(q, k, v, seg, pa, block_q, block_kv, interpret):
        return forward(q, k, v, seg, pa, block_q, block_kv, interpret)[0]

    def attention_fwd(q, k, v, seg, pa, block_q, block_kv, interpret):
        out, lse = forward(q, k, v, seg, pa, block_q, block_kv, interpret)
        return out, (q, k, v, seg, pa, out, lse)

    def attention_bwd(block_q, block_kv, interpret, residuals, d_out):
        q, k, v, seg, pa, out, lse = residuals
        return (*backward(q, k, v, seg, pa, out, lse, d_out, block_q, block_kv, interpret), None, None)

    attention.defvjp(attention_fwd, attention_bwd)
    return attention
