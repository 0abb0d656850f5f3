"""Token layout of the SuperGLUE cloze inputs (spec 2.4 and 4.1).

``[CLS] A B [eos]`` is Part A (bidirectional), ``sep`` its length; ``[sop]``
opens Part B at the position of the blank (the last ``[MASK]``) with block
position 1. Single-token tasks stop there: the model reads the logits at index
``sep`` and compares the verbalizer tokens. Multi-token tasks append
``answer[:-1]`` (answer = candidate tokens + ``[eop]``) with block positions
``2 .. len(answer)``, targets ``answer`` and loss 1 on them, one row per candidate.

Outputs are plain dicts of numpy arrays, independent of seqio and jax, padded to
the task's ``max_seq_length`` with pad tokens, position 0, block 0, target 0,
loss 0 (padding sits after Part B, in the causal region, so real tokens never
attend to it).
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import numpy as np

from glm_jax.command_tokens import CommandTokens
from glm_jax.data.superglue import patterns
from glm_jax.data.superglue.readers import Example


class Vocabulary(Protocol):
    """What the layout needs from a vocabulary (``glm_jax.data.vocab.GLMVocabulary`` fits)."""

    command_tokens: CommandTokens

    def encode(self, s: str) -> Sequence[int]: ...


def encode_piece(vocab: Vocabulary, text: str) -> list[int]:
    """One pattern piece to ids: the vocabulary's ``encode_piece`` where it has one
    (sentencepiece: see ``glm_jax.data.vocab.GLMVocabulary.encode_piece``), else ``encode``
    (the official BPE and wordpiece tokenisers, used as the official code uses them)."""
    encode = getattr(vocab, "encode_piece", None) or vocab.encode
    return list(encode(text))


class _Part:
    """The encoded pieces of Part A or B, each with its shortenable flag."""

    def __init__(self, pieces: Sequence[patterns.Piece], vocab: Vocabulary):
        self.ids: list[list[int]] = []
        self.shortenable: list[bool] = []
        for piece in pieces:
            # Each piece is tokenised on its own, as the official code does.
            ids = [vocab.command_tokens.mask] if piece.text is patterns.MASK else encode_piece(vocab, piece.text)
            self.ids.append(ids)
            self.shortenable.append(piece.shortenable)

    def copy(self) -> "_Part":
        other = object.__new__(_Part)
        other.ids = [list(ids) for ids in self.ids]
        other.shortenable = list(self.shortenable)
        return other

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.ids)

    def shortenable_length(self) -> int:
        return sum(len(ids) for ids, s in zip(self.ids, self.shortenable) if s)

    def remove_last(self) -> None:
        """Drop the last token of the last non-empty shortenable piece."""
        last = max(i for i, (ids, s) in enumerate(zip(self.ids, self.shortenable)) if s and ids)
        self.ids[last].pop()

    def flat(self) -> list[int]:
        return [t for ids in self.ids for t in ids]


def truncate(part_a: _Part, part_b: _Part, n_extra: int, max_length: int, where: str) -> int:
    """Shorten A/B in place until ``len(A) + len(B) + n_extra <= max_length``.

    Each step removes one token from the end of the part with the longer
    shortenable length (B on ties), as ``PVP.truncate`` does. ``n_extra`` counts
    ``[CLS]``, ``[eos]`` and either ``[sop]`` or the answer tokens. Returns the
    number of tokens removed.
    """
    excess = len(part_a) + len(part_b) + n_extra - max_length
    for _ in range(max(excess, 0)):
        a, b = part_a.shortenable_length(), part_b.shortenable_length()
        if a == b == 0:
            raise ValueError(
                f"{where}: {len(part_a) + len(part_b) + n_extra} tokens exceed max_seq_length {max_length} "
                "and no shortenable text is left")
        (part_a if a > b else part_b).remove_last()
    return max(excess, 0)


def _layout(a: list[int], b: list[int], answer: Optional[list[int]], cmd: CommandTokens,
            max_length: int) -> dict[str, np.ndarray]:
    """One row: ``[CLS] A B [eos] [sop] answer[:-1]``, padded to ``max_length``."""
    ids = [cmd.cls, *a, *b, cmd.eos]
    sep = len(ids)
    mask_position = max(i for i, t in enumerate(ids) if t == cmd.mask)  # the last [MASK]
    positions = list(range(sep))
    blocks = [0] * sep
    targets: list[int] = []
    loss: list[int] = []
    ids.append(cmd.sop)
    positions.append(mask_position)
    blocks.append(1)
    if answer is not None:
        ids.extend(answer[:-1])
        positions.extend([mask_position] * (len(answer) - 1))
        blocks.extend(range(2, len(answer) + 1))
        # Input t predicts targets[t]: the [sop] row predicts answer[0].
        targets = [0] * sep + list(answer)
        loss = [0] * sep + [1] * len(answer)
    n = len(ids)
    assert n <= max_length, (n, max_length)  # truncate() guarantees it
    pad = max_length - n

    def padded(values: list[int], fill: int) -> np.ndarray:
        return np.asarray(values + [fill] * pad, np.int32)

    row = {
        "tokens": padded(ids, cmd.pad),
        "position_ids": padded(positions, 0),
        "block_position_ids": padded(blocks, 0),
        "sep": np.int32(sep),
        "mask_position": np.int32(mask_position),
    }
    if answer is not None:
        row["targets"] = padded(targets, 0)
        row["loss_mask"] = padded(loss, 0)
    return row


def verbalizer_ids(task: str, pattern_id: int, vocab: Vocabulary) -> np.ndarray:
    """The first token of each label word, in label order.

    The official code requires each label word to be a single token; a vocabulary
    that splits some (ours, trained on code documentation, splits " Yes") is scored
    by the first token, which must then differ between the labels.
    """
    spec = patterns.get_task(task)
    if spec.verbalizers is None:
        raise ValueError(f"{task} has multi-token answers, not a verbalizer")
    spec.check_pattern(pattern_id)
    words = spec.verbalizers(pattern_id)
    ids = []
    for word in words:
        encoded = encode_piece(vocab, word)
        if not encoded:
            raise ValueError(f"{task} pattern {pattern_id}: verbalizer {word!r} encodes to no tokens")
        ids.append(encoded[0])
    if len(set(ids)) < len(ids):
        firsts = ", ".join(f"{w!r} -> {i}" for w, i in zip(words, ids))
        raise ValueError(
            f"{task} pattern {pattern_id}: label words share their first token ({firsts}), so the labels "
            "cannot be told apart; choose another pattern or a vocabulary that keeps them distinct")
    return np.asarray(ids, np.int32)


def encode_example(
    task: str,
    example: Example,
    vocab: Vocabulary,
    *,
    pattern_id: Optional[int] = None,
    max_seq_length: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """The model inputs of one example.

    Single-token tasks (BoolQ, CB, RTE, WiC, MultiRC) give one row:
    ``tokens``, ``position_ids``, ``block_position_ids`` ``[L]``; ``sep``,
    ``mask_position``, ``label`` scalars; ``choice_ids`` ``[K]`` (verbalizer tokens).

    Multi-token tasks (COPA, WSC, ReCoRD) give one row per candidate: the same
    keys with a leading ``[C]`` axis plus ``targets``, ``loss_mask`` ``[C, L]``
    and ``answer_lengths`` ``[C]`` (candidate tokens + eop); ``label`` is a
    scalar (see ``readers.Example.label``; -1 when unknown).

    Args:
      pattern_id: default: the task's official script id.
      max_seq_length: default: the task's (spec 4.3).
    """
    spec = patterns.get_task(task)
    pid = spec.default_pattern if pattern_id is None else pattern_id
    max_length = spec.max_seq_length if max_seq_length is None else max_seq_length
    cmd = vocab.command_tokens
    part_a_pieces, part_b_pieces = patterns.pieces(task, example, pid)
    label = np.int32(-1 if example.label is None else example.label)
    where = f"{task} example {example.guid}"

    if not spec.multi_token:
        part_a, part_b = _Part(part_a_pieces, vocab), _Part(part_b_pieces, vocab)
        truncate(part_a, part_b, 3, max_length, where)  # [CLS], [eos], [sop]
        row = _layout(part_a.flat(), part_b.flat(), None, cmd, max_length)
        return {**row, "label": label, "choice_ids": verbalizer_ids(task, pid, vocab)}

    assert spec.answers is not None  # multi_token means answers are defined
    answers = spec.answers(example)
    if not answers:
        raise ValueError(f"{where}: no candidates")
    # The pattern is encoded once; every candidate truncates its own copy, since a
    # longer answer leaves less room for the context.
    full_a, full_b = _Part(part_a_pieces, vocab), _Part(part_b_pieces, vocab)
    rows = []
    for answer_text in answers:
        answer = [*encode_piece(vocab, answer_text), cmd.eop]
        part_a, part_b = full_a.copy(), full_b.copy()
        truncate(part_a, part_b, 2 + len(answer), max_length, where)  # [CLS], [eos], answer
        row = _layout(part_a.flat(), part_b.flat(), answer, cmd, max_length)
        row["answer_lengths"] = np.int32(len(answer))
        rows.append(row)
    out = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    out["label"] = label
    return out
