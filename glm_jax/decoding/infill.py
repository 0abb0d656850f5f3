"""Blank infilling: contexts in, filled blanks out (token ids, and a thin text layer).

* :func:`generate` fills the blanks of ready-made contexts (Part A ids).
* :func:`infill` builds each context from a prompt's ids first (spec 2.3:
  ``[CLS] text [eos]``, ``[gMASK]`` appended to text without a blank).
* :func:`infill_text` does the same from strings, with any vocabulary that has
  ``encode``, ``decode`` and ``command_tokens`` (e.g. ``glm_jax.data.vocab.GLMVocabulary``).

All prompts of one call run as one batch in one compiled loop
(glm_jax/decoding/search.py); call it with prompts of similar lengths, or batch
them yourself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Protocol, Sequence

import jax
import numpy as np

from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import prompt_layout, search
from glm_jax.decoding.settings import DecodeSettings
from glm_jax.model.config import ModelConfig


class Vocabulary(Protocol):
    """What the text layer needs from a vocabulary."""

    @property
    def command_tokens(self) -> CommandTokens: ...

    def encode(self, s: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Generation:
    """The result for one prompt.

    Attributes:
      context: the Part A ids that were encoded.
      blank_positions: index in ``context`` of each blank, left to right.
      spans: the fill of each blank reached, in order, its end token excluded.
        Fewer than the blanks (and the last one possibly cut short) when
        ``max_new_tokens`` ran out; see ``complete``.
      complete: every blank was closed by an end token.
      filled: the context with each blank replaced by its span, without the
        leading ``[CLS]`` and a trailing ``[eos]``: the filled text's ids.
      tokens: every sampled token in order, end tokens included.
      token_logprobs: the model's log-probability of each (raw log-softmax).
      score: beam search: the hypothesis score, ``sum_logprob / n ** length_penalty``
        over the processed log-probabilities; otherwise ``sum(token_logprobs)``.
    """

    context: tuple[int, ...]
    blank_positions: tuple[int, ...]
    spans: tuple[tuple[int, ...], ...]
    complete: bool
    filled: tuple[int, ...]
    tokens: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    score: float


def check_params(params: Mapping[str, Any], config: ModelConfig) -> None:
    """Fail clearly when the params' layer layout does not match ``config.scan_layers``."""
    scanned = "layers" in params
    if scanned != config.scan_layers:
        raise ValueError(
            f"params are {'scanned' if scanned else 'unscanned'} (layers{'' if scanned else '_{i}'}) but "
            f"config.scan_layers={config.scan_layers}; use glm_jax.model.stack_layers / unstack_layers "
            "or config.replace(scan_layers=...)"
        )


def check_ids(contexts: Sequence[Sequence[int]], command_tokens: CommandTokens, vocab_size: int) -> None:
    """Fail clearly on token ids the model has no embedding for (they would embed as NaN)."""
    ct = command_tokens
    for name in ("pad", "sop", "eop"):
        if not 0 <= getattr(ct, name) < vocab_size:
            raise ValueError(
                f"command token {name}={getattr(ct, name)} is outside the model's vocabulary [0, {vocab_size})"
            )
    for i, context in enumerate(contexts):
        bad = [int(t) for t in context if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the model's vocabulary [0, {vocab_size}): {bad[:5]}")


def generate(
    params: Mapping[str, Any],
    config: ModelConfig,
    contexts: Sequence[Sequence[int]],
    command_tokens: CommandTokens,
    settings: Optional[DecodeSettings] = None,
    *,
    seed: int = 0,
) -> list[Generation]:
    """Fill every blank of each context, left to right.

    Args:
      params: model parameters (host or device arrays; sharded ones work under
        ``glm_jax.sharding.activate(mesh)``).
      config: the model's config.
      contexts: Part A ids per prompt, used verbatim (each needs at least one
        [MASK] / [sMASK] / [gMASK]; see :func:`infill` for the standard layout).
      command_tokens: the vocabulary's command-token ids.
      settings: strategy and limits (default: greedy, ``DecodeSettings()``).
      seed: sampling seed; the same seed and inputs give the same output.

    Returns:
      One :class:`Generation` per context, in order.
    """
    check_params(params, config)
    settings = DecodeSettings() if settings is None else settings
    if settings.max_new_tokens > config.max_position_embeddings:
        raise ValueError(
            f"max_new_tokens={settings.max_new_tokens} would need block position ids beyond the model's "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    ct = command_tokens
    check_ids(contexts, ct, config.vocab_size)
    batch = prompt_layout.pad_contexts(contexts, ct, position_table_size=config.position_table_size)
    loop = search.beam_search if settings.strategy == "beam" else search.sample
    result = loop(
        params, batch.tokens, batch.lengths, batch.blank_positions, batch.num_blanks, jax.random.PRNGKey(seed),
        config=config, settings=settings, command_tokens=ct,
    )
    result = jax.tree.map(np.asarray, result)
    end_ids = settings.end_ids(ct)
    out = []
    for i, context in enumerate(contexts):
        n = int(result.num_tokens[i])
        tokens = [int(t) for t in result.tokens[i, :n]]
        positions = prompt_layout.blank_positions(context, ct)
        spans = split_spans(tokens, end_ids, len(positions))
        out.append(
            Generation(
                context=tuple(int(t) for t in context),
                blank_positions=tuple(positions),
                spans=tuple(tuple(s) for s in spans),
                complete=bool(result.complete[i]),
                filled=tuple(prompt_layout.fill_blanks(context, positions, spans, ct)),
                tokens=tuple(tokens),
                token_logprobs=tuple(float(x) for x in result.logprobs[i, :n]),
                score=float(result.score[i]),
            )
        )
    return out


def split_spans(tokens: Sequence[int], end_ids: Sequence[int], num_blanks: int) -> list[list[int]]:
    """Cut one row's sampled tokens into the spans of its blanks.

    Each end token closes the current blank; the next blank is started (its
    ``[sop]`` fed) only if a step followed, so a budget that runs out right after
    an end token leaves the remaining blanks without a span.
    """
    spans: list[list[int]] = [[]]
    for j, t in enumerate(tokens):
        if t not in end_ids:
            spans[-1].append(t)
        elif len(spans) == num_blanks:
            break
        elif j + 1 < len(tokens):
            spans.append([])
    return spans


def infill(
    params: Mapping[str, Any],
    config: ModelConfig,
    prompts: Sequence[Sequence[int]],
    command_tokens: CommandTokens,
    settings: Optional[DecodeSettings] = None,
    *,
    seed: int = 0,
) -> list[Generation]:
    """:func:`generate` on ``build_context(prompt)`` for each prompt's text ids."""
    contexts = [prompt_layout.build_context(p, command_tokens) for p in prompts]
    return generate(params, config, contexts, command_tokens, settings, seed=seed)


@dataclasses.dataclass(frozen=True)
class TextGeneration:
    """The text result for one prompt: ``text`` is the prompt with every blank
    filled, ``spans`` the decoded fills in order; ``generation`` has the ids."""

    prompt: str
    text: str
    spans: tuple[str, ...]
    complete: bool
    generation: Generation


def infill_text(
    params: Mapping[str, Any],
    config: ModelConfig,
    vocab: Vocabulary,
    prompts: Sequence[str],
    settings: Optional[DecodeSettings] = None,
    *,
    seed: int = 0,
) -> list[TextGeneration]:
    """Fill the blanks written in strings ("Paris is the [MASK] of France.").

    ``vocab`` must recognise the blank literals ([MASK], [sMASK], [gMASK]) in
    ``encode``, as ``glm_jax.data.vocab.GLMVocabulary`` does.
    """
    ct = vocab.command_tokens
    generations = infill(params, config, [list(vocab.encode(p)) for p in prompts], ct, settings, seed=seed)
    return [
        TextGeneration(
            prompt=prompt,
            text=vocab.decode(list(g.filled)),
            spans=tuple(vocab.decode(list(s)) for s in g.spans),
            complete=g.complete,
            generation=g,
        )
        for prompt, g in zip(prompts, generations)
    ]
