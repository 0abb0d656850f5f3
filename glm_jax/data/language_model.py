"""Zero-shot language modelling inputs (spec 4.5): LAMBADA rows and perplexity windows.

The rows are the official ``tasks/language_model/dataset.py`` layouts, built by
``tasks/data_utils.build_input_from_ids`` with ``add_cls`` and a ``[sop]`` piece:

    tokens             [CLS] prompt [M] ([eos])  | [sop] answer[:-1]
    targets              0    0 ..   0   ( 0 )   | answer
    loss_mask            0    0 ..   0   ( 0 )   | 1 ... 1
    position_ids         0    1 ..   m   ( . )   | m ... m            (m: the mask's position)
    block_position_ids   0    0 ..   0   ( 0 )   | 1 2 ... len(answer)
    sep = len(Part A); padding: eos ids, every other feature 0.

``[M]`` is ``[gMASK]`` when the vocabulary has it (the official ``--task-mask``),
else ``[MASK]``.

* LAMBADA (``LambadaDataset``, strict): the answer is the tokens of ``" " + last
  word``, the context the text before it (stripped); Part A ends with ``[eos]``; the
  context is cut from the left to fit. Unidirectional: Part A keeps only the
  context's first token, the rest of the context moves into Part B (so it is read
  left to right) and the loss stays on the answer's tokens. An example is correct
  when every answer token is the argmax. (A departure, unidirectional only: a
  passage too long for the row loses context tokens from the left of Part B; the
  official code cuts its two-token Part A instead and then fails on the missing
  blank.)
* Perplexity (``LMDataset``): windows of ``seq_length - 1`` tokens every ``stride``
  tokens; the first window's prompt is its first token, a later window's prompt is
  its first ``window - stride`` tokens (the part the previous window scored), so
  every token after the first is scored exactly once. No ``[eos]``. Unidirectional:
  the prompt is always one token and the loss covers only a later window's last
  ``stride`` tokens. ``ppl = exp(NLL / (tokens - 1))``; the word-level "adjusted"
  ppl scales the exponent by ``(tokens - 1) / (words - 1)`` (Wikitext-103).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from glm_jax.command_tokens import CommandTokens
from glm_jax.data.text_files import numbered_lines

PathLike = Union[str, Path]
Row = dict[str, np.ndarray]
FEATURES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")


def mask_id(command_tokens: CommandTokens) -> int:
    """``[gMASK]`` when the vocabulary has task masks, else ``[MASK]`` (the official
    ``--task-mask`` choice)."""
    return command_tokens.gmask if command_tokens.gmask is not None else command_tokens.mask


def build_row(prompt: Sequence[int], answer: Sequence[int], length: int, command_tokens: CommandTokens, *,
              add_eos: bool) -> Row:
    """One row: ``[CLS] prompt ([eos]) [sop] answer[:-1]``, scored on ``answer``.

    ``prompt`` must contain the blank (its last occurrence gives Part B's position).
    Returns int32 ``[length]`` features and a scalar ``sep``.

    Raises:
      ValueError: the row does not fit ``length``, or the prompt has no blank.
    """
    ct = command_tokens
    part_a = [ct.cls, *prompt] + ([ct.eos] if add_eos else [])
    blanks = [i for i, token in enumerate(part_a) if token in ct.mask_ids()]
    if not blanks:
        raise ValueError("the prompt has no [MASK]/[gMASK] for Part B to fill")
    if not answer:
        raise ValueError("nothing to score: the answer is empty")
    total = len(part_a) + len(answer)
    if total > length:
        raise ValueError(f"the row needs {total} tokens, more than the sequence length {length}")
    position = blanks[-1]
    tokens = part_a + [ct.sop, *answer[:-1]]
    row = {
        "tokens": tokens,
        "targets": [0] * len(part_a) + list(answer),
        "loss_mask": [0] * len(part_a) + [1] * len(answer),
        "position_ids": list(range(len(part_a))) + [position] * len(answer),
        "block_position_ids": [0] * len(part_a) + list(range(1, len(answer) + 1)),
    }
    pad = length - len(tokens)
    out = {k: np.asarray(v + [ct.eos if k == "tokens" else 0] * pad, np.int32) for k, v in row.items()}
    out["sep"] = np.int32(len(part_a))
    return out


# ----------------------------------------------------------------------- LAMBADA


def lambada_split(text: str, vocabulary: Any) -> tuple[list[int], list[int]]:
    """``(context ids, answer ids)`` of a LAMBADA passage: the answer is ``" " +
    last word`` encoded alone, the context the text before the word, stripped."""
    words = text.split()
    if not words:
        raise ValueError("an empty passage has no last word")
    last = words[-1]
    start = text.rfind(last)
    return list(vocabulary.encode(text[:start].strip())), list(vocabulary.encode(" " + last))


def lambada_row(context: Sequence[int], answer: Sequence[int], length: int, command_tokens: CommandTokens, *,
                unidirectional: bool = False) -> Row:
    """The LAMBADA row of one passage (module docstring), the context cut from the
    left to fit ``length``; the loss covers exactly the answer's tokens."""
    context, answer = list(context), list(answer)
    if unidirectional:
        prompt, scored = context[:1], context[1:] + answer
    else:
        prompt, scored = context, answer
    prompt = prompt + [mask_id(command_tokens)]
    specials = 2  # [CLS] and [eos]
    overflow = len(prompt) + len(scored) + specials - length
    if overflow > 0:
        if unidirectional:  # the context lives in Part B here: cut it there
            scored = scored[overflow:]
        else:
            prompt = prompt[overflow:]
    row = build_row(prompt, scored, length, command_tokens, add_eos=True)
    if unidirectional:
        end = int(row["sep"]) + len(scored)
        row["loss_mask"][: end - len(answer)] = 0
    return row


def read_lambada(path: PathLike) -> list[str]:
    """The passages of a LAMBADA JSON-lines file (a ``text`` field per line, the
    official format). Errors name the file and line."""
    path = Path(path)
    texts = []
    for number, line in numbered_lines(path):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: no 'text' string field")
        if not record["text"].split():
            raise ValueError(f"{path}:{number}: the text is empty")
        texts.append(record["text"])
    if not texts:
        raise ValueError(f"{path}: no passages")
    return texts


def read_lambada_tfds(split: str = "test", tfds_data_dir: Optional[str] = None) -> list[str]:
    """The passages of TFDS ``lambada`` (prepared already; nothing is downloaded).

    TFDS holds the original release (``lambada_test_plain_text.txt``: tokenised,
    e.g. ``don 't``), not the detokenised OpenAI JSON lines that the official GLM
    scores (its README's 72.35): accuracies on the two are not comparable.
    """
    # Imported here: TFDS is slow to import and only this reader needs it.
    import tensorflow_datasets as tfds

    builder = tfds.builder("lambada", data_dir=tfds_data_dir)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (AssertionError, ValueError, KeyError) as e:
        raise FileNotFoundError(
            f"TFDS lambada has no prepared {split!r} split in {builder.data_dir!r} ({e}). Prepare it with network "
            "access, or pass --data-file with the LAMBADA JSON lines") from None
    texts = [row["passage"].decode("utf-8").strip() for row in tfds.as_numpy(ds)]
    return [t for t in texts if t.split()]


# -------------------------------------------------------------------- perplexity


def num_windows(num_tokens: int, seq_length: int, stride: int) -> int:
    """Windows of a document of ``num_tokens`` tokens (``LMDataset``)."""
    window = seq_length - 1
    return max(math.ceil(max(num_tokens - window, 0) / stride) + 1, 1)


def perplexity_rows(tokens: Sequence[int], seq_length: int, stride: int, command_tokens: CommandTokens, *,
                    unidirectional: bool = False) -> Iterator[Row]:
    """The scoring rows of one document (module docstring); together they score
    every token after the first exactly once."""
    window = seq_length - 1
    if not 1 <= stride <= window:
        raise ValueError(f"the stride must be in 1..{window} (seq_length - 1), got {stride}")
    tokens = list(tokens)
    for index in range(num_windows(len(tokens), seq_length, stride)):
        piece = tokens[index * stride: index * stride + window]
        if index == 0 or unidirectional:
            prompt, text = piece[:1], piece[1:]
        else:
            prompt, text = piece[: window - stride], piece[window - stride:]
        if not text:
            continue  # a one-token document scores nothing
        row = build_row(prompt + [mask_id(command_tokens)], text, seq_length + 1, command_tokens, add_eos=False)
        if index and unidirectional:
            # Only the row's last `stride` places score: the tokens the previous
            # window did not, fewer in a short (padded) last window.
            row["loss_mask"][:-stride] = 0
        yield row


def perplexities(total_nll: float, num_tokens: int, num_words: int) -> dict[str, float]:
    """The official figures: mean NLL per token after the first, its ppl, and the
    word-level "adjusted" ppl (exponents capped at 20 as the official script does)."""
    loss = total_nll / max(num_tokens - 1, 1)
    ratio = (num_tokens - 1) / max(num_words - 1, 1)
    return {"loss": loss, "ppl": math.exp(min(20.0, loss)), "adjusted_ppl": math.exp(min(20.0, loss * ratio)),
            "token_ratio": ratio}


def wikitext_detokenize(text: str) -> str:
    """The official Wikitext-103 detokeniser (``detokenizer.wikitext_detokenizer``),
    rule for rule, the one literal-string rule that matches nothing in practice
    (``/' [0-9]/``) included."""
    for old, new in (("s '", "s'"),):
        text = text.replace(old, new)
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for old, new in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                     (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(old, new)
    for pattern, replacement in ((r"\(\s*([^\)]*?)\s*\)", r"(\1)"), (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
                                 (r"{\s*([^}]*?)\s*}", r"{\1}"), (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
                                 (r"'\s*([^']*?)\s*'", r"'\1'")):
        text = re.sub(pattern, replacement, text)
    for old, new in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \u00b0 ", "\u00b0"),
                     (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(old, new)
    return text


def read_wikitext(path: PathLike) -> tuple[str, int]:
    """A raw Wikitext-103 token file (``wiki.test.tokens``) as one detokenised text,
    and its count of original (space-separated) tokens, for the adjusted ppl."""
    path = Path(path)
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    if not raw.strip():
        raise ValueError(f"{path}: empty")
    return wikitext_detokenize(raw), len(raw.strip().split(" "))


def read_documents(path: PathLike) -> tuple[list[str], int]:
    """A text file, one document per line (the official ``build_lm_dataset``), and
    its count of space-separated words, counted as the official script does (a
    blank line counts one)."""
    path = Path(path)
    documents, words = [], 0
    for _, line in numbered_lines(path):
        words += len(line.split(" "))
        if line:
            documents.append(line)
    if not documents:
        raise ValueError(f"{path}: no documents")
    return documents, words
