"""Prompts written as text, filled or scored in an input style: what ``glm-jax
generate`` prints, one plain record per prompt (JSON-ready).

    texts, contexts = encode_prompts(vocab, prompts, style)
    fill_records(params, config, vocab, prompts, texts, contexts, settings)
    score_records(params, config, vocab, prompts, contexts, [" Paris", " Rome"], style)

The contexts follow ``style`` (glm_jax/decoding/prompt_layout.py: the official
code's rules or the Hugging Face port's); :func:`glm_jax.decoding.infill_text` is
the same fill with the official layout and no padding.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from glm_jax.decoding import prompt_layout
from glm_jax.decoding.infill import Vocabulary, generate
from glm_jax.decoding.prompt_layout import InputStyle
from glm_jax.decoding.scoring import score_batch
from glm_jax.decoding.settings import DecodeSettings
from glm_jax.model import ModelConfig


def encode_prompts(
    vocab: Vocabulary,
    prompts: Sequence[str],
    style: InputStyle,
    *,
    context_length: Optional[int] = None,
    first: int = 1,
) -> tuple[list[list[int]], list[list[int]]]:
    """``(text ids, context ids)`` per prompt: the encoded text, and Part A built from
    it in ``style``, padded to ``context_length`` tokens if given.

    Raises:
      ValueError: a prompt that cannot become a context, named by its number
        (counted from ``first``: the batch's place among all prompts).
    """
    ct = vocab.command_tokens
    texts = [list(vocab.encode(p)) for p in prompts]
    contexts = []
    for i, ids in enumerate(texts):
        try:
            contexts.append(prompt_layout.build_context(ids, ct, style, pad_to=context_length))
        except ValueError as e:
            raise ValueError(f"prompt {first + i}: {e}") from None
    return texts, contexts


def fill_records(
    params: Mapping[str, Any],
    config: ModelConfig,
    vocab: Vocabulary,
    prompts: Sequence[str],
    texts: Sequence[Sequence[int]],
    contexts: Sequence[Sequence[int]],
    settings: DecodeSettings,
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Fill every blank of each context (one batch); per prompt ``{prompt, text (the
    prompt with its blanks filled), spans, complete, score, tokens}``."""
    ct = vocab.command_tokens
    records = []
    for prompt, ids, g in zip(prompts, texts, generate(params, config, contexts, ct, settings, seed=seed)):
        # The filled text from [CLS] + text only: the context's end token and padding
        # ([SEP] with hf BERT inputs) are not part of what the user wrote.
        text_part = [ct.cls, *prompt_layout.with_blank(ids, ct)]
        filled = prompt_layout.fill_blanks(text_part, g.blank_positions, g.spans, ct)
        records.append({
            "prompt": prompt,
            "text": vocab.decode(filled),
            "spans": [vocab.decode(list(s)) for s in g.spans],
            "complete": g.complete,
            "score": g.score,
            "tokens": list(g.tokens),
        })
    return records


def score_records(
    params: Mapping[str, Any],
    config: ModelConfig,
    vocab: Vocabulary,
    prompts: Sequence[str],
    contexts: Sequence[Sequence[int]],
    candidates: Sequence[str],
    style: InputStyle,
) -> list[dict[str, Any]]:
    """Score each candidate fill of each context's blank (the last one, or the first
    for hf; one batch); per prompt ``{prompt, candidates, sum_logprob, mean_logprob,
    best}``. Candidates are encoded as written (BPE words need their leading space).

    Raises:
      ValueError: a context without a blank to score, naming its prompt.
    """
    ct = vocab.command_tokens
    blanks = []
    for prompt, context in zip(prompts, contexts):
        try:
            blanks.append(prompt_layout.scored_blank(context, ct, style))
        except ValueError as e:
            raise ValueError(f"prompt {prompt!r}: {e}") from None
    candidate_ids = [list(vocab.encode(c)) for c in candidates]
    results = score_batch(
        params, config, contexts, [candidate_ids] * len(contexts), ct,
        blank_positions=blanks, append_eop=style.append_eop,
    )
    return [
        {
            "prompt": prompt,
            "candidates": list(candidates),
            "sum_logprob": [float(x) for x in sums],
            "mean_logprob": [float(x) for x in means],
            "best": candidates[int(sums.argmax())],
        }
        for prompt, (sums, means) in zip(prompts, results)
    ]
