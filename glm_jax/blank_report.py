"""What a model learned, in numbers a newcomer can read: held-out blanks.

``glm-jax eval --task blanks`` takes a fixed sample of held-out sentences (the
embedded corpus' validation split, or a text file), blanks one word in each, and
asks the model for the blank as GLM does it: Part A is ``[CLS] sentence-with-[MASK]
[eos]``, Part B starts with ``[sop]``, and the distribution the model gives there is
its guess for the word's first token. Beside it, a word-frequency baseline: the
tokens of the training text ranked by count, the guess a model that ignores the
context would make. The report shows a few sentences with the model's top
candidates and the rank of the true word in both, then top-1 and top-5 accuracy of
both over the whole sample. Both rank word tokens only (ids that decode to letters),
so punctuation and ``[eop]`` are not guesses.

The sample is deterministic: sentences of 6 to 40 words, in file order, the blanked
word the middle one made of letters whose encoding (with its leading space, a
token that is only that space aside) is one token. Nothing is cherry-picked: the first sentences shown are the first of the
sample.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.model import GLM, ModelConfig

WORD = re.compile(r"^[A-Za-z]+$")


@dataclasses.dataclass(frozen=True)
class Blank:
    """One held-out sentence with one word blanked."""

    before: str
    answer: str
    after: str
    answer_id: int

    def shown(self, width: int = 60) -> str:
        """The sentence around its blank (``___``), cut to ``width`` characters."""
        before, after = self.before, self.after
        room = width - 5  # the blank and its spaces
        if len(before) + len(after) > room:
            keep_before = min(len(before), max(room // 2, room - len(after)))
            if len(before) > keep_before:
                before = "..." + before[len(before) - keep_before + 3:]
            keep_after = room - len(before)
            if len(after) > keep_after:
                after = after[: keep_after - 3] + "..."
        return f"{before} ___ {after}".strip()


def sentences(texts: Iterable[str]) -> Iterable[str]:
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            # Markup (underlines, tables) is not a sentence to guess a word of.
            if 6 <= len(sentence.split()) <= 40 and not re.search(r"\*\*|==|--|\|", sentence):
                yield sentence


def word_ids(word: str, vocabulary: Any) -> list[int]:
    """The ids of ``" " + word``, without a leading token that is only the space
    (sentencepiece models may encode the space apart: ``▁`` then ``word``)."""
    ids = list(vocabulary.encode(" " + word))
    if len(ids) > 1 and not vocabulary.decode(ids[:1]).strip():
        ids = ids[1:]
    return ids


def held_out_blanks(texts: Iterable[str], vocabulary: Any, count: int) -> list[Blank]:
    """The first ``count`` sentences of ``texts`` with a blankable word (module docstring)."""
    out = []
    for sentence in sentences(texts):
        words = sentence.split()
        middle = len(words) // 2
        for index in sorted(range(1, len(words) - 1), key=lambda i: (abs(i - middle), i)):
            ids = word_ids(words[index], vocabulary)
            if WORD.match(words[index]) and len(ids) == 1:
                out.append(Blank(" ".join(words[:index]), words[index], " ".join(words[index + 1:]), ids[0]))
                break
        if len(out) == count:
            break
    return out


def token_counts(texts: Iterable[str], vocabulary: Any) -> np.ndarray:
    """``[vocab_size]`` counts of each token id in ``texts`` (the baseline's ranking)."""
    counts = np.zeros(vocabulary.vocab_size, np.int64)
    for text in texts:
        np.add.at(counts, np.asarray(vocabulary.encode(text), np.int64), 1)
    return counts


def blank_rows(blanks: Sequence[Blank], vocabulary: Any) -> dict[str, np.ndarray]:
    """``[N, L]`` rows ``[CLS] before [MASK] after [eos] [sop]`` (right-padded after the
    ``[sop]``, where causal attention keeps the padding out of its prediction), with
    ``sep`` = the context's length and ``query`` = the ``[sop]`` index."""
    ct = vocabulary.command_tokens
    contexts = [[ct.cls, *vocabulary.encode(b.before), ct.mask, *vocabulary.encode(" " + b.after), ct.eos]
                for b in blanks]
    length = max(len(c) for c in contexts) + 1
    rows = {k: np.zeros((len(blanks), length), np.int32) for k in ("tokens", "position_ids", "block_position_ids")}
    rows["tokens"][:] = ct.pad
    sep = np.zeros(len(blanks), np.int32)
    for i, context in enumerate(contexts):
        n = len(context)
        rows["tokens"][i, : n + 1] = context + [ct.sop]
        rows["position_ids"][i, :n] = np.arange(n)
        rows["position_ids"][i, n:] = context.index(ct.mask)
        rows["block_position_ids"][i, n] = 1
        sep[i] = n
    rows["sep"] = sep
    return rows


def blank_probabilities(params: Any, config: ModelConfig, rows: dict[str, np.ndarray], batch_size: int = 32
                        ) -> np.ndarray:
    """``[N, vocab]`` the model's distribution at each row's ``[sop]`` (float32)."""
    model = GLM(config)

    @jax.jit
    def probs(params, tokens, position_ids, block_position_ids, sep):
        logits = model.apply({"params": params}, tokens, position_ids, block_position_ids, sep=sep,
                             deterministic=True)
        at_sop = jnp.take_along_axis(logits, sep[:, None, None], axis=1)[:, 0]
        return jax.nn.softmax(at_sop.astype(jnp.float32), axis=-1)

    out = []
    for start in range(0, len(rows["sep"]), batch_size):
        part = {k: jnp.asarray(v[start: start + batch_size]) for k, v in rows.items()}
        out.append(np.asarray(probs(params, part["tokens"], part["position_ids"], part["block_position_ids"],
                                    part["sep"])))
    return np.concatenate(out)


def word_tokens(vocabulary: Any, size: int) -> np.ndarray:
    """``[size]`` bool: ids that decode to a word of letters (the candidates ranked)."""
    mask = np.zeros(size, bool)
    for i in range(min(size, vocabulary.vocab_size)):
        mask[i] = bool(WORD.match(vocabulary.decode([i]).strip()))
    return mask


def ranks(scores: np.ndarray, answers: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """1-based rank of each answer among its row's scores over the ``candidates``
    ids (ties: the answer ranks last)."""
    scores = np.where(candidates[None, :], scores, -np.inf)
    answer_scores = scores[np.arange(len(answers)), answers]
    return (scores >= answer_scores[:, None]).sum(axis=1)


def report(blanks: Sequence[Blank], probabilities: np.ndarray, counts: np.ndarray, vocabulary: Any,
           shown: int = 5) -> tuple[str, dict[str, float]]:
    """The text of the report and its figures (percent)."""
    answers = np.asarray([b.answer_id for b in blanks])
    words = word_tokens(vocabulary, probabilities.shape[1])
    model_ranks = ranks(probabilities, answers, words)
    counts = np.pad(counts, (0, probabilities.shape[1] - len(counts)))  # the model's padded vocabulary
    frequency = np.broadcast_to(counts.astype(np.float64), probabilities.shape)
    baseline_ranks = ranks(frequency, answers, words)
    lines = [f"held-out blanks: {len(blanks)} sentences, one word blanked in each (the first {shown} shown)",
             f"{'sentence':60}  {'answer':10}  {'model: top 3 (probability)':42}  rank  baseline rank"]
    for blank, row, rank, base in list(zip(blanks, probabilities, model_ranks, baseline_ranks))[:shown]:
        top = np.argsort(-np.where(words, row, -1.0))[:3]
        guesses = ", ".join(f"{vocabulary.decode([int(t)]).strip()} ({row[t]:.2f})" for t in top)
        lines.append(f"{blank.shown():60}  {blank.answer:10}  {guesses:42}  {rank:4d}  {base:13d}")
    figures = {"model_top1": 100.0 * float(np.mean(model_ranks == 1)),
               "model_top5": 100.0 * float(np.mean(model_ranks <= 5)),
               "baseline_top1": 100.0 * float(np.mean(baseline_ranks == 1)),
               "baseline_top5": 100.0 * float(np.mean(baseline_ranks <= 5))}
    lines.append(f"infilling accuracy over {len(blanks)} blanks: model top-1 {figures['model_top1']:.1f}%, "
                 f"top-5 {figures['model_top5']:.1f}%; word-frequency baseline top-1 "
                 f"{figures['baseline_top1']:.1f}%, top-5 {figures['baseline_top5']:.1f}%")
    return "\n".join(lines), figures


def run(params: Any, config: ModelConfig, vocabulary: Any, held_out: Iterable[str], training: Iterable[str], *,
        count: int = 200, print_fn: Callable[[str], None] = print, batch_size: int = 32,
        shown: Optional[int] = 5) -> dict[str, float]:
    """Print the report for ``count`` blanks of ``held_out``, the baseline counted on
    ``training``; returns the figures."""
    blanks = held_out_blanks(held_out, vocabulary, count)
    if not blanks:
        raise ValueError("no held-out sentence of 6-40 words with a one-token word to blank")
    probabilities = blank_probabilities(params, config, blank_rows(blanks, vocabulary), batch_size)
    text, figures = report(blanks, probabilities, token_counts(training, vocabulary), vocabulary, shown or 0)
    print_fn(text)
    return figures
