"""The GLM tile-skipping attention as a Pallas kernel (Triton lowering on GPU).

One program per (query block, example, head), as in FlashAttention-2: it loads its
``[block_q, head_dim]`` queries once and runs an online softmax over the key blocks
``[lo, hi)`` of its (example, query block), where ``lo`` and ``hi`` come from
glm_jax/model/kernels/blocks.py and reach the kernel as scalars. Tiles outside the
range are never loaded; that is the skipping. Inside the range each tile's mask is
rebuilt from segment ids and Part A flags (a few integer compares per score, cheap
next to the two matmuls), so FULL and PARTIAL tiles share one code path.

The backward pass is two more kernels in the FlashAttention-2 layout, with the same
ranges: one program per (key block, example, head) accumulates dK and dV over the
query blocks that see it (:func:`blocks.q_ranges`), one per (query block, example,
head) accumulates dQ over its key blocks; both recompute the tile's probabilities
from the forward's log-sum-exp, and ``delta = rowsum(dO * O)`` comes from plain JAX.

Off GPU the kernel runs with ``interpret=True`` (how the tests check it on CPU).
On GPU it needs ``block_q``, ``block_kv`` and ``head_dim`` powers of two >= 16
(Triton's ``dot``); every GLM preset's head_dim (64 or 128) qualifies.

TPU: this file's kernel does not lower to Mosaic; glm_jax/model/kernels/pallas_tpu.py
is the same algorithm laid out for Mosaic (key blocks as a grid axis whose index
maps read ``lo``/``hi`` by scalar prefetch). Splash attention cannot take this
pattern directly: its masks are static and shared by the whole batch, and its
dynamic-mask path needs a materialised ``[heads, T, T]`` mask per example.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from glm_jax.model.kernels import blocks, blockwise

Array = jnp.ndarray
_M_INIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def pallas_attention(query: Array, key: Array, value: Array, segment_ids: Array, part_a: Array, *,
                     block_q: int = 128, block_kv: int = 128, interpret: bool | None = None) -> Array:
    """Same contract as :func:`blockwise.blockwise_attention` (no dropout).

    Args:
      query, key, value: ``[batch, T, heads, head_dim]``; key already scaled.
      segment_ids: ``[batch, T]`` int; part_a: ``[batch, T]`` bool.
      block_q, block_kv: tile sizes; T is padded up to a multiple of both.
      interpret: run the kernel in the Pallas interpreter; default: when the
        default backend is not a GPU.

    Returns:
      ``[batch, T, heads, head_dim]`` in the query's dtype.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if not interpret:
        _check_triton_shapes(query.shape[-1], block_q, block_kv)
    q, k, v, seg, pa, _, length = blockwise.prepare_inputs(
        query, key, value, segment_ids, part_a, block_q, block_kv, 0.0, None)
    return _attention(q, k, v, seg, pa, block_q, block_kv, interpret)[:, :length]


def _check_triton_shapes(head_dim: int, block_q: int, block_kv: int) -> None:
    for name, n in (("head_dim", head_dim), ("block_q", block_q), ("block_kv", block_kv)):
        if n < 16 or n & (n - 1):
            raise ValueError(f"the Pallas GPU attention kernel needs {name} a power of two >= 16, got {n} "
                             "(model.attention_block_size sets the blocks)")


def _dot(a, b, upcast: bool):
    """``a @ b`` accumulated in float32. ``upcast``: interpreting on CPU, whose XLA has
    no bf16 x bf16 -> f32 dot; float32 products of bf16 operands are exact, so the
    result is the same."""
    if upcast:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _tile_mask(seg_ref, pa_ref, q_first, k_first, block_q, block_kv):
    """The GLM mask of one ``[block_q, block_kv]`` tile from the row's metadata refs."""
    seg_q = seg_ref[pl.ds(q_first, block_q)]
    seg_k, pa_k = seg_ref[pl.ds(k_first, block_kv)], pa_ref[pl.ds(k_first, block_kv)]
    q_idx = q_first + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 0)
    k_idx = k_first + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    return (seg_q[:, None] == seg_k[None, :]) & ((k_idx <= q_idx) | (pa_k[None, :] != 0))


def _forward_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, seg_ref, pa_ref, o_ref, lse_ref, *,
                    block_q, block_kv, upcast):
    """One (query block, example, head). Refs: lo/hi scalars; q, o ``[block_q, d]``;
    k, v ``[T, d]``; seg, pa ``[T]`` int32; lse ``[block_q]``."""
    q_first = pl.program_id(0) * block_q
    q = q_ref[...]

    def body(kb, carry):
        acc, m, l = carry
        k_first = kb * block_kv
        tile = pl.ds(k_first, block_kv)
        k, v = k_ref[tile, :], v_ref[tile, :]
        mask = _tile_mask(seg_ref, pa_ref, q_first, k_first, block_q, block_kv)
        s = jnp.where(mask, _dot(q, k.T, upcast), _M_INIT)  # [block_q, block_kv]
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        l = alpha * l + jnp.sum(p, axis=1)
        return alpha[:, None] * acc + _dot(p.astype(v.dtype), v, upcast), m_new, l

    init = (jnp.zeros(q.shape, jnp.float32), jnp.full((block_q,), _M_INIT, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    acc, m, l = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _probs_and_dscores(q, k, v, d_out, lse, delta, mask, upcast):
    """A tile's probabilities P and score gradients dS = P * (dO V^T - delta)."""
    p = jnp.where(mask, jnp.exp(_dot(q, k.T, upcast) - lse[:, None]), 0.0)
    ds = p * (_dot(d_out, v.T, upcast) - delta[:, None])
    return p, ds


def _dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref, pa_ref,
                dk_ref, dv_ref, *, block_q, block_kv, upcast):
    """One (key block, example, head). Refs: lo/hi scalars (query-block range); q, dO
    ``[T, d]``; k, v, dk, dv ``[block_kv, d]``; lse, delta ``[T]``; seg, pa ``[T]``."""
    k_first = pl.program_id(0) * block_kv
    k, v = k_ref[...], v_ref[...]

    def body(qb, carry):
        dk, dv = carry
        q_first = qb * block_q
        tile = pl.ds(q_first, block_q)
        q, d_out = q_ref[tile, :], do_ref[tile, :]
        mask = _tile_mask(seg_ref, pa_ref, q_first, k_first, block_q, block_kv)
        p, ds = _probs_and_dscores(q, k, v, d_out, lse_ref[tile], delta_ref[tile], mask, upcast)
        dv = dv + _dot(p.astype(d_out.dtype).T, d_out, upcast)
        dk = dk + _dot(ds.astype(q.dtype).T, q, upcast)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(lo_ref[()], hi_ref[()], body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref, pa_ref, dq_ref, *,
               block_q, block_kv, upcast):
    """One (query block, example, head). Refs: lo/hi scalars (key-block range); q, dO,
    dq ``[block_q, d]``; k, v ``[T, d]``; lse, delta ``[block_q]``; seg, pa ``[T]``."""
    q_first = pl.program_id(0) * block_q
    q, d_out, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

    def body(kb, dq):
        k_first = kb * block_kv
        tile = pl.ds(k_first, block_kv)
        k = k_ref[tile, :]
        mask = _tile_mask(seg_ref, pa_ref, q_first, k_first, block_q, block_kv)
        _, ds = _probs_and_dscores(q, k, v_ref[tile, :], d_out, lse, delta, mask, upcast)
        return dq + _dot(ds.astype(k.dtype), k, upcast)

    dq = lax.fori_loop(lo_ref[()], hi_ref[()], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


class _Specs:
    """BlockSpecs over a grid ``(block index, example, head)``."""

    def __init__(self, length: int, head_dim: int):
        self.scalar = pl.BlockSpec((None, None), lambda i, b, h: (b, i))
        self.row = pl.BlockSpec((None, length), lambda i, b, h: (b, 0))
        self.seq = pl.BlockSpec((None, length, None, head_dim), lambda i, b, h: (b, 0, h, 0))
        self.stats = pl.BlockSpec((None, None, length), lambda i, b, h: (b, h, 0))

    @staticmethod
    def tile(block: int, head_dim: int):
        return pl.BlockSpec((None, block, None, head_dim), lambda i, b, h: (b, i, h, 0))

    @staticmethod
    def stats_tile(block: int):
        return pl.BlockSpec((None, None, block), lambda i, b, h: (b, h, i))


def _call(kernel, name, grid, in_specs, out_specs, out_shape, head_dim, interpret):
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        # Triton's parameters also pick the Triton lowering (the GPU default is Mosaic GPU).
        compiler_params=pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2),
        interpret=interpret, name=name,
    )


def _upcast(dtype, interpret: bool) -> bool:
    return interpret and jax.default_backend() == "cpu" and dtype != jnp.float32


def _forward(q, k, v, seg, pa, block_q, block_kv, interpret):
    batch, length, heads, head_dim = q.shape
    lo, hi = blocks.kv_ranges(blocks.classify(seg, pa, block_q, block_kv))
    specs = _Specs(length, head_dim)
    kernel = functools.partial(_forward_kernel, block_q=block_q, block_kv=block_kv,
                               upcast=_upcast(q.dtype, interpret))
    q_tile = specs.tile(block_q, head_dim)
    return _call(
        kernel, "glm_prefix_attention_fwd", (length // block_q, batch, heads),
        [specs.scalar, specs.scalar, q_tile, specs.seq, specs.seq, specs.row, specs.row],
        [q_tile, specs.stats_tile(block_q)],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)],
        head_dim, interpret,
    )(lo, hi, q, k, v, seg.astype(jnp.int32), pa.astype(jnp.int32))


def _backward(q, k, v, seg, pa, out, lse, d_out, block_q, block_kv, interpret):
    batch, length, heads, head_dim = q.shape
    classes = blocks.classify(seg, pa, block_q, block_kv)
    delta = jnp.einsum("bthd,bthd->bht", d_out.astype(jnp.float32), out.astype(jnp.float32))
    seg, pa = seg.astype(jnp.int32), pa.astype(jnp.int32)
    specs = _Specs(length, head_dim)
    options = dict(block_q=block_q, block_kv=block_kv, upcast=_upcast(q.dtype, interpret))

    q_lo, q_hi = blocks.q_ranges(classes)
    k_tile = specs.tile(block_kv, head_dim)
    dk, dv = _call(
        functools.partial(_dkv_kernel, **options), "glm_prefix_attention_dkv", (length // block_kv, batch, heads),
        [specs.scalar, specs.scalar, specs.seq, k_tile, k_tile, specs.seq, specs.stats, specs.stats,
         specs.row, specs.row],
        [k_tile, k_tile], [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        head_dim, interpret,
    )(q_lo, q_hi, q, k, v, d_out, lse, delta, seg, pa)

    k_lo, k_hi = blocks.kv_ranges(classes)
    q_tile, q_stats = specs.tile(block_q, head_dim), specs.stats_tile(block_q)
    dq = _call(
        functools.partial(_dq_kernel, **options), "glm_prefix_attention_dq", (length // block_q, batch, heads),
        [specs.scalar, specs.scalar, q_tile, specs.seq, specs.seq, q_tile, q_stats, q_stats, specs.row, specs.row],
        q_tile, jax.ShapeDtypeStruct(q.shape, q.dtype), head_dim, interpret,
    )(k_lo, k_hi, q, k, v, d_out, lse, delta, seg, pa)
    return dq, dk, dv


_attention = blocks.kernel_vjp(_forward, _backward)
