"""The tied output layer and its cross-entropy, computed only where the loss reads.

GLM's pretraining loss reads Part B (roughly 15-50% of a row), seq2seq fine-tuning
reads the target, yet a plain forward computes ``[batch, T, vocab]`` logits at every
position: for a 30k vocabulary that is a third of a small GLM's forward FLOPs, and
the float32 logits, softmax and their gradient dominate the step's memory traffic.

:func:`token_loss_sums` takes the final layernorm's output instead (``GLM(...,
return_hidden=True)``) and:

1. splits the batch into ``groups`` (one per batch shard, so every gather below
   stays on its device) and lists each group's loss positions, up to a static
   ``capacity`` (``capacity_fraction`` of the group's positions, rounded up to a
   multiple of 8);
2. if every group's loss positions fit, gathers those hidden states and computes
   logits ``[groups, capacity, vocab]``; otherwise (a batch of unusually long Part
   Bs) it computes them at every position, exactly as the full path does. Both
   give the same sums; only the cost differs;
3. has a hand-written VJP. On the sparse path the forward forms the gradient with
   respect to the few logits it computed, ``(softmax - onehot) * weight``, and keeps
   it (``[groups, capacity, vocab]``): the backward is then two matmuls. Everywhere
   else (the fallback, or ``capacity_fraction=1``) only the inputs are kept and the
   backward recomputes the logits, rather than holding ``[batch * T, vocab]``
   float32 arrays from the forward to the backward.

The values are :func:`glm_jax.train.loss_sums`'s (tests/test_sparse_logits.py checks
sums and gradients against it). The target logit is selected by a compare rather
than a gather so a vocabulary sharded over ``tensor`` stays local.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from glm_jax import sharding
from glm_jax.model.materialize import materialize

Array = jax.Array


class TokenSums(NamedTuple):
    """Float32 scalar sums over a batch's loss tokens (as ``train.LossSums``)."""

    ce: Array
    correct: Array
    loss_tokens: Array
    logit_positions: Array  # where the output layer ran: capacity per group, or every position


def capacity_for(positions: int, fraction: float) -> int:
    """Loss positions per group the sparse path holds: ``fraction`` of ``positions``,
    rounded up to a multiple of 8 (vector-friendly), at most ``positions``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the logits capacity fraction must be in (0, 1], got {fraction}")
    return min(positions, 8 * math.ceil(math.ceil(fraction * positions) / 8))


def token_loss_sums(
    hidden: Array,
    embedding: Array,
    targets: Array,
    loss_mask: Array,
    *,
    capacity_fraction: float = 1.0,
    label_smoothing: float = 0.0,
    groups: int = 0,
) -> TokenSums:
    """Masked cross-entropy and accuracy sums of the tied logits ``hidden @ embedding.T``.

    Args:
      hidden: ``[batch, T, embed]``, the final layernorm's output in the compute dtype.
      embedding: ``[vocab, embed]``, the word embeddings (cast to ``hidden``'s dtype
        for the matmul, accumulated in float32, as the model's head does).
      targets: ``[batch, T]`` int token ids.
      loss_mask: ``[batch, T]`` 0/1 (any numeric dtype; used as weights).
      capacity_fraction: the sparse path's capacity as a fraction of each group's
        positions; 1.0 computes logits everywhere (no gather), still with the
        memory-light backward.
      label_smoothing: as ``train.loss_sums``: smoothing over the whole vocabulary.
      groups: how many independent groups of rows to gather within; 0 = the number
        of batch shards of the mesh being traced (one group per device's rows).

    Returns:
      :class:`TokenSums`; ``ce`` is differentiable with respect to ``hidden`` and
      ``embedding``, the other sums are counts.
    """
    batch, length, width = hidden.shape
    groups = groups or sharding.batch_shards_in_context()
    if batch % groups:
        groups = 1
    rows = (batch // groups) * length
    capacity = capacity_for(rows, capacity_fraction)
    weights = loss_mask.astype(jnp.float32).reshape(groups, rows)
    grouped = nn.with_logical_constraint(hidden.reshape(groups, rows, width),
                                         ("activation_batch", None, "activation_embed"))
    ce, correct = _tied_cross_entropy(
        grouped, embedding, targets.reshape(groups, rows), weights, capacity, float(label_smoothing)
    )
    positions = (jnp.where(_fits(weights, capacity), capacity, rows) if capacity < rows else rows) * groups
    return TokenSums(ce=ce, correct=correct, loss_tokens=jnp.sum(weights),
                     logit_positions=jnp.asarray(positions, jnp.float32))


# ----------------------------------------------------------------- the VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _tied_cross_entropy(hidden, embedding, targets, weights, capacity: int, smoothing: float):
    """``(ce_sum, correct_sum)`` over ``[groups, rows]``; see :func:`token_loss_sums`."""
    dense = functools.partial(_chunked_sums, hidden, targets, weights, embedding, smoothing,
                              min(capacity, hidden.shape[1]))
    if capacity >= hidden.shape[1]:
        return dense()
    fits, index, valid = _plan(weights, capacity)
    gathered = _gather(hidden, targets, weights, index, valid)
    return jax.lax.cond(fits, lambda: _loss_at(*gathered, embedding=embedding, smoothing=smoothing,
                                               with_grad=False), dense)


def _fwd(hidden, embedding, targets, weights, capacity, smoothing):
    at = functools.partial(_loss_at, embedding=embedding, smoothing=smoothing)
    inputs = (hidden, embedding, targets, weights)
    if capacity >= hidden.shape[1]:
        # Every position: keep only the inputs and recompute the logits in the backward,
        # rather than hold [batch * T, vocab] from the forward to the backward.
        return at(hidden, targets, weights, with_grad=False), (inputs, None)
    fits, index, valid = _plan(weights, capacity)

    def sparse():
        # The gradient with respect to the (few) logits is formed here, while they are at
        # hand, and kept: the backward then needs two matmuls, not three.
        return at(*_gather(hidden, targets, weights, index, valid), with_grad=True)

    def dense():
        # Every position, ``capacity`` of them at a time: at this point of the forward
        # every layer's activations are alive, and [rows, vocab] float32 logits on top
        # would raise the step's peak memory (2 GiB per chip for GLM-Large on v4-64).
        ce, correct = _chunked_sums(hidden, targets, weights, embedding, smoothing, capacity)
        return ce, correct, jnp.zeros((*index.shape, embedding.shape[0]), hidden.dtype)

    ce, correct, unit_grad = jax.lax.cond(fits, sparse, dense)
    return (ce, correct), (inputs, (fits, unit_grad))


def _bwd(capacity, smoothing, residuals, cotangents):
    (hidden, embedding, targets, weights), saved = residuals
    d_ce = cotangents[0]  # the correct count is a count: its cotangent is dropped
    recomputed = functools.partial(_chunked_grads, hidden, targets, weights, embedding, smoothing,
                                   min(capacity, hidden.shape[1]), d_ce)
    if saved is None:
        d_hidden, d_embedding = recomputed()
    else:
        fits, unit_grad = saved

        def sparse():
            _, index, valid = _plan(weights, capacity)
            h, _, _ = _gather(hidden, targets, weights, index, valid)
            d_h, d_e = _matmul_grads(unit_grad, h, embedding, d_ce)
            groups = jnp.arange(hidden.shape[0])[:, None]
            # Unused slots carry a zero gradient, so adding them at position 0 is harmless.
            return jnp.zeros_like(hidden).at[groups, index].add(d_h, mode="drop"), d_e

        d_hidden, d_embedding = jax.lax.cond(fits, sparse, recomputed)
    return d_hidden, d_embedding.astype(embedding.dtype), None, None


def _chunks(x: Array, size: int) -> Array:
    """``[groups, rows, ...] -> [ceil(rows / size), groups, size, ...]``, zero-padded."""
    groups, rows = x.shape[:2]
    count = -(-rows // size)
    x = jnp.pad(x, [(0, 0), (0, count * size - rows)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(groups, count, size, *x.shape[2:]), 1, 0)


def _chunked_sums(hidden, targets, weights, embedding, smoothing, size):
    """:func:`_loss_at`'s sums over every position, ``size`` per group at a time."""
    def add(totals, chunk):
        sums = _loss_at(*chunk, embedding=embedding, smoothing=smoothing, with_grad=False)
        return tuple(a + b for a, b in zip(totals, sums)), None

    zero = jnp.zeros((), jnp.float32)
    chunks = tuple(_chunks(x, size) for x in (hidden, targets, weights))
    return jax.lax.scan(add, (zero, zero), chunks)[0]


def _chunked_grads(hidden, targets, weights, embedding, smoothing, size, d_ce):
    """The gradients of every position, recomputed ``size`` per group at a time."""
    def step(d_embedding, chunk):
        _, _, unit_grad = _loss_at(*chunk, embedding=embedding, smoothing=smoothing, with_grad=True)
        d_h, d_e = _matmul_grads(unit_grad, chunk[0], embedding, d_ce)
        return d_embedding + d_e, d_h

    chunks = tuple(_chunks(x, size) for x in (hidden, targets, weights))
    d_embedding, d_h = jax.lax.scan(step, jnp.zeros(embedding.shape, jnp.float32), chunks)
    d_h = jnp.moveaxis(d_h, 0, 1).reshape(hidden.shape[0], -1, hidden.shape[2])[:, :hidden.shape[1]]
    return d_h, d_embedding


_tied_cross_entropy.defvjp(_fwd, _bwd)


def _loss_at(h, targets, weights, *, embedding, smoothing, with_grad):
    """``(ce_sum, correct_sum[, unit_grad])`` of the tied logits at ``h [groups, n,
    embed]``; ``unit_grad`` is d(ce_sum)/d(logits) ``[groups, n, vocab]`` in ``h``'s
    dtype: ``(softmax - smoothed onehot) * weight``."""
    logits = _logits(h, embedding)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    is_target = vocab_ids == targets[..., None]
    # A compare, not a gather: with the vocabulary sharded over tensor this stays local.
    ce = log_z - jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    if smoothing:
        ce = (1.0 - smoothing) * ce + smoothing * (log_z - jnp.mean(logits, axis=-1))
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    sums = (jnp.sum(ce * weights), jnp.sum(correct * weights))
    if not with_grad:
        return sums
    # d CE / d logits = softmax - onehot; with smoothing eps the target is
    # (1 - eps) onehot + eps / vocab.
    target = jnp.where(is_target, 1.0 - smoothing, 0.0) + smoothing / logits.shape[-1]
    unit_grad = ((jnp.exp(logits - log_z[..., None]) - target) * weights[..., None]).astype(h.dtype)
    # Stored once: fused into both gradient matmuls it would be computed twice.
    return (*sums, materialize(_constrain_logits(unit_grad)))


def _matmul_grads(unit_grad, h, embedding, d_ce):
    """Gradients of ``d_ce * ce_sum`` with respect to ``h [groups, n, embed]`` and the
    embedding ``[vocab, embed]``; ``unit_grad`` is ``[groups, n, vocab]``."""
    compute = h.dtype
    d_h = jnp.einsum("gnv,vd->gnd", unit_grad, embedding.astype(compute), preferred_element_type=jnp.float32)
    # The embedding's gradient contracts one axis of rows (groups merged into it), which
    # XLA:CPU runs as a single matmul reading unit_grad transposed in place; contracting
    # (groups, n) it first copies unit_grad [vocab, rows] transposed, and scaling the
    # product by d_ce would be one more pass over [vocab, embed]: scaling h costs
    # nothing (benchmarks/RESULTS.md, 2026-12-07: 566 -> 194 MB at vocab 30592). In
    # bfloat16 that rounds h * d_ce once, an error the size of h's own rounding.
    rows = unit_grad.shape[0] * unit_grad.shape[1]
    scaled_h = (h * d_ce.astype(compute)).reshape(rows, h.shape[-1])
    d_e = jnp.einsum("nv,nd->vd", unit_grad.reshape(rows, -1), scaled_h, preferred_element_type=jnp.float32)
    return (d_h * d_ce).astype(h.dtype), d_e  # the embedding's in float32, cast once at the end


def _logits(h: Array, embedding: Array) -> Array:
    """``[groups, n, embed] -> [groups, n, vocab]`` float32, as the model's head."""
    return _constrain_logits(
        jnp.einsum("gnd,vd->gnv", h, embedding.astype(h.dtype), preferred_element_type=jnp.float32))


def _constrain_logits(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_vocab"))


def _plan(weights: Array, capacity: int) -> tuple[Array, Array, Array]:
    """``(fits, index, valid)``: whether every group's loss positions fit in
    ``capacity``, and :func:`_positions` of them."""
    index, valid = _positions(weights != 0, capacity)
    return _fits(weights, capacity), index, valid


def _fits(weights: Array, capacity: int) -> Array:
    """Whether every group has at most ``capacity`` loss positions (a bool scalar)."""
    return jnp.all(jnp.sum(weights != 0, axis=1) <= capacity)


def _gather(hidden, targets, weights, index, valid):
    """The loss positions' ``(h [groups, capacity, embed], targets, weights)``; unused
    slots get weight 0."""
    take = functools.partial(jnp.take_along_axis, indices=index, axis=1)
    return (jnp.take_along_axis(hidden, index[..., None], axis=1), take(targets),
            jnp.where(valid, take(weights), 0.0))


def _positions(active: Array, capacity: int) -> tuple[Array, Array]:
    """``[groups, rows]`` bool -> the first ``capacity`` active positions of each group
    ``[groups, capacity]`` (in order; unused slots point at 0) and which slots are used."""
    groups, rows = active.shape
    slot = jnp.cumsum(active, axis=1, dtype=jnp.int32) - 1
    slot = jnp.where(active, slot, capacity)  # out of range: dropped
    index = jnp.zeros((groups, capacity), jnp.int32).at[jnp.arange(groups)[:, None], slot].set(
        jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32), (groups, rows)), mode="drop"
    )
    valid = jnp.arange(capacity) < jnp.sum(active, axis=1, keepdims=True)
    return index, valid
