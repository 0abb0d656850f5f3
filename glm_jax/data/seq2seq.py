"""Conditional generation as blank infilling: the official seq2seq rows (spec 2.4, 4.4).

The layout of THUDM/GLM ``tasks/seq2seq/dataset.Seq2SeqDataset`` for
summarisation (CNN/DailyMail, XSum, Gigaword) and SQuAD question generation. The
source fills Part A, truncated and then right-padded with pad ids *inside* Part A
up to ``src_length`` (the pads are attended to, as upstream: no padding mask); the
target is Part B at the blank's position::

    summarisation   [CLS] [M] " Content:" " "+article  pad ... | [sop] target[:-1]
    question gen.   [CLS] passage " Question:" [M] " Answer: "+answer pad ... | [sop] ...

    targets         0 ...                                       | " "+target [eop] (then pad)
    loss_mask       0 ...                                       | 1 ... 1 (then 0)
    position_ids    0 1 2 ... src_length-1                      | m m ... m     (m: the blank's index)
    block_position  0 ...                                       | 1 2 ... tgt_length

``[M]`` is ``[sMASK]`` for task-mask models (GLM-10B), else ``[MASK]``; the target
part always has ``tgt_length`` places (the target with its ``[eop]``, cut or padded).
An evaluation row is Part A plus ``[sop]``; decoding continues from there.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from glm_jax.command_tokens import CommandTokens

Row = dict[str, np.ndarray]


def blank_id(command_tokens: CommandTokens) -> int:
    """``[sMASK]`` when the vocabulary has task masks, else ``[MASK]`` (upstream's
    ``'sMASK' if args.task_mask else 'MASK'``)."""
    return command_tokens.smask if command_tokens.smask is not None else command_tokens.mask


def summary_source(article_ids: Sequence[int], content_ids: Sequence[int], src_length: int,
                   command_tokens: CommandTokens) -> list[int]:
    """``[CLS] [M] " Content:" " "+article``, the article cut to fit ``src_length``
    (``content_ids``: the encoding of ``" Content:"``, ``article_ids`` of ``" " + article``)."""
    prompt = [command_tokens.cls, blank_id(command_tokens), *content_ids]
    return prompt + list(article_ids)[: max(src_length - len(prompt), 0)]


def question_source(passage_ids: Sequence[int], answer_ids: Sequence[int], answer_pattern: Sequence[int],
                    src_length: int, command_tokens: CommandTokens) -> list[int]:
    """``[CLS] passage " Question:" [M] " Answer: "+answer`` (``passage_ids``: the
    encoding of ``passage.rstrip() + " Question:"``; ``answer_ids`` of ``" Answer: " +
    answer``; ``answer_pattern`` of ``" " + answer``). A passage too long is cut to a
    window centred on the answer's first occurrence (from its start if absent)."""
    passage = list(passage_ids)
    budget = src_length - len(answer_ids) - 2
    if len(passage) > budget:
        pattern = list(answer_pattern)
        hits = [i for i in range(len(passage)) if pattern and passage[i: i + len(pattern)] == pattern]
        start = max(hits[0] - budget // 2, 0) if hits else 0
        passage = passage[start: start + budget]
    return [command_tokens.cls, *passage, blank_id(command_tokens), *answer_ids]


def seq2seq_row(source: Sequence[int], target_ids: Optional[Sequence[int]], src_length: int, tgt_length: int,
                command_tokens: CommandTokens) -> Row:
    """One row: ``source`` padded inside Part A to ``src_length``, then Part B.

    Args:
      source: Part A as :func:`summary_source` or :func:`question_source` built it.
      target_ids: the encoding of ``" " + target`` for a training row; None for an
        evaluation row (Part A and ``[sop]`` only).
      src_length, tgt_length: upstream's ``src_seq_length`` / ``tgt_seq_length``.

    Returns int32 features ``[src_length + tgt_length]`` (training) or
    ``[src_length + 1]`` (evaluation), and a scalar ``sep = src_length``.
    """
    ct = command_tokens
    if len(source) > src_length:
        raise ValueError(f"the source has {len(source)} tokens, more than src_length={src_length}")
    blank = blank_id(ct)
    if blank not in source:
        raise ValueError("the source has no blank for the target to fill")
    mask_position = list(source).index(blank)
    part_a = list(source) + [ct.pad] * (src_length - len(source))
    positions = list(range(src_length))
    if target_ids is None:
        row = {"tokens": part_a + [ct.sop], "position_ids": positions + [mask_position],
               "block_position_ids": [0] * src_length + [1]}
    else:
        target = (list(target_ids) + [ct.eop])[:tgt_length]
        loss = [1] * len(target) + [0] * (tgt_length - len(target))
        target += [ct.pad] * (tgt_length - len(target))
        row = {
            "tokens": part_a + [ct.sop] + target[:-1],
            "targets": [0] * src_length + target,
            "loss_mask": [0] * src_length + loss,
            "position_ids": positions + [mask_position] * tgt_length,
            "block_position_ids": [0] * src_length + list(range(1, tgt_length + 1)),
        }
    out = {k: np.asarray(v, np.int32) for k, v in row.items()}
    out["sep"] = np.int32(src_length)
    return out


def summary_row(article: str, summary: Optional[str], vocabulary, src_length: int, tgt_length: int) -> Row:
    """The row of one summarisation example (CNN/DailyMail, XSum, Gigaword), encoded as
    upstream does: ``" " + article``, ``" Content:"`` and ``" " + summary`` separately;
    ``summary`` None gives the evaluation row."""
    ct = vocabulary.command_tokens
    source = summary_source(vocabulary.encode(" " + article), vocabulary.encode(" Content:"), src_length, ct)
    target = None if summary is None else vocabulary.encode(" " + summary)
    return seq2seq_row(source, target, src_length, tgt_length, ct)


def question_generation_row(passage: str, answer: str, question: Optional[str], vocabulary, src_length: int,
                            tgt_length: int) -> Row:
    """The row of one SQuAD question-generation example: ``passage.rstrip() +
    " Question:"``, ``" Answer: " + answer`` and ``" " + question`` encoded
    separately, as upstream; ``question`` None gives the evaluation row."""
    ct = vocabulary.command_tokens
    source = question_source(vocabulary.encode(passage.rstrip() + " Question:"), vocabulary.encode(" Answer: " + answer),
                             vocabulary.encode(" " + answer), src_length, ct)
    target = None if question is None else vocabulary.encode(" " + question)
    return seq2seq_row(source, target, src_length, tgt_length, ct)
