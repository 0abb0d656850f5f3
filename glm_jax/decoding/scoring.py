"""Scoring candidate fills of a blank: the multi-token cloze of spec 4.1.

A candidate ``c`` is scored as the answer ``c + [eop]`` in one blank: Part B input
``[sop] + answer[:-1]`` at the blank's position id with block ids ``1 .. len(answer)``,
and the score is ``sum_j log p(answer_j | ...)``, the ``[eop]`` included (as
GLMForMultiTokenCloze does). The mean is that sum over ``len(answer)`` (the
official ``length_penalty = 1``, used by WSC).

Each context is encoded once (prefill into the decode cache) and all its
candidates then run as one batch of Part B rows against copies of that cache:
one jitted call per batch, and the context's cost is paid once, not once per
candidate. Padded candidate tokens are invalid keys and carry weight 0.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import prompt_layout
from glm_jax.decoding.infill import check_params
from glm_jax.decoding.search import prefill
from glm_jax.model.config import ModelConfig
from glm_jax.model.glm import GLM, map_cache_rows

Array = jnp.ndarray


@functools.partial(jax.jit, static_argnames=("config",))
def score_arrays(
    params, context: Array, context_lengths: Array, blank_positions: Array,
    inputs: Array, targets: Array, weights: Array, *, config: ModelConfig,
) -> Array:
    """Summed target log-probabilities of padded Part B rows.

    Args:
      context: ``[B, T]`` right-padded contexts; context_lengths: ``[B]``.
      blank_positions: ``[B]`` position id of the blank each answer fills.
      inputs: ``[B, C, L]`` Part B inputs (``[sop] + answer[:-1]``, padded).
      targets: ``[B, C, L]`` the answers, padded.
      weights: ``[B, C, L]`` float32, 1 on real answer tokens, 0 on padding.

    Returns:
      ``[B, C]`` float32, ``sum_j weights * log p(targets_j)``.
    """
    model = GLM(config)
    batch, length = context.shape
    _, candidates, answer_len = inputs.shape
    rows = batch * candidates
    _, cache = prefill(model, params, context, context_lengths, length + answer_len)
    cache = map_cache_rows(cache, lambda x, axis: jnp.repeat(x, candidates, axis=axis))
    positions = jnp.broadcast_to(jnp.repeat(blank_positions, candidates)[:, None], (rows, answer_len))
    blocks = jnp.broadcast_to(jnp.arange(1, answer_len + 1)[None, :], (rows, answer_len))
    weights = weights.reshape(rows, answer_len)
    # sep = 0: Part B is causal, and sees the whole (valid) context.
    logits, _ = model.apply(
        {"params": params, "cache": cache}, inputs.reshape(rows, answer_len), positions, blocks,
        sep=jnp.zeros((rows,), jnp.int32), valid=weights > 0, decode=True, mutable=["cache"],
    )
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, targets.reshape(rows, answer_len, 1), axis=-1)[..., 0]
    return jnp.sum(picked * weights, axis=-1).reshape(batch, candidates)


def score_batch(
    params: Mapping[str, Any],
    config: ModelConfig,
    contexts: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    command_tokens: CommandTokens,
    *,
    blank_positions: Optional[Sequence[int]] = None,
    append_eop: bool = True,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`score` for several contexts at once, in one jitted call.

    Args:
      contexts: Part A ids per example, verbatim (e.g. ``[CLS] pattern [eos]``).
      candidates: per example, its candidate answers' ids (any number, >= 1).
      blank_positions: per example, the blank's index in its context; default:
        the last [MASK] / [sMASK] / [gMASK] (as build_input_from_ids takes it).
      append_eop: score ``candidate + [eop]`` (the cloze tasks); False scores the
        candidate alone (LAMBADA-style, spec 4.5).

    Returns:
      Per example, ``(sum_logprob [C], mean_logprob [C])`` float32 numpy arrays.
    """
    check_params(params, config)
    ct = command_tokens
    if len(contexts) != len(candidates):
        raise ValueError(f"got {len(contexts)} contexts but {len(candidates)} candidate lists")
    if blank_positions is None:
        blank_positions = []
        for i, context in enumerate(contexts):
            found = prompt_layout.blank_positions(context, ct)
            if not found:
                raise ValueError(f"context {i} has no blank ([MASK], [sMASK] or [gMASK]) to score candidates in")
            blank_positions.append(found[-1])
    answers = []
    for i, cands in enumerate(candidates):
        if len(cands) == 0:
            raise ValueError(f"context {i} has no candidates")
        example = [[int(t) for t in c] + ([ct.eop] if append_eop else []) for c in cands]
        for j, answer in enumerate(example):
            if not answer:
                raise ValueError(f"candidate {j} of context {i} is empty (and append_eop=False)")
        answers.append(example)
    longest = max(len(a) for example in answers for a in example)
    if longest > config.max_position_embeddings:
        raise ValueError(
            f"an answer of {longest} tokens needs block position ids beyond max_position_embeddings="
            f"{config.max_position_embeddings}"
        )
    for i, context in enumerate(contexts):
        if not 0 < len(context) <= config.position_table_size:
            raise ValueError(
                f"context {i} has {len(context)} tokens; it must have 1 .. {config.position_table_size} "
                "(the position table's rows)"
            )
        if not 0 <= blank_positions[i] < len(context):
            raise ValueError(f"blank position {blank_positions[i]} is outside context {i} of length {len(context)}")

    length = prompt_layout.round_up(max(len(c) for c in contexts), 16)
    answer_len = prompt_layout.round_up(longest, 8)
    # Bucketed like the lengths, so that calls with a few candidates more or less
    # share one compiled function.
    num_cands = prompt_layout.round_up(max(len(a) for a in answers), 4)
    batch = len(contexts)
    context = np.full((batch, length), ct.pad, np.int32)
    inputs = np.full((batch, num_cands, answer_len), ct.pad, np.int32)
    targets = np.zeros((batch, num_cands, answer_len), np.int32)
    weights = np.zeros((batch, num_cands, answer_len), np.float32)
    for i, (ctx, example) in enumerate(zip(contexts, answers)):
        context[i, : len(ctx)] = ctx
        for j, answer in enumerate(example):
            n = len(answer)
            inputs[i, j, :n] = [ct.sop] + answer[:-1]
            targets[i, j, :n] = answer
            weights[i, j, :n] = 1.0
    sums = np.asarray(
        score_arrays(
            params, context, np.array([len(c) for c in contexts], np.int32), np.asarray(blank_positions, np.int32),
            inputs, targets, weights, config=config,
        )
    )
    out = []
    for i, example in enumerate(answers):
        total = sums[i, : len(example)].astype(np.float32)
        counts = np.array([len(a) for a in example], np.float32)
        out.append((total, total / counts))
    return out


def score(
    params: Mapping[str, Any],
    config: ModelConfig,
    context_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    command_tokens: CommandTokens,
    *,
    blank_position: Optional[int] = None,
    append_eop: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Score candidate fills of one blank (spec 4.1 multi-token cloze).

    Args:
      params, config: the model.
      context_ids: Part A ids, verbatim (``[CLS] ... [MASK] ... [eos]``).
      candidates: each candidate's token ids (without ``[eop]``).
      command_tokens: the vocabulary's command-token ids.
      blank_position: the blank's index in the context; default: the last blank.
      append_eop: see :func:`score_batch`.

    Returns:
      ``(sum_logprob [C], mean_logprob [C])``: per candidate, the summed
      log-probability of ``candidate + [eop]`` and that sum over its token count.
    """
    return score_batch(
        params, config, [context_ids], [candidates], command_tokens,
        blank_positions=None if blank_position is None else [blank_position], append_eop=append_eop,
    )[0]
