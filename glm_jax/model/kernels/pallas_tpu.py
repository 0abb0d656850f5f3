"""The GLM tile-skipping attention as a Pallas TPU (Mosaic) kernel.

Same contract and same skipping as the Triton kernel (glm_jax/model/kernels/pallas_gpu.py),
laid out the way Mosaic pipelines work: the key blocks are a grid axis, not a loop.

Forward: grid ``(example, head, query block, step)``. For each (example, query block)
the key blocks to visit are ``[lo, hi)`` from glm_jax/model/kernels/blocks.py; both
reach the kernel by *scalar prefetch* (``PrefetchScalarGridSpec``), so the index maps
can read them: step ``s`` fetches key block ``min(lo + s, hi - 1)``. Steps past the
range keep asking for the block already in VMEM, so the pipeline issues no new DMA,
and ``pl.when`` skips their compute: masked tiles cost neither HBM traffic nor MXU
time, only the (small) per-step overhead. The online-softmax state (``m``, ``l``,
the ``[block_q, head_dim]`` accumulator) lives in VMEM scratch across the steps,
which is why the step axis is ``"arbitrary"`` and the others ``"parallel"``.

Backward: two kernels in the FlashAttention-2 split with the same trick: dK/dV over
grid ``(example, head, key block, step)`` visiting the query blocks of
:func:`blocks.q_ranges`, dQ over ``(example, head, query block, step)`` visiting
:func:`blocks.kv_ranges`. Both recompute tile probabilities from the forward's
log-sum-exp; ``delta = rowsum(dO * O)`` comes from plain JAX.

Layout: Mosaic tiles the last two dims of every block by (8, 128), so queries, keys
and values are transposed to ``[batch, heads, T, head_dim]`` (a block is
``[block, head_dim]``, head_dim the full last dim). Per-token metadata comes twice:
as a column ``[batch, T, 1]`` for the queries of a tile and as a row ``[batch, 1, T]``
for its keys, so each tile's mask is one broadcast compare without a transpose.
``block_kv`` must be a multiple of 128 (keys run along lanes in the metadata row),
``block_q`` a multiple of 8.

Status: checked on CPU only, in the Pallas TPU interpreter (``interpret=True``; the
tests compare values and gradients with the dense reference) and by lowering to a
Mosaic custom call with ``lowering_platforms=("tpu",)``. No TPU was available to this
project, so Mosaic's own compilation and the speed are unverified.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from glm_jax.model.kernels import blocks, blockwise

Array = jnp.ndarray
_M_INIT = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b
_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")


def pallas_tpu_attention(query: Array, key: Array, value: Array, segment_ids: Array, part_a: Array, *,
                         block_q: int = 128, block_kv: int = 128, interpret: bool | None = None) -> Array:
    """Same contract as :func:`blockwise.blockwise_attention` (no dropout).

    Args:
      query, key, value: ``[batch, T, heads, head_dim]``; key already scaled.
      segment_ids: ``[batch, T]`` int; part_a: ``[batch, T]`` bool.
      block_q: query tile, a multiple of 8; block_kv: key tile, a multiple of 128.
        T is padded up to a multiple of both.
      interpret: run in the Pallas TPU interpreter; default: when the default
        backend is not a TPU.

    Returns:
      ``[batch, T, heads, head_dim]`` in the query's dtype.
    """
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    # Mosaic's (8, 128) tiling; the interpreter takes any sizes (the tests use small
    # ones so that a short sequence still has many tiles to skip).
    if not interpret and (block_q % 8 or block_kv % 128):
        raise ValueError(f"the Pallas TPU attention kernel needs block_q a multiple of 8 and block_kv a "
                         f"multiple of 128, got block_q={block_q}, block_kv={block_kv} "
                         "(model.attention_block_size sets both)")
    q, k, v, seg, pa, _, length = blockwise.prepare_inputs(
        query, key, value, segment_ids, part_a, block_q, block_kv, 0.0, None)
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [b, T, h, d] <-> [b, h, T, d]
    out = _attention(to_heads(q), to_heads(k), to_heads(v), seg, pa, block_q, block_kv, interpret)
    return to_heads(out)[:, :length]


def _dot(a, b, dims, upcast: bool):
    """``dot_general`` accumulated in float32. ``upcast``: interpreting on CPU, whose
    XLA has no bf16 x bf16 -> f32 dot; float32 products of bf16 operands are exact."""
    if upcast:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _tile_mask(seg_q_ref, seg_k_ref, pa_k_ref, q_first, k_first, block_q, block_kv):
    """The ``[block_q, block_kv]`` GLM mask of a tile: same segment and (causal or Part A key)."""
    q_idx = q_first + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 0)
    k_idx = k_first + lax.broadcasted_iota(jnp.int32, (block_q, block_kv), 1)
    same_segment = seg_q_ref[...] == seg_k_ref[...]  # [block_q, 1] == [1, block_kv]
    return same_segment & ((k_idx <= q_idx) | (pa_k_ref[...] != 0))


def _visited(lo_ref, hi_ref, example, block, n_blocks, step):
    """The block a grid step works on (clamped into its range) and whether it is live."""
    flat = example * n_blocks + block
    lo, hi = lo_ref[flat], hi_ref[flat]
    return jnp.minimum(lo + step, jnp.maximum(hi - 1, lo)), lo + step < hi


def _forward_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, pa_k_ref, o_ref, lse_ref,
                    acc_ref, m_ref, l_ref, *, block_q, block_kv, n_q, upcast):
    """One step of (example, head, query block). Blocks: q, o ``[block_q, d]``; k, v
    ``[block_kv, d]``; seg_q ``[block_q, 1]``; seg_k, pa_k ``[1, block_kv]``; lse
    ``[block_q, 1]``. Scratch: acc ``[block_q, d]``, m and l ``[block_q, 1]``."""
    b, i, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    kb, live = _visited(lo_ref, hi_ref, b, i, n_q, step)

    @pl.when(step == 0)
    def _init():
        acc_ref[...] = jnp.zeros_like(acc_ref)
        m_ref[...] = jnp.full_like(m_ref, _M_INIT)
        l_ref[...] = jnp.zeros_like(l_ref)

    @pl.when(live)
    def _accumulate():
        mask = _tile_mask(seg_q_ref, seg_k_ref, pa_k_ref, i * block_q, kb * block_kv, block_q, block_kv)
        s = jnp.where(mask, _dot(q_ref[...], k_ref[...], _NT, upcast), _M_INIT)
        m_prev = m_ref[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        v = v_ref[...]
        acc_ref[...] = alpha * acc_ref[...] + _dot(p.astype(v.dtype), v, _NN, upcast)
        m_ref[...] = m_new

    @pl.when(step == pl.num_programs(3) - 1)
    def _finish():
        l = l_ref[...]
        o_ref[...] = (acc_ref[...] / l).astype(o_ref.dtype)
        lse_ref[...] = m_ref[...] + jnp.log(l)


def _dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_q_ref, seg_k_ref,
                pa_k_ref, dk_ref, dv_ref, dk_acc, dv_acc, *, block_q, block_kv, n_k, upcast):
    """One step of (example, head, key block) over its query blocks. Blocks: k, v, dk,
    dv ``[block_kv, d]``; q, dO ``[block_q, d]``; lse, delta, seg_q ``[block_q, 1]``."""
    b, j, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    qb, live = _visited(lo_ref, hi_ref, b, j, n_k, step)

    @pl.when(step == 0)
    def _init():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    @pl.when(live)
    def _accumulate():
        q, k, v, d_out = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        mask = _tile_mask(seg_q_ref, seg_k_ref, pa_k_ref, qb * block_q, j * block_kv, block_q, block_kv)
        p = jnp.where(mask, jnp.exp(_dot(q, k, _NT, upcast) - lse_ref[...]), 0.0)  # [block_q, block_kv]
        ds = p * (_dot(d_out, v, _NT, upcast) - delta_ref[...])
        dv_acc[...] += _dot(p.astype(d_out.dtype), d_out, _TN, upcast)
        dk_acc[...] += _dot(ds.astype(q.dtype), q, _TN, upcast)

    @pl.when(step == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_q_ref, seg_k_ref,
               pa_k_ref, dq_ref, dq_acc, *, block_q, block_kv, n_q, upcast):
    """One step of (example, head, query block) over its key blocks."""
    b, i, step = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    kb, live = _visited(lo_ref, hi_ref, b, i, n_q, step)

    @pl.when(step == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    @pl.when(live)
    def _accumulate():
        q, k, d_out = q_ref[...], k_ref[...], do_ref[...]
        mask = _tile_mask(seg_q_ref, seg_k_ref, pa_k_ref, i * block_q, kb * block_kv, block_q, block_kv)
        p = jnp.where(mask, jnp.exp(_dot(q, k, _NT, upcast) - lse_ref[...]), 0.0)
        ds = p * (_dot(d_out, v_ref[...], _NT, upcast) - delta_ref[...])
        dq_acc[...] += _dot(ds.astype(k.dtype), k, _NN, upcast)

    @pl.when(step == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)


class _Specs:
    """BlockSpecs over a grid ``(example, head, outer block, step)`` whose index maps
    also receive the prefetched ``lo``/``hi`` (flattened ``[batch * n_outer]``)."""

    def __init__(self, head_dim: int, n_outer: int):
        self.head_dim, self.n_outer = head_dim, n_outer

    def _inner(self, b, o, s, lo, hi):
        flat = b * self.n_outer + o
        return jnp.minimum(lo[flat] + s, jnp.maximum(hi[flat] - 1, lo[flat]))

    def outer_seq(self, block):
        """``[batch, heads, T, d]`` tiled along the grid's outer block."""
        return pl.BlockSpec((None, None, block, self.head_dim), lambda b, h, o, s, lo, hi: (b, h, o, 0))

    def inner_seq(self, block):
        """``[batch, heads, T, d]`` tiled along the visited (inner) blocks."""
        return pl.BlockSpec((None, None, block, self.head_dim),
                            lambda b, h, o, s, lo, hi: (b, h, self._inner(b, o, s, lo, hi), 0))

    @staticmethod
    def outer_column(block):
        """``[batch, heads, T, 1]`` (lse, delta) or ``[batch, T, 1]`` (query segments) per outer block."""
        return (pl.BlockSpec((None, None, block, 1), lambda b, h, o, s, lo, hi: (b, h, o, 0)),
                pl.BlockSpec((None, block, 1), lambda b, h, o, s, lo, hi: (b, o, 0)))

    def inner_column(self, block):
        inner = self._inner
        return (pl.BlockSpec((None, None, block, 1), lambda b, h, o, s, lo, hi: (b, h, inner(b, o, s, lo, hi), 0)),
                pl.BlockSpec((None, block, 1), lambda b, h, o, s, lo, hi: (b, inner(b, o, s, lo, hi), 0)))

    def outer_row(self, block):
        """``[batch, 1, T]`` key metadata per outer block."""
        return pl.BlockSpec((None, 1, block), lambda b, h, o, s, lo, hi: (b, 0, o))

    def inner_row(self, block):
        return pl.BlockSpec((None, 1, block), lambda b, h, o, s, lo, hi: (b, 0, self._inner(b, o, s, lo, hi)))


def _call(kernel, name, grid, in_specs, out_specs, out_shape, scratch, interpret):
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=2, grid=grid, in_specs=in_specs,
                                               out_specs=out_specs, scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
        interpret=interpret, name=name,
    )


def _upcast(dtype, interpret: bool) -> bool:
    return interpret and jax.default_backend() == "cpu" and dtype != jnp.float32


def _metadata(seg, pa):
    """Query column ``[batch, T, 1]`` and key rows ``[batch, 1, T]`` (int32)."""
    seg, pa = seg.astype(jnp.int32), pa.astype(jnp.int32)
    return seg[:, :, None], seg[:, None, :], pa[:, None, :]


def _flat(ranges):
    lo, hi = ranges
    return lo.reshape(-1), hi.reshape(-1)


def _forward(q, k, v, seg, pa, block_q, block_kv, interpret):
    batch, heads, length, head_dim = q.shape
    n_q, n_k = length // block_q, length // block_kv
    lo, hi = _flat(blocks.kv_ranges(blocks.classify(seg, pa, block_q, block_kv)))
    specs = _Specs(head_dim, n_q)
    kernel = functools.partial(_forward_kernel, block_q=block_q, block_kv=block_kv, n_q=n_q,
                               upcast=_upcast(q.dtype, interpret))
    stats_spec, seg_q_spec = specs.outer_column(block_q)
    return _call(
        kernel, "glm_prefix_attention_fwd_tpu", (batch, heads, n_q, n_k),
        [specs.outer_seq(block_q), specs.inner_seq(block_kv), specs.inner_seq(block_kv), seg_q_spec,
         specs.inner_row(block_kv), specs.inner_row(block_kv)],
        [specs.outer_seq(block_q), stats_spec],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, length, 1), jnp.float32)],
        [pltpu.VMEM((block_q, head_dim), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
         pltpu.VMEM((block_q, 1), jnp.float32)],
        interpret,
    )(lo, hi, q, k, v, *_metadata(seg, pa))


def _backward(q, k, v, seg, pa, out, lse, d_out, block_q, block_kv, interpret):
    batch, heads, length, head_dim = q.shape
    n_q, n_k = length // block_q, length // block_kv
    classes = blocks.classify(seg, pa, block_q, block_kv)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    seg_col, seg_row, pa_row = _metadata(seg, pa)
    upcast = _upcast(q.dtype, interpret)

    # dK, dV: outer = key blocks, inner = the query blocks that see them.
    specs = _Specs(head_dim, n_k)
    q_stats, q_seg = specs.inner_column(block_q)
    dk, dv = _call(
        functools.partial(_dkv_kernel, block_q=block_q, block_kv=block_kv, n_k=n_k, upcast=upcast),
        "glm_prefix_attention_dkv_tpu", (batch, heads, n_k, n_q),
        [specs.inner_seq(block_q), specs.outer_seq(block_kv), specs.outer_seq(block_kv),
         specs.inner_seq(block_q), q_stats, q_stats, q_seg, specs.outer_row(block_kv), specs.outer_row(block_kv)],
        [specs.outer_seq(block_kv), specs.outer_seq(block_kv)],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        [pltpu.VMEM((block_kv, head_dim), jnp.float32)] * 2,
        interpret,
    )(*_flat(blocks.q_ranges(classes)), q, k, v, d_out, lse, delta, seg_col, seg_row, pa_row)

    # dQ: outer = query blocks, inner = the key blocks they see.
    specs = _Specs(head_dim, n_q)
    stats_spec, seg_q_spec = specs.outer_column(block_q)
    dq = _call(
        functools.partial(_dq_kernel, block_q=block_q, block_kv=block_kv, n_q=n_q, upcast=upcast),
        "glm_prefix_attention_dq_tpu", (batch, heads, n_q, n_k),
        [specs.outer_seq(block_q), specs.inner_seq(block_kv), specs.inner_seq(block_kv),
         specs.outer_seq(block_q), stats_spec, stats_spec, seg_q_spec,
         specs.inner_row(block_kv), specs.inner_row(block_kv)],
        specs.outer_seq(block_q), jax.ShapeDtypeStruct(q.shape, q.dtype),
        [pltpu.VMEM((block_q, head_dim), jnp.float32)],
        interpret,
    )(*_flat(blocks.kv_ranges(classes)), q, k, v, d_out, lse, delta, seg_col, seg_row, pa_row)
    return dq, dk, dv


_attention = blocks.kernel_vjp(_forward, _backward)
