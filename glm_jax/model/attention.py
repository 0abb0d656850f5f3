"""Attention backends for the GLM mask, chosen by ``model.attention_backend``.

Every backend computes, per head, ``softmax(q k^T + mask) v`` with ``k`` already
scaled by 1/sqrt(head_dim) (the official GLM scales K, not the scores; spec 1.2) and
float32 scores. They differ in how they read the attention pattern and what they skip:

* ``"xla"``: the reference and the official numerics. A dense ``[batch, 1, q, kv]``
  bool mask, masked scores filled with -65504 (spec 1.8), then softmax. O(T^2)
  memory. Every pattern form; attention dropout; decoding.
* ``"dot_product_attention"``: ``jax.nn.dot_product_attention`` with the same dense
  mask as a boolean ``mask``. On GPU with bf16/fp16 inputs it asks for cuDNN's fused
  kernel (which turns the mask into a materialised bias, so nothing is skipped) and
  falls back to XLA where cuDNN refuses the shape; elsewhere it is XLA's own
  implementation. Every pattern form; no attention dropout (a ValueError in training
  with ``model.attention_dropout > 0``).
* ``"blockwise"``: flash-style attention in plain JAX that skips fully masked tiles
  (glm_jax/model/kernels/blockwise.py). It reads ``sep`` or ``segment_ids`` +
  ``part_a``, never a dense mask, so memory is O(T * block); an explicit
  ``attention_mask`` is a ValueError. Attention dropout with its own per-tile RNG.
* ``"pallas"``: the same tile skipping as Pallas kernels (forward, dK/dV, dQ):
  Triton on GPU (glm_jax/model/kernels/pallas_gpu.py), Mosaic on TPU
  (glm_jax/model/kernels/pallas_tpu.py, whose key blocks are fetched through scalar
  prefetch); on CPU the Triton kernel runs in the Pallas interpreter, and the tests
  check both kernels there. Same inputs as ``"blockwise"``; no attention dropout yet.

Decoding (``decode=True``, the key/value cache) always uses ``"xla"``, whatever the
backend: the cache mask (glm_jax/model/masks.py ``cache_mask``) has a validity flag per
slot and a query length of 1 per step, where tiles buy nothing.

Under a device mesh the blockwise kernels run per shard with ``jax.shard_map``:
batch and heads split as the logical rules split the attention activations, the
sequence whole (each shard needs all its keys).

Choosing. On CPU "blockwise" is the fastest and by far the smallest
(benchmarks/RESULTS.md). On GPU (expected, not yet measured) "pallas" or
"dot_product_attention" (cuDNN); "blockwise" there runs a loop of small kernels
per tile, so it saves memory, not time. On TPU "xla", or "pallas" for long
sequences (its Mosaic kernel is checked only in the interpreter and by lowering).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from glm_jax.model import masks
from glm_jax.model.kernels import blocks, blockwise

# The official code fills masked scores with the fp16 minimum, not -inf (spec 1.8).
MASK_VALUE = -65504.0

DENSE_BACKENDS = ("xla", "dot_product_attention")
BLOCK_BACKENDS = ("blockwise", "pallas")

Array = jnp.ndarray


@flax.struct.dataclass
class AttentionPattern:
    """The attention pattern as the chosen backend reads it (a pytree, so it passes
    through ``nn.scan`` and ``nn.remat`` like the mask it replaces).

    Dense backends and decoding fill ``mask``; block backends fill ``segment_ids``
    and ``part_a``.

    Attributes:
      mask: ``[batch, 1, q_len, kv_len]`` bool, True = may attend.
      segment_ids: ``[batch, T]`` int32, one id per example in a packed row (a ``sep``
        row is all 1).
      part_a: ``[batch, T]`` bool, True for the keys every later token of the
        segment may see.
    """

    mask: Optional[Array] = None
    segment_ids: Optional[Array] = None
    part_a: Optional[Array] = None


def make_pattern(
    backend: str,
    q_len: int,
    *,
    sep: Optional[Array] = None,
    attention_mask: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
    part_a: Optional[Array] = None,
) -> AttentionPattern:
    """The pattern for ``backend`` from exactly one of the model's pattern inputs
    (see glm_jax/model/masks.py for the forms)."""
    if backend in DENSE_BACKENDS:
        return AttentionPattern(mask=masks.build(q_len, sep=sep, attention_mask=attention_mask,
                                                 segment_ids=segment_ids, part_a=part_a))
    if backend not in BLOCK_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {DENSE_BACKENDS + BLOCK_BACKENDS}")
    given = [name for name, v in (("sep", sep), ("attention_mask", attention_mask),
                                  ("segment_ids", segment_ids)) if v is not None]
    if len(given) != 1:
        raise ValueError("give the attention pattern as exactly one of sep, attention_mask or "
                         f"segment_ids (+ part_a); got {given or 'none'}")
    if attention_mask is not None:
        raise ValueError(
            f"model.attention_backend={backend!r} reads the pattern from sep or segment_ids + part_a, "
            "which tell it which blocks to skip; an explicit attention_mask needs 'xla' or "
            "'dot_product_attention'"
        )
    if sep is not None:
        seg, pa = blocks.sep_metadata(sep, q_len)
        return AttentionPattern(segment_ids=seg, part_a=pa)
    if part_a is None:
        raise ValueError("segment_ids needs part_a (per-token Part A flags); see part_a_from_segment_sep")
    segment_ids, part_a = jnp.asarray(segment_ids), jnp.asarray(part_a)
    if segment_ids.shape[-1] != q_len or part_a.shape != segment_ids.shape:
        raise ValueError(f"segment_ids and part_a must both be [batch, {q_len}], "
                         f"got {segment_ids.shape} and {part_a.shape}")
    return AttentionPattern(segment_ids=segment_ids.astype(jnp.int32), part_a=part_a.astype(bool))


def xla_attention(query: Array, key: Array, value: Array, mask: Array, dropout_keep: Optional[Array] = None,
                  dropout_rate: float = 0.0) -> Array:
    """The reference: dense scores, -65504 fill, float32 softmax.

    Args:
      query: ``[batch, q_len, heads, head_dim]``.
      key, value: ``[batch, kv_len, heads, head_dim]``; key already scaled.
      mask: ``[batch, 1, q_len, kv_len]`` bool.
      dropout_keep: ``[batch, heads, q_len, kv_len]`` bool, the probabilities kept by
        attention dropout (kept ones are scaled by ``1 / (1 - dropout_rate)``), or
        None for no dropout.

    Returns:
      ``[batch, q_len, heads, head_dim]`` in the query's dtype.

    The gradient is written out (``_dense_attention``): the backward keeps only the
    probabilities (in the compute dtype) from the forward, where autodiff of the
    same expression kept the scores, their exponentials and the mask's select too
    (a quarter less temporary memory and traffic in the train step, same values).
    """
    return _dense_attention(query, key, value, mask, dropout_keep, float(dropout_rate))


def dropout_keep(rng: Array, rate: float, query: Array, key: Array) -> Array:
    """Which attention probabilities dropout keeps: ``[batch, heads, q_len, kv_len]``
    bool, each True with probability ``1 - rate`` (as flax's ``nn.Dropout`` draws)."""
    batch, q_len, heads, _ = query.shape
    return jax.random.bernoulli(rng, 1.0 - rate, (batch, heads, q_len, key.shape[1]))


def _probabilities(query: Array, key: Array, mask: Array) -> Array:
    """``softmax(where(mask, q k^T, -65504))`` ``[batch, heads, q, kv]``, float32
    scores, returned in the query's dtype."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    # A select, not ``min(scores, ceiling)``: that form (the same values) lets XLA:CPU fuse
    # the mask, the softmax and both matmuls into one kernel that never writes the scores,
    # 19% fewer forward bytes, and runs 11% slower (benchmarks/RESULTS.md, 2026-12-07).
    return jax.nn.softmax(jnp.where(mask, scores, MASK_VALUE), axis=-1).astype(query.dtype)


def _dropped(probs: Array, keep: Optional[Array], rate: float) -> Array:
    """Attention dropout as flax's ``nn.Dropout`` applies it."""
    if keep is None:
        return probs
    return jnp.where(keep, probs / jnp.asarray(1.0 - rate, probs.dtype), jnp.zeros((), probs.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _dense_attention(query, key, value, mask, keep, rate):
    return jnp.einsum("bhqk,bkhd->bqhd", _dropped(_probabilities(query, key, mask), keep, rate), value)


def _dense_fwd(query, key, value, mask, keep, rate):
    probs = _probabilities(query, key, mask)
    out = jnp.einsum("bhqk,bkhd->bqhd", _dropped(probs, keep, rate), value)
    return out, (query, key, value, mask, keep, probs)


def _dense_bwd(rate, residuals, d_out):
    query, key, value, mask, keep, probs = residuals
    d_value = jnp.einsum("bhqk,bqhd->bkhd", _dropped(probs, keep, rate), d_out)
    # No gradient reaches a masked score. A masked probability is exactly 0
    # (exp(-65504 - row max) underflows in float32) unless no key of its row is
    # visible, so the softmax VJP's ``p *`` zeroes masked scores by itself; a row that
    # sees no key gets a zero ``d_out`` here instead. That is the mask's select on
    # [batch, q, heads, head_dim] instead of [batch, heads, q, kv]: one pass over the
    # scores less per layer, the same values.
    row_sees_a_key = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # [batch, q, 1, 1]
    d_out = jnp.where(row_sees_a_key, d_out, jnp.zeros((), d_out.dtype))
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, value, preferred_element_type=jnp.float32)
    if keep is not None:
        d_probs = jnp.where(keep, d_probs / (1.0 - rate), 0.0)
    p = probs.astype(jnp.float32)
    d_scores = (p * (d_probs - jnp.sum(d_probs * p, axis=-1, keepdims=True))).astype(query.dtype)
    d_query = jnp.einsum("bhqk,bkhd->bqhd", d_scores, key)
    d_key = jnp.einsum("bhqk,bqhd->bkhd", d_scores, query)
    return d_query, d_key, d_value.astype(value.dtype), None, None


_dense_attention.defvjp(_dense_fwd, _dense_bwd)


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array,
                          implementation: Optional[str] = "auto") -> Array:
    """``jax.nn.dot_product_attention`` with the GLM mask (shapes as
    :func:`xla_attention`).

    ``implementation="auto"`` asks for cuDNN on a GPU when the inputs are bf16 or
    fp16 and falls back to XLA if cuDNN refuses the call at trace time (head dim,
    sequence length, cuDNN version); None or "xla" is XLA, "cudnn" insists.
    """
    call = lambda impl: jax.nn.dot_product_attention(  # noqa: E731
        query, key, value, mask=mask, scale=1.0, implementation=impl)
    if implementation != "auto":
        return call(implementation)
    if target_platform() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return call("cudnn")
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # an unsupported shape or no cuDNN: the XLA path below computes the same
    return call(None)


def attend(
    backend: str,
    query: Array,
    key: Array,
    value: Array,
    pattern: AttentionPattern,
    *,
    block_size: int = 128,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[Array] = None,
) -> Array:
    """Run a non-reference backend (``"xla"`` runs in SelfAttention itself, where its
    flax Dropout lives).

    Args:
      backend: one of ``"dot_product_attention"``, ``"blockwise"``, ``"pallas"``.
      query, key, value: ``[batch, T, heads, head_dim]``; key already scaled.
      pattern: from :func:`make_pattern` for the same backend.
      block_size: tile size of the block backends (queries and keys).
      dropout_rate: attention dropout rate in effect (0 when deterministic).
      dropout_rng: PRNG key for it.

    Returns:
      ``[batch, T, heads, head_dim]`` in the query's dtype.
    """
    if backend == "dot_product_attention":
        if dropout_rate > 0:
            raise ValueError("model.attention_backend='dot_product_attention' has no attention dropout; "
                             "set model.attention_dropout=0 or use 'xla' or 'blockwise'")
        if pattern.mask is None:
            raise ValueError("'dot_product_attention' needs a dense mask; build the pattern with make_pattern")
        return dot_product_attention(query, key, value, pattern.mask)
    if backend not in BLOCK_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}")
    if pattern.segment_ids is None or pattern.part_a is None:
        raise ValueError(f"{backend!r} needs segment_ids and part_a; build the pattern with make_pattern")
    length = query.shape[1]
    block = min(block_size, _round_up(length, 8))
    if backend == "pallas":
        if dropout_rate > 0:
            raise ValueError("model.attention_backend='pallas' has no attention dropout yet; "
                             "set model.attention_dropout=0 or use 'blockwise'")
        kernel = pallas_kernel(target_platform(), length, block_size)
    else:
        kernel = lambda q, k, v, seg, pa, rng: blockwise.blockwise_attention(  # noqa: E731
            q, k, v, seg, pa, block_q=block, block_kv=block, dropout_rate=dropout_rate, dropout_rng=rng)
    if dropout_rng is None:
        dropout_rng = jnp.zeros((2,), jnp.uint32)
    elif jnp.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        dropout_rng = jax.random.key_data(dropout_rng)
    return _per_shard(kernel, query, key, value, pattern.segment_ids, pattern.part_a, dropout_rng)


def target_platform() -> str:
    """The platform the program being traced is for: that of the current mesh's
    devices (``jax.set_mesh`` / ``use_abstract_mesh``, as the train step traces), else
    ``jax.default_backend()``. A step compiled ahead of time for a TPU slice from a
    CPU host so gets the TPU kernels, not the host's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def pallas_kernel(platform: str, length: int, block_size: int, interpret: Optional[bool] = None) -> Callable:
    """The Pallas attention kernel for ``platform`` (:func:`target_platform`), as
    ``kernel(q, k, v, segment_ids, part_a, rng)``; ``interpret`` (default: unless
    ``platform`` is the kernel's own) runs it in the Pallas interpreter.

    TPU gets the Mosaic kernel (kernels/pallas_tpu.py): keys tile by 128 lanes, so a
    short sequence pads up to 128. Everything else gets the Triton kernel
    (kernels/pallas_gpu.py), interpreted off GPU: Triton wants power-of-two tiles,
    so a short sequence gets the next power of two up.
    """
    # Imported lazily: Pallas loads Triton / Mosaic pieces that plain runs never need.
    if platform == "tpu":
        from glm_jax.model.kernels import pallas_tpu  # lazy: Mosaic pieces (see above)

        block_kv = _round_up(min(block_size, _round_up(length, 128)), 128)
        block_q = min(_round_up(block_size, 8), block_kv)
        interpret = platform != "tpu" if interpret is None else interpret
        return lambda q, k, v, seg, pa, rng: pallas_tpu.pallas_tpu_attention(
            q, k, v, seg, pa, block_q=block_q, block_kv=block_kv, interpret=interpret)
    from glm_jax.model.kernels import pallas_gpu  # lazy: Triton pieces (see above)

    block = min(block_size, max(16, 1 << (length - 1).bit_length()))
    interpret = platform != "gpu" if interpret is None else interpret
    return lambda q, k, v, seg, pa, rng: pallas_gpu.pallas_attention(
        q, k, v, seg, pa, block_q=block, block_kv=block, interpret=interpret)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _per_shard(kernel, query, key, value, segment_ids, part_a, rng):
    """Run ``kernel`` on each device's batch and heads under the active mesh.

    The kernels index single examples in loops, which the SPMD partitioner cannot
    split; ``shard_map`` hands each device its own examples and heads instead. The
    dropout key is folded with the device's position so shards draw different masks.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(query, key, value, segment_ids, part_a, rng)
    batch_axes, _, head_axes, _ = nn.logical_to_mesh_axes(
        ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    batch_axes = _dividing_axes(mesh, batch_axes, query.shape[0])
    head_axes = _dividing_axes(mesh, head_axes, query.shape[2])
    used = _names(batch_axes) + _names(head_axes)
    qkv_spec = PartitionSpec(batch_axes, None, head_axes, None)
    row_spec = PartitionSpec(batch_axes, None)

    def local(q, k, v, seg, pa, rng):
        shard = 0
        for axis in used:  # row-major position of this device among the used axes
            shard = shard * mesh.shape[axis] + jax.lax.axis_index(axis)
        return kernel(q, k, v, seg, pa, jax.random.fold_in(rng, shard))

    return jax.shard_map(
        local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, row_spec, row_spec, PartitionSpec()),
        out_specs=qkv_spec, check_vma=False,
    )(query, key, value, segment_ids, part_a, rng)


def _names(axes) -> tuple[str, ...]:
    """A PartitionSpec entry (None, an axis name or a tuple of them) as a tuple."""
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _dividing_axes(mesh, axes, size: int):
    """``axes`` if the product of their sizes divides ``size``, else None (that
    dimension then stays whole on every device)."""
    if axes is None or size % math.prod(mesh.shape[name] for name in _names(axes)):
        return None
    return axes
