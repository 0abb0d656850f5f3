"""Flash-style blockwise attention for the GLM mask, in plain JAX.

For each example and each block of ``block_q`` queries, the keys are visited one
block of ``block_kv`` at a time with an online softmax (running max ``m``, running
sum ``l``, unnormalised output ``acc``; FlashAttention-2, section 3.1). Tiles that
glm_jax/model/kernels/blocks.py classifies as MASKED are skipped, FULL tiles run
without a mask, PARTIAL tiles build their mask from segment ids and Part A flags.
Nothing of size ``[T, T]`` is ever formed: the forward keeps ``[heads, block_q,
block_kv]`` scores and the ``[batch, heads, T]`` log-sum-exp, and the backward
(a ``jax.custom_vjp``) recomputes each visited tile's probabilities from it.

Skipping is real, per example: the work list is the flat range of (example, query
block) pairs run by ``lax.map`` and, inside, a ``lax.fori_loop`` over that pair's key
blocks with ``lax.switch`` on the tile class (no ``vmap``, which would turn the switch
into a select that runs every branch). The same loops run on every backend; on GPU
they launch one small fusion per tile, so the Pallas kernel
(glm_jax/model/kernels/pallas_gpu.py) is the fast path there.

Conventions: ``key`` arrives already scaled by 1/sqrt(head_dim) (the official GLM
scales K, not the scores); scores and softmax are float32; the matmuls take the
input dtype and accumulate in float32.

Attention dropout, when ``dropout_rate > 0``, draws each tile's keep mask from
``fold_in(rng, (b * nq + qb) * nk + kb)``, so the backward redraws exactly the same
mask; the pattern therefore depends on the block sizes (:func:`dropout_keep_mask`
builds it densely for tests).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from glm_jax.model.kernels import blocks

Array = jnp.ndarray
# The running max starts finite so that exp(m_old - m_new) is never exp(-inf + inf).
_M_INIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def blockwise_attention(query: Array, key: Array, value: Array, segment_ids: Array, part_a: Array, *,
                        block_q: int = 128, block_kv: int = 128, dropout_rate: float = 0.0,
                        dropout_rng: Optional[Array] = None) -> Array:
    """``softmax(q k^T + mask) v`` over the GLM pattern, skipping masked tiles.

    Args:
      query, key, value: ``[batch, T, heads, head_dim]``; key already scaled.
      segment_ids: ``[batch, T]`` int (non-negative); part_a: ``[batch, T]`` bool.
        A ``sep`` row is :func:`blocks.sep_metadata`.
      block_q, block_kv: tile sizes; T is padded up to a multiple of both.
      dropout_rate: attention dropout on the probabilities (0 = none).
      dropout_rng: a PRNG key, required when ``dropout_rate > 0``.

    Returns:
      ``[batch, T, heads, head_dim]`` in the query's dtype.
    """
    q, k, v, seg, pa, rng, length = prepare_inputs(query, key, value, segment_ids, part_a, block_q, block_kv,
                                             dropout_rate, dropout_rng)
    return _attention(q, k, v, seg, pa, rng, block_q, block_kv, float(dropout_rate))[:, :length]


def blockwise_attention_with_stats(query: Array, key: Array, value: Array, segment_ids: Array, part_a: Array, *,
                                   block_q: int = 128, block_kv: int = 128) -> tuple[Array, dict]:
    """The forward of :func:`blockwise_attention` (no gradient) and what it did.

    Returns ``(out, stats)`` with ``stats['visited']`` the number of tiles the loop
    computed (counted inside the loop), ``stats['total']`` the number of tiles, and
    ``stats['classes']`` ``[batch, nq, nk]`` the tile classes.
    """
    q, k, v, seg, pa, rng, length = prepare_inputs(
        query, key, value, segment_ids, part_a, block_q, block_kv, 0.0, None)
    out, _, visited, classes = _forward(q, k, v, seg, pa, rng, block_q, block_kv, 0.0)
    return out[:, :length], dict(visited=visited.sum(), total=classes.size, classes=classes)


def prepare_inputs(query, key, value, segment_ids, part_a, block_q, block_kv, dropout_rate, dropout_rng):
    """Check shapes; pad T to a multiple of both blocks (padding keys get a segment
    of their own, so no real query sees them); turn the dropout key into raw uint32
    key data. Returns ``(q, k, v, seg, part_a, rng, original_length)``."""
    if query.ndim != 4 or key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            "blockwise attention takes self-attention query, key, value of one shape "
            f"[batch, T, heads, head_dim]; got {query.shape}, {key.shape}, {value.shape}"
        )
    batch, length = query.shape[:2]
    if segment_ids.shape != (batch, length) or part_a.shape != (batch, length):
        raise ValueError(f"segment_ids and part_a must be [batch, T] = {(batch, length)}, "
                         f"got {segment_ids.shape} and {part_a.shape}")
    if block_q <= 0 or block_kv <= 0:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_kv={block_kv}")
    if dropout_rate > 0 and dropout_rng is None:
        raise ValueError("blockwise attention with dropout_rate > 0 needs dropout_rng")
    if dropout_rng is None:
        rng = jnp.zeros((2,), jnp.uint32)
    elif jnp.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(dropout_rng)
    else:
        rng = jnp.asarray(dropout_rng, jnp.uint32)
    padded = blocks.padded_length(length, block_q, block_kv)
    q, k, v = (blocks.pad_to_blocks(x, padded) for x in (query, key, value))
    seg = blocks.pad_to_blocks(segment_ids.astype(jnp.int32), padded, blocks.PAD_SEGMENT)
    pa = blocks.pad_to_blocks(part_a.astype(bool), padded, False)
    return q, k, v, seg, pa, rng, length


def _keep_mask(rng, flat_tile, keep_prob, shape):
    return jax.random.bernoulli(jax.random.fold_in(rng, flat_tile), keep_prob, shape)


def dropout_keep_mask(dropout_rng: Array, batch: int, heads: int, length: int, block_q: int, block_kv: int,
                      dropout_rate: float) -> Array:
    """The ``[batch, heads, T, T]`` keep mask that :func:`blockwise_attention` draws
    tile by tile (tests compare against dense attention with this mask)."""
    rng = jax.random.key_data(dropout_rng) if jnp.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key) \
        else jnp.asarray(dropout_rng, jnp.uint32)
    padded = blocks.padded_length(length, block_q, block_kv)
    nq, nk = padded // block_q, padded // block_kv
    tiles = jnp.arange(batch * nq * nk)
    keep = jax.vmap(lambda t: _keep_mask(rng, t, 1.0 - dropout_rate, (heads, block_q, block_kv)))(tiles)
    keep = keep.reshape(batch, nq, nk, heads, block_q, block_kv).transpose(0, 3, 1, 4, 2, 5)
    return keep.reshape(batch, heads, padded, padded)[:, :, :length, :length]


def _dot(equation: str, a: Array, b: Array) -> Array:
    """``einsum`` accumulating in float32. XLA:CPU has no bf16 x bf16 -> f32 dot
    inside these loops, so on CPU the operands are upcast first: the products of two
    bf16 numbers are exact in float32, so the result is the same."""
    if jax.default_backend() == "cpu" and a.dtype != jnp.float32:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(equation, a, b, preferred_element_type=jnp.float32)


def _tile(x: Array, b, start, size: int) -> Array:
    """``x[b, start:start + size]`` for ``x [batch, T, ...]``."""
    starts = (b, start) + (0,) * (x.ndim - 2)
    return lax.dynamic_slice(x, starts, (1, size) + x.shape[2:])[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attention(q, k, v, seg, pa, rng, block_q, block_kv, dropout_rate):
    return _forward(q, k, v, seg, pa, rng, block_q, block_kv, dropout_rate)[0]


def _forward(q, k, v, seg, pa, rng, block_q, block_kv, dropout_rate):
    """Returns out ``[batch, T, heads, d]``, lse ``[batch, heads, T]``, visited tiles
    per (example, query block) ``[batch * nq]`` and the tile classes."""
    batch, length, heads, head_dim = q.shape
    nq, nk = length // block_q, length // block_kv
    classes = blocks.classify(seg, pa, block_q, block_kv)
    lo, hi = blocks.kv_ranges(classes)
    keep_prob = 1.0 - dropout_rate

    def row_block(item):
        b, qb = item // nq, item % nq
        q_first = qb * block_q
        q_blk, seg_q = _tile(q, b, q_first, block_q), _tile(seg, b, q_first, block_q)

        def visit(kb, carry, masked: bool):
            acc, m, l, n = carry
            k_first = kb * block_kv
            k_blk, v_blk = _tile(k, b, k_first, block_kv), _tile(v, b, k_first, block_kv)
            s = _dot("qhd,khd->hqk", q_blk, k_blk)
            if masked:
                tm = blocks.tile_mask(seg_q, _tile(seg, b, k_first, block_kv), _tile(pa, b, k_first, block_kv),
                                      q_first, k_first)
                s = jnp.where(tm[None], s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.exp(s - m_new[..., None])
            l = alpha * l + p.sum(-1)
            if dropout_rate > 0:
                keep = _keep_mask(rng, (b * nq + qb) * nk + kb, keep_prob, p.shape)
                p = jnp.where(keep, p / keep_prob, 0.0)
            pv = _dot("hqk,khd->hqd", p.astype(v.dtype), v_blk)
            return alpha[..., None] * acc + pv, m_new, l, n + 1

        def body(kb, carry):
            branches = [lambda c: c, functools.partial(visit, kb, masked=False),
                        functools.partial(visit, kb, masked=True)]
            return lax.switch(classes[b, qb, kb], branches, carry)

        init = (jnp.zeros((heads, block_q, head_dim), jnp.float32),
                jnp.full((heads, block_q), _M_INIT, jnp.float32),
                jnp.zeros((heads, block_q), jnp.float32), jnp.zeros((), jnp.int32))
        acc, m, l, n = lax.fori_loop(lo[b, qb], hi[b, qb], body, init)
        out = (acc / l[..., None]).transpose(1, 0, 2).astype(q.dtype)
        return out, m + jnp.log(l), n

    outs, lses, visited = lax.map(row_block, jnp.arange(batch * nq))
    out = outs.reshape(batch, length, heads, head_dim)
    lse = lses.reshape(batch, nq, heads, block_q).transpose(0, 2, 1, 3).reshape(batch, heads, length)
    return out, lse, visited, classes


def _attention_fwd(q, k, v, seg, pa, rng, block_q, block_kv, dropout_rate):
    out, lse, _, _ = _forward(q, k, v, seg, pa, rng, block_q, block_kv, dropout_rate)
    return out, (q, k, v, seg, pa, rng, out, lse)


def _attention_bwd(block_q, block_kv, dropout_rate, residuals, d_out):
    q, k, v, seg, pa, rng, out, lse = residuals
    dq, dk, dv = backward(q, k, v, seg, pa, rng, out, lse, d_out, block_q, block_kv, dropout_rate)
    return dq, dk, dv, None, None, None


def backward(q, k, v, seg, pa, rng, out, lse, d_out, block_q, block_kv, dropout_rate):
    """Gradients of blockwise attention w.r.t. q, k, v from the saved ``out`` and
    ``lse [batch, heads, T]`` (also the Pallas kernel's backward).

    Loops over (example, key block) pairs and, inside, over the query blocks whose
    tile is not MASKED: dK and dV of the key block accumulate in the loop carry, dQ
    in a ``[batch, T, heads, d]`` float32 buffer. FlashAttention-2's identity
    ``rowsum(P * dP) = rowsum(dO * O)`` gives the softmax term without P's row.
    """
    batch, length, heads, head_dim = q.shape
    nq, nk = length // block_q, length // block_kv
    classes = blocks.classify(seg, pa, block_q, block_kv)
    lo, hi = blocks.q_ranges(classes)
    keep_prob = 1.0 - dropout_rate
    delta = jnp.einsum("bthd,bthd->bht", d_out.astype(jnp.float32), out.astype(jnp.float32))
    dtype = q.dtype

    def col_block(item, grads):
        dq_all, dk_all, dv_all = grads
        b, kb = item // nk, item % nk
        k_first = kb * block_kv
        k_blk, v_blk = _tile(k, b, k_first, block_kv), _tile(v, b, k_first, block_kv)
        seg_k, pa_k = _tile(seg, b, k_first, block_kv), _tile(pa, b, k_first, block_kv)

        def visit(qb, carry, masked: bool):
            dq_all, dk, dv = carry
            q_first = qb * block_q
            q_blk, do_blk = _tile(q, b, q_first, block_q), _tile(d_out, b, q_first, block_q)
            stats = lax.dynamic_slice(jnp.stack([lse, delta]), (0, b, 0, q_first), (2, 1, heads, block_q))[:, 0]
            s = _dot("qhd,khd->hqk", q_blk, k_blk)
            if masked:
                tm = blocks.tile_mask(_tile(seg, b, q_first, block_q), seg_k, pa_k, q_first, k_first)
                s = jnp.where(tm[None], s, -jnp.inf)
            p = jnp.exp(s - stats[0][..., None])
            dp = _dot("qhd,khd->hqk", do_blk, v_blk)
            p_used = p
            if dropout_rate > 0:
                keep = _keep_mask(rng, (b * nq + qb) * nk + kb, keep_prob, p.shape)
                scale = jnp.where(keep, 1.0 / keep_prob, 0.0)
                p_used, dp = p * scale, dp * scale
            dv = dv + _dot("hqk,qhd->hkd", p_used.astype(dtype), do_blk)
            ds = (p * (dp - stats[1][..., None])).astype(dtype)
            dk = dk + _dot("hqk,qhd->hkd", ds, q_blk)
            dq_blk = _dot("hqk,khd->qhd", ds, k_blk)
            dq_all = lax.dynamic_update_slice(
                dq_all, _tile(dq_all, b, q_first, block_q)[None] + dq_blk[None], (b, q_first, 0, 0))
            return dq_all, dk, dv

        def body(qb, carry):
            branches = [lambda c: c, functools.partial(visit, qb, masked=False),
                        functools.partial(visit, qb, masked=True)]
            return lax.switch(classes[b, qb, kb], branches, carry)

        zeros = jnp.zeros((heads, block_kv, head_dim), jnp.float32)
        dq_all, dk, dv = lax.fori_loop(lo[b, kb], hi[b, kb], body, (dq_all, zeros, zeros))
        start = (b, k_first, 0, 0)
        dk_all = lax.dynamic_update_slice(dk_all, dk.transpose(1, 0, 2)[None].astype(dtype), start)
        dv_all = lax.dynamic_update_slice(dv_all, dv.transpose(1, 0, 2)[None].astype(dtype), start)
        return dq_all, dk_all, dv_all

    grads = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, dtype), jnp.zeros(v.shape, dtype))
    dq, dk, dv = lax.fori_loop(0, batch * nk, col_block, grads)
    return dq.astype(dtype), dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd)
