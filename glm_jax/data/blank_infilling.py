"""Text infilling rows (spec 4.4, Yahoo Answers): upstream's ``BlankLMDataset``.

Training and validation rows mask ``int(n * ratio)`` random words of an ``n``-word
text; consecutive masked words merge into one ``[MASK]`` and become one span::

    text     " how do i cook rice on a stove"
    masked   " how do [MASK] rice [MASK] a stove"        spans: " i cook", " on"

    tokens        " how do [MASK] rice [MASK] a stove" pad ... | [sop] i cook [sop] on  pad ...
    targets       0 ...                                        | i   cook [eop] on [eop] 0 ...
    loss_mask     0 ...                                        | 1   1    1     1  1    0 ...
    position_ids  0 1 2 ... src_length-1                       | 2   2    2     4  4    0 ...
    block_pos.    0 ...                                        | 1   2    3     1  2    0 ...

Part A is ``" " + masked text`` with no ``[CLS]`` and no end token, cut or padded
(with pad ids, attended to) to ``src_length``; Part B holds the spans in
left-to-right order, and the row is cut or padded to ``src_length +
int(src_length * ratio)`` (upstream's length). A test row is Part A only: the
masked text comes from upstream's ``test.maskratio{r}.blank`` file, and greedy
decoding fills the blanks left to right.

Two details differ from upstream on purpose. The masks are drawn per example from
a seed given with it (:func:`mask_words`), so a row is a function of (seed,
example): upstream draws from one ``random.Random`` shared by every row a data
loader worker builds, in the order the loader asks. And ``[MASK]`` markers are
placed as ids between separately encoded pieces, where upstream encodes the
marker text with the words (the same ids for BERT's wordpiece, the only vocabulary
upstream allows here); upstream looks for ``[gMASK]`` ids when the vocabulary has
task masks, which the marker text never gives: glm-jax uses ``[MASK]`` always.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence

import numpy as np

MASK_TEXT = "[MASK]"


def mask_words(text: str, ratio: float, rng: random.Random) -> tuple[str, list[str]]:
    """``(masked text, spans)``: ``int(n * ratio)`` of the ``n`` words replaced, runs
    of masked words merged into one ``[MASK]``; each span and the masked text keep
    upstream's leading spaces (``" i cook"``)."""
    words = text.split()
    chosen = sorted(rng.sample(range(len(words)), int(len(words) * ratio)))
    spans: list[str] = []
    for k, index in enumerate(chosen):
        if k == 0 or index != chosen[k - 1] + 1:
            spans.append("")
        spans[-1] += " " + words[index]
        words[index] = MASK_TEXT
    masked = "".join(" " + w for i, w in enumerate(words) if not (i and w == MASK_TEXT and words[i - 1] == MASK_TEXT))
    return masked, spans


def encode_masked(text: str, vocabulary: Any) -> list[int]:
    """The ids of a text with ``[MASK]`` markers: the pieces between markers encoded
    with a leading space, the markers as the ``[MASK]`` id."""
    ids: list[int] = []
    for k, piece in enumerate(text.split(MASK_TEXT)):
        if k:
            ids.append(vocabulary.command_tokens.mask)
        if piece.strip():
            ids.extend(vocabulary.encode(" " + piece.strip()))
    return ids


def row_length(src_length: int, ratio: float) -> int:
    """Upstream's row length: ``src_length + int(src_length * ratio)``."""
    return src_length + int(src_length * ratio)


def _fit(values: list[int], length: int, fill: int) -> list[int]:
    return values[:length] + [fill] * (length - len(values))


def blank_row(masked_text: str, spans: Optional[Sequence[str]], vocabulary: Any, src_length: int,
              ratio: float) -> dict[str, np.ndarray]:
    """The row of one example (module docstring); ``spans`` None: a test row (Part B
    empty). int32 features of :func:`row_length`, and ``sep = src_length``."""
    ct = vocabulary.command_tokens
    source = _fit(encode_masked(masked_text, vocabulary), src_length, ct.pad)
    tokens, targets, loss = list(source), [0] * src_length, [0] * src_length
    positions, blocks = list(range(src_length)), [0] * src_length
    masks = [i for i, t in enumerate(source) if t == ct.mask]
    for mask_position, span in zip(masks, spans or ()):
        span_ids = vocabulary.encode(" " + span.strip())
        tokens += [ct.sop] + span_ids
        targets += span_ids + [ct.eop]
        loss += [1] * (len(span_ids) + 1)
        positions += [mask_position] * (len(span_ids) + 1)
        blocks += list(range(1, len(span_ids) + 2))
    length = row_length(src_length, ratio)
    row = {"tokens": _fit(tokens, length, ct.pad), "targets": _fit(targets, length, ct.pad),
           "loss_mask": _fit(loss, length, 0), "position_ids": _fit(positions, length, 0),
           "block_position_ids": _fit(blocks, length, 0)}
    out = {k: np.asarray(v, np.int32) for k, v in row.items()}
    out["sep"] = np.int32(src_length)
    return out


def detokenize(text: str) -> str:
    """Upstream's ``blanklm_detokenize`` of the Yahoo files: ``_UNK`` -> ``[UNK]``,
    ``<blank>`` -> ``[MASK]``."""
    return text.replace("_UNK", "[UNK]").replace("<blank>", MASK_TEXT)


_FIXES = (("` `", "``"), ("' '", "''"), ("n ' t", "n't"), ("' s", "'s"), ("' m", "'m"), ("' re", "'re"),
          (". . .", "..."), (" . .", " .."), ("- -", "--"), ("u . s .", "u.s."), ("u . k .", "u.k."),
          ("e . g .", "e.g."))


def fix_tokenization(text: str) -> str:
    """Upstream's ``blanklm_fix_tokenization`` of a filled text (wordpiece decoding
    splits ``n't``, ``...``, ``u.s.`` and the like), rule for rule, in order."""
    for old, new in _FIXES:
        text = text.replace(old, new)
    return text
