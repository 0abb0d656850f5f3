"""The jitted decode loops: one prefill of Part A, then one token per row per step.

Everything from the prefill to the last step runs inside one ``jax.jit`` (a
``lax.while_loop`` that stops early once every row is done). Rows are prompts
(greedy, sampling) or prompt x beam (beam search); each row fills its blanks left
to right with the state machine of :class:`Rows`:

* a step feeds the row's next token at its current blank's position id and block
  id ``blank_length + 1`` (so ``[sop]`` gets 1, the first generated token 2, ...);
* a sampled end token closes the blank; it is not fed back, the next step feeds
  ``[sop]`` of the next blank instead; after the last blank the row is done and is
  fed padding (invalid keys, so nothing ever attends to it).

Array shapes: B prompts, K beams, R = B * K rows, T padded context length,
N = ``max_new_tokens``, V vocabulary, S blanks per prompt (padded).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import processors
from glm_jax.decoding.settings import DecodeSettings
from glm_jax.model.config import ModelConfig
from glm_jax.model.glm import GLM, init_cache, map_cache_rows

Array = jnp.ndarray
# The official BeamSearchScorer starts beams 1..K-1 at -1e9 so that the first step
# expands beam 0 only (all beams hold the same prefix).
INITIAL_BEAM_SCORE = -1e9


class Rows(NamedTuple):
    """Per-row decoding state.

    Attributes:
      next_token: ``[R]`` int32, the token the next step feeds.
      blank: ``[R]`` int32, index of the blank being filled.
      blank_length: ``[R]`` int32, tokens generated in that blank so far.
      done: ``[R]`` bool, the row is finished and fed padding.
      tokens: ``[R, N]`` int32, every sampled token in order, end tokens included.
      logprobs: ``[R, N]`` float32, the model's log-probability of each (raw
        log-softmax: no temperature or other processing).
      num_tokens: ``[R]`` int32, how many of ``tokens`` belong to the row.
    """

    next_token: Array
    blank: Array
    blank_length: Array
    done: Array
    tokens: Array
    logprobs: Array
    num_tokens: Array


class Result(NamedTuple):
    """One result per prompt: ``tokens`` / ``logprobs`` ``[B, N]``, ``num_tokens``
    ``[B]``, ``complete`` ``[B]`` (every blank closed), ``score`` ``[B]`` (beam: the
    hypothesis score; else the summed log-probability)."""

    tokens: Array
    logprobs: Array
    num_tokens: Array
    complete: Array
    score: Array


def initial_rows(num_rows: int, max_new_tokens: int, command_tokens: CommandTokens) -> Rows:
    return Rows(
        next_token=jnp.full((num_rows,), command_tokens.sop, jnp.int32),
        blank=jnp.zeros((num_rows,), jnp.int32),
        blank_length=jnp.zeros((num_rows,), jnp.int32),
        done=jnp.zeros((num_rows,), bool),
        tokens=jnp.full((num_rows, max_new_tokens), command_tokens.pad, jnp.int32),
        logprobs=jnp.zeros((num_rows, max_new_tokens), jnp.float32),
        num_tokens=jnp.zeros((num_rows,), jnp.int32),
    )


def prefill(model: GLM, params, tokens: Array, lengths: Array, cache_length: int):
    """Encode the contexts once into a fresh cache of ``cache_length`` slots.

    Args:
      tokens: ``[B, T]`` right-padded contexts; lengths: ``[B]`` real tokens.

    Part A is bidirectional (``sep`` = its length); its padding is marked invalid
    so that no token ever attends to it (the official code would attend to it).
    Returns ``(logits [B, T, V], cache)``.
    """
    batch, length = tokens.shape
    valid = jnp.arange(length)[None, :] < lengths[:, None]
    # Padding gets position 0: any id the position table has.
    positions = jnp.where(valid, jnp.arange(length)[None, :], 0)
    cache = init_cache(model.config, batch, cache_length)
    logits, variables = model.apply(
        {"params": params, "cache": cache}, tokens, positions, jnp.zeros_like(positions),
        sep=lengths, valid=valid, decode=True, mutable=["cache"],
    )
    return logits, variables["cache"]


def decode_step(model: GLM, params, cache, rows: Rows, blank_positions: Array, pad: int):
    """Feed every row's next token; return its ``[R, V]`` float32 logits and the cache."""
    blank = jnp.minimum(rows.blank, blank_positions.shape[1] - 1)
    position = jnp.take_along_axis(blank_positions, blank[:, None], axis=1)
    block = (rows.blank_length + 1)[:, None]
    token = jnp.where(rows.done, pad, rows.next_token)[:, None]
    logits, variables = model.apply(
        {"params": params, "cache": cache}, token, position, block,
        sep=jnp.zeros_like(rows.blank), valid=~rows.done[:, None], decode=True, mutable=["cache"],
    )
    return logits[:, 0], variables["cache"]


def _advance(
    rows: Rows, token: Array, logprob: Array, step: Array, num_blanks: Array,
    end_ids: Sequence[int], command_tokens: CommandTokens,
) -> Rows:
    """Record this step's sampled ``token`` ``[R]`` and move each live row on."""
    live = ~rows.done
    is_end = jnp.isin(token, jnp.asarray(end_ids)) & live
    blank = rows.blank + is_end
    return Rows(
        # The end token is not fed back: the next blank starts with [sop].
        next_token=jnp.where(is_end, command_tokens.sop, token),
        blank=blank,
        blank_length=jnp.where(is_end, 0, rows.blank_length + live),
        done=rows.done | (blank >= num_blanks),
        tokens=rows.tokens.at[:, step].set(jnp.where(live, token, command_tokens.pad)),
        logprobs=rows.logprobs.at[:, step].set(jnp.where(live, logprob, 0.0)),
        num_tokens=jnp.where(live, step + 1, rows.num_tokens),
    )


def _processed(
    scores: Array, rows: Rows, step: Array, settings: DecodeSettings, end_ids: Sequence[int]
) -> Array:
    """The processors every strategy applies: min length, then no-repeat-ngram."""
    scores = processors.forbid_end_before_min_length(scores, rows.blank_length, settings.min_length, end_ids)
    if settings.no_repeat_ngram_size > 0:
        banned = processors.repeated_ngram_tokens(rows.tokens, step, settings.no_repeat_ngram_size, scores.shape[-1])
        scores = jnp.where(banned, processors.NEG_INF, scores)
    return scores


def _take_row(x: Array, index: Array) -> Array:
    """``x[r, index[r]]`` for ``x [R, V]``, ``index [R]``."""
    return jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "settings", "command_tokens"))
def sample(
    params, tokens: Array, lengths: Array, blank_positions: Array, num_blanks: Array, rng: Array,
    *, config: ModelConfig, settings: DecodeSettings, command_tokens: CommandTokens,
) -> Result:
    """Greedy or sampled infilling of ``B`` prompts.

    Args:
      params: the model's parameters (laid out for ``config.scan_layers``).
      tokens: ``[B, T]`` right-padded contexts; lengths: ``[B]``.
      blank_positions: ``[B, S]`` position of each blank; num_blanks: ``[B]``.
      rng: a PRNG key; step t samples with ``fold_in(rng, t)`` (unused by greedy).
    """
    model = GLM(config)
    batch, length = tokens.shape
    steps = settings.max_new_tokens
    end_ids = settings.end_ids(command_tokens)
    _, cache = prefill(model, params, tokens, lengths, length + steps)

    def cond(carry):
        step, _, rows = carry
        return (step < steps) & ~jnp.all(rows.done)

    def body(carry):
        step, cache, rows = carry
        logits, cache = decode_step(model, params, cache, rows, blank_positions, command_tokens.pad)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        scores = _processed(logits, rows, step, settings, end_ids)
        if settings.strategy == "greedy":
            token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        else:
            scores = processors.warp_for_sampling(scores, settings.temperature, settings.top_k, settings.top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, step), scores, axis=-1).astype(jnp.int32)
        rows = _advance(rows, token, _take_row(logprobs, token), step, num_blanks, end_ids, command_tokens)
        return step + 1, cache, rows

    carry = (jnp.zeros((), jnp.int32), cache, initial_rows(batch, steps, command_tokens))
    _, _, rows = jax.lax.while_loop(cond, body, carry)
    score = jnp.sum(rows.logprobs, axis=-1)
    return Result(rows.tokens, rows.logprobs, rows.num_tokens, rows.done, score)


class Hypotheses(NamedTuple):
    """Each prompt's K best finished hypotheses (the official BeamHypotheses, as arrays).

    Attributes:
      score: ``[B, K]`` float32, ``-inf`` in empty slots.
      count: ``[B]`` int32, filled slots.
      tokens, logprobs: ``[B, K, N]``; num_tokens: ``[B, K]``.
      complete: ``[B, K]`` bool, closed by ``[eop]`` (False: cut by max_new_tokens).
    """

    score: Array
    count: Array
    tokens: Array
    logprobs: Array
    num_tokens: Array
    complete: Array


def _empty_hypotheses(batch: int, beams: int, steps: int) -> Hypotheses:
    return Hypotheses(
        score=jnp.full((batch, beams), -jnp.inf, jnp.float32),
        count=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.zeros((batch, beams, steps), jnp.int32),
        logprobs=jnp.zeros((batch, beams, steps), jnp.float32),
        num_tokens=jnp.zeros((batch, beams), jnp.int32),
        complete=jnp.zeros((batch, beams), bool),
    )


def _add_hypothesis(
    hyps: Hypotheses, add: Array, score: Array, tokens: Array, logprobs: Array, num_tokens: Array, complete: bool
) -> Hypotheses:
    """``BeamHypotheses.add`` for every prompt at once: where ``add`` ``[B]``, keep the
    new hypothesis if a slot is free or it beats the worst one, which it replaces."""
    beams = hyps.score.shape[1]
    full = hyps.count >= beams
    add = add & (~full | (score > jnp.min(hyps.score, axis=1)))
    slot = jnp.where(full, jnp.argmin(hyps.score, axis=1), hyps.count)
    hit = (jnp.arange(beams)[None, :] == slot[:, None]) & add[:, None]  # [B, K]
    return Hypotheses(
        score=jnp.where(hit, score[:, None], hyps.score),
        count=hyps.count + (add & ~full),
        tokens=jnp.where(hit[..., None], tokens[:, None, :], hyps.tokens),
        logprobs=jnp.where(hit[..., None], logprobs[:, None, :], hyps.logprobs),
        num_tokens=jnp.where(hit, num_tokens[:, None], hyps.num_tokens),
        complete=jnp.where(hit, complete, hyps.complete),
    )


@functools.partial(jax.jit, static_argnames=("config", "settings", "command_tokens"))
def beam_search(
    params, tokens: Array, lengths: Array, blank_positions: Array, num_blanks: Array, rng: Array,
    *, config: ModelConfig, settings: DecodeSettings, command_tokens: CommandTokens,
) -> Result:
    """Beam search with the official (Hugging Face) BeamSearchScorer semantics.

    ``do_early_stopping=False``; initial beam scores ``[0, -1e9, ...]``; per step the
    2K best (or, with ``beam_sample``, 2K sampled) continuations of all K beams;
    an ``[eop]`` among the top K that closes a prompt's last blank becomes a
    finished hypothesis scored ``sum_logprob / max(n, 1) ** length_penalty``
    (n = tokens generated before it), the first K others become the next beams; a
    prompt is done once it has K hypotheses and the best live candidate cannot
    beat the worst of them. Beams still open after ``max_new_tokens`` steps join
    the hypotheses unfinished. An ``[eop]`` closing an earlier blank of a
    several-blank prompt is an ordinary token: the beam goes on with the next blank.

    The cache holds R = B x K rows; choosing the next beams gathers it along rows.
    Arguments as :func:`sample`; ``rng`` is used by ``beam_sample`` only.
    """
    model = GLM(config)
    batch, length = tokens.shape
    beams, steps = settings.num_beams, settings.max_new_tokens
    rows_total = batch * beams
    end_ids = settings.end_ids(command_tokens)
    penalty = settings.length_penalty

    _, cache = prefill(model, params, tokens, lengths, length + steps)
    cache = map_cache_rows(cache, lambda x, axis: jnp.repeat(x, beams, axis=axis))
    blank_positions = jnp.repeat(blank_positions, beams, axis=0)
    num_blanks = jnp.repeat(num_blanks, beams, axis=0)
    beam_scores = jnp.tile(jnp.array([0.0] + [INITIAL_BEAM_SCORE] * (beams - 1), jnp.float32), batch)

    def length_norm(n):
        return jnp.maximum(n, 1).astype(jnp.float32) ** penalty

    def cond(carry):
        step, *_, batch_done = carry
        return (step < steps) & ~jnp.all(batch_done)

    def body(carry):
        step, cache, rows, beam_scores, hyps, batch_done = carry
        logits, cache = decode_step(model, params, cache, rows, blank_positions, command_tokens.pad)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
        vocab = logprobs.shape[-1]
        total = (beam_scores[:, None] + _processed(logprobs, rows, step, settings, end_ids)).reshape(batch, -1)
        if settings.beam_sample:
            # Gumbel top-k draws 2K without replacement from softmax(total), like
            # torch.multinomial; then sort them by score, as the official code does.
            gumbel = jax.random.gumbel(jax.random.fold_in(rng, step), total.shape)
            _, flat = jax.lax.top_k(total + gumbel, 2 * beams)
            cand = jnp.take_along_axis(total, flat, axis=1)
            order = jnp.argsort(-cand, axis=1)
            cand, flat = jnp.take_along_axis(cand, order, axis=1), jnp.take_along_axis(flat, order, axis=1)
        else:
            cand, flat = jax.lax.top_k(total, 2 * beams)  # [B, 2K], best first
        token = (flat % vocab).astype(jnp.int32)
        source = (jnp.arange(batch)[:, None] * beams + flat // vocab).astype(jnp.int32)  # row index in [0, R)
        last_blank = rows.blank[source] == num_blanks[source] - 1
        ends = jnp.isin(token, jnp.asarray(end_ids)) & last_blank  # [B, 2K]

        # Finished hypotheses: ending candidates among the top K, in rank order.
        live = ~batch_done
        norm = length_norm(step)
        for rank in range(beams):
            src, tok = source[:, rank], token[:, rank]
            hyps = _add_hypothesis(
                hyps, ends[:, rank] & live, cand[:, rank] / norm,
                rows.tokens[src].at[:, step].set(tok),
                rows.logprobs[src].at[:, step].set(logprobs[src, tok]),
                jnp.full((batch,), step + 1, jnp.int32), complete=True,
            )
        # Next beams: the first K candidates that do not end, in rank order.
        rank = jnp.arange(2 * beams)
        chosen = jnp.argsort(jnp.where(ends, rank + 2 * beams, rank), axis=1)[:, :beams]  # [B, K]
        next_scores = jnp.take_along_axis(cand, chosen, axis=1)
        next_tokens = jnp.take_along_axis(token, chosen, axis=1)
        next_source = jnp.take_along_axis(source, chosen, axis=1)

        full = hyps.count >= beams
        cannot_improve = jnp.min(hyps.score, axis=1) >= cand[:, 0] / norm
        now_done = batch_done | (full & cannot_improve)

        # Prompts done before this step keep their rows (fed padding; results unused).
        own = jnp.arange(rows_total).reshape(batch, beams)
        next_source = jnp.where(batch_done[:, None], own, next_source).reshape(-1)
        next_tokens = jnp.where(batch_done[:, None], command_tokens.pad, next_tokens).reshape(-1)
        next_scores = jnp.where(batch_done[:, None], 0.0, next_scores).reshape(-1)

        chosen_logprob = logprobs[next_source, next_tokens]
        cache = map_cache_rows(cache, lambda x, axis: jnp.take(x, next_source, axis=axis))
        rows = jax.tree.map(lambda x: x[next_source], rows)
        rows = _advance(rows, next_tokens, chosen_logprob, step, num_blanks, end_ids, command_tokens)
        rows = rows._replace(done=rows.done | jnp.repeat(now_done, beams))
        return step + 1, cache, rows, next_scores, hyps, now_done

    carry = (
        jnp.zeros((), jnp.int32), cache, initial_rows(rows_total, steps, command_tokens), beam_scores,
        _empty_hypotheses(batch, beams, steps), jnp.zeros((batch,), bool),
    )
    step, _, rows, beam_scores, hyps, batch_done = jax.lax.while_loop(cond, body, carry)

    # finalize(): every open beam of an unfinished prompt joins its hypotheses.
    for k in range(beams):
        row = jnp.arange(batch) * beams + k
        hyps = _add_hypothesis(
            hyps, ~batch_done, beam_scores[row] / length_norm(step), rows.tokens[row], rows.logprobs[row],
            jnp.full((batch,), step, jnp.int32), complete=False,
        )
    best = jnp.argmax(hyps.score, axis=1)

    def pick(x):
        return jnp.take_along_axis(x, best.reshape((batch,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]

    return Result(pick(hyps.tokens), pick(hyps.logprobs), pick(hyps.num_tokens), pick(hyps.complete), pick(hyps.score))
