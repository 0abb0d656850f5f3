"""Token-level layout of blank infilling at inference (spec 2.3).

A prompt's context (Part A) is ``[CLS] text [eos]``:

* text without any blank token ([MASK], [sMASK], [gMASK]) gets ``[gMASK]``
  appended (``[MASK]`` when the vocabulary has no task masks);
* ``[eos]`` is appended unless the text ends with ``[gMASK]``.

Every blank is then filled, left to right: blank i is Part B
``[sop] y_1 y_2 ...`` at the blank's position id with block ids 1, 2, 3, ...;
``[eop]`` closes it and is not fed back; the next blank starts with its own
``[sop]`` and sees the context and every earlier fill.

Input styles (spec 1.10). The rules above are the official code's
(``input_style("official")``). The Hugging Face port of GLM builds its inputs
differently, and ``input_style("hf", tokenizer_kind)`` reproduces it:

==================  ==========================================  ==========================================
                    official (THUDM/GLM)                        hf (the hub's remote code)
==================  ==========================================  ==========================================
context end         ``[eos]``, none after a final ``[gMASK]``   always; ``[SEP]`` for the BERT tokenizer
                                                                (GLMBertTokenizer), ``[eos]`` otherwise
context padding     attended: the pads are Part A tokens        masked, so it changes nothing
(``pad_to``)        (the official seq2seq source padding)
scored blank        the last blank (build_input_from_ids)       the first blank (multiple choice)
scored answer       ``candidate + [eop]``                       ``candidate`` (no ``[eop]``)
==================  ==========================================  ==========================================

The third HF difference, the exact erf GELU, is a model setting
(``ModelConfig.activation = "gelu_exact"``), not an input one.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from glm_jax.command_tokens import CommandTokens


INPUT_STYLES = ("official", "hf")


@dataclasses.dataclass(frozen=True)
class InputStyle:
    """How prompts become model inputs: the official code's rules or the Hugging
    Face port's (see the module docstring). Build one with :func:`input_style`.

    Attributes:
      name: ``"official"`` or ``"hf"``.
      end_token: the CommandTokens field closing the context: ``"eos"``, or
        ``"sep"`` (hf with the BERT tokenizer).
      end_after_gmask: the end token follows a final ``[gMASK]`` too (hf).
      attend_padding: Part A padding up to ``pad_to`` is attended (official) rather
        than masked (hf).
      score_first_blank: scoring fills the first blank (hf) instead of the last.
      append_eop: scoring appends ``[eop]`` to each candidate (official).
    """

    name: str = "official"
    end_token: str = "eos"
    end_after_gmask: bool = False
    attend_padding: bool = True
    score_first_blank: bool = False
    append_eop: bool = True


OFFICIAL = InputStyle()


def input_style(name: str, tokenizer_kind: Optional[str] = None) -> InputStyle:
    """The :class:`InputStyle` called ``name`` ("official" or "hf").

    ``tokenizer_kind`` matters for "hf" only: ``"bert"`` (GLMBertTokenizer, which
    inherits BERT's ``[CLS] x [SEP]``) ends contexts with ``[SEP]``; the GPT-2,
    RoBERTa and Chinese tokenizers of the port end them with eos.
    """
    if name == "official":
        return OFFICIAL
    if name == "hf":
        return InputStyle(
            name="hf",
            end_token="sep" if tokenizer_kind == "bert" else "eos",
            end_after_gmask=True,
            attend_padding=False,
            score_first_blank=True,
            append_eop=False,
        )
    raise ValueError(f"unknown input style {name!r}; expected one of {INPUT_STYLES}")


def with_blank(text_ids: Sequence[int], command_tokens: CommandTokens) -> list[int]:
    """The text ids, with ``[gMASK]`` (``[MASK]`` without task masks) appended if
    they hold no blank."""
    ct = command_tokens
    ids = [int(i) for i in text_ids]
    if not any(i in ct.mask_ids() for i in ids):
        ids.append(ct.gmask if ct.gmask is not None else ct.mask)
    return ids


def build_context(
    text_ids: Sequence[int],
    command_tokens: CommandTokens,
    style: InputStyle = OFFICIAL,
    *,
    pad_to: Optional[int] = None,
) -> list[int]:
    """``[CLS] text [end]`` with the spec 2.3 rules for a missing blank and for eos.

    Args:
      text_ids: the prompt's token ids, without ``[CLS]``/``[eos]``.
      command_tokens: the vocabulary's command-token ids.
      style: official (default) or Hugging Face rules (:func:`input_style`).
      pad_to: official: right-pad the context with pad tokens to this many tokens,
        which the model then attends to as Part A, as the official seq2seq code
        pads its sources. hf: the port masks such padding, which leaves every
        output as without it, so none is added (the length is still checked).

    Returns:
      The context (Part A) ids.

    Raises:
      ValueError: the vocabulary lacks the style's end token, or the context is
        longer than ``pad_to``.
    """
    ct = command_tokens
    ids = with_blank(text_ids, ct)
    end = getattr(ct, style.end_token)
    if end is None:
        raise ValueError(f"input style {style.name!r} ends contexts with {style.end_token}, which the vocabulary lacks")
    context = [ct.cls, *ids]
    if style.end_after_gmask or ct.gmask is None or ids[-1] != ct.gmask:
        context.append(end)
    if pad_to is not None:
        if len(context) > pad_to:
            raise ValueError(f"the context has {len(context)} tokens, more than pad_to={pad_to}")
        if style.attend_padding:
            context += [ct.pad] * (pad_to - len(context))
    return context


def blank_positions(context: Sequence[int], command_tokens: CommandTokens) -> list[int]:
    """Indices of the blank tokens ([MASK], [sMASK], [gMASK]) in ``context``, in order."""
    blanks = set(command_tokens.mask_ids())
    return [i for i, t in enumerate(context) if int(t) in blanks]


def scored_blank(context: Sequence[int], command_tokens: CommandTokens, style: InputStyle = OFFICIAL) -> int:
    """Index of the blank that scoring fills: the last one (official
    ``build_input_from_ids``) or the first (hf ``build_inputs_for_multiple_choice``)."""
    found = blank_positions(context, command_tokens)
    if not found:
        raise ValueError("the context has no blank ([MASK], [sMASK] or [gMASK]) to score candidates in")
    return found[0] if style.score_first_blank else found[-1]


def fill_blanks(
    context: Sequence[int], positions: Sequence[int], spans: Sequence[Sequence[int]], command_tokens: CommandTokens
) -> list[int]:
    """The context with blank ``positions[i]`` replaced by ``spans[i]``, without the
    leading ``[CLS]`` and a trailing ``[eos]``: the filled text's ids.

    Blanks beyond ``len(spans)`` (unfilled, when the token budget ran out) are kept.
    """
    replacement = dict(zip(positions, spans))
    out: list[int] = []
    for i, token in enumerate(context):
        out.extend(replacement.get(i, [int(token)]))
    if out and context and int(context[0]) == command_tokens.cls:
        out = out[1:]
    if out and int(context[-1]) == command_tokens.eos:
        out = out[:-1]
    return out


@dataclasses.dataclass(frozen=True)
class ContextBatch:
    """Contexts right-padded into arrays for the jitted loops.

    Attributes:
      tokens: ``[batch, length]`` int32, padding with the pad id.
      lengths: ``[batch]`` int32, real tokens per row.
      blank_positions: ``[batch, max_blanks]`` int32, padded with 0.
      num_blanks: ``[batch]`` int32, >= 1.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    blank_positions: np.ndarray
    num_blanks: np.ndarray


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_contexts(
    contexts: Sequence[Sequence[int]],
    command_tokens: CommandTokens,
    *,
    position_table_size: int,
    length_multiple: int = 16,
) -> ContextBatch:
    """Right-pad contexts and find their blanks.

    Args:
      contexts: Part A ids per prompt (e.g. from :func:`build_context`).
      command_tokens: the vocabulary's command-token ids.
      position_table_size: rows of the model's position table; every position id
        (0 .. len - 1) must index it.
      length_multiple: the padded length is rounded up to a multiple of this, so
        that prompts of similar lengths share one compiled loop.

    Raises:
      ValueError: no contexts, an empty context, a context without a blank, or one
        too long for the position table (the prompt's index is named).
    """
    if not contexts:
        raise ValueError("no prompts given")
    positions = []
    for i, context in enumerate(contexts):
        if len(context) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(context) > position_table_size:
            raise ValueError(
                f"prompt {i} has {len(context)} tokens; the model's position table has "
                f"{position_table_size} rows (max_position_embeddings + 1)"
            )
        found = blank_positions(context, command_tokens)
        if not found:
            raise ValueError(
                f"prompt {i} has no blank ([MASK], [sMASK] or [gMASK]) to fill; "
                "build_context() appends [gMASK] to plain text"
            )
        positions.append(found)
    length = round_up(max(len(c) for c in contexts), length_multiple)
    max_blanks = max(len(p) for p in positions)
    tokens = np.full((len(contexts), length), command_tokens.pad, np.int32)
    blanks = np.zeros((len(contexts), max_blanks), np.int32)
    for i, (context, found) in enumerate(zip(contexts, positions)):
        tokens[i, : len(context)] = context
        blanks[i, : len(found)] = found
    return ContextBatch(
        tokens=tokens,
        lengths=np.array([len(c) for c in contexts], np.int32),
        blank_positions=blanks,
        num_blanks=np.array([len(p) for p in positions], np.int32),
    )
