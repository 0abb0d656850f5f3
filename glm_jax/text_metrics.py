"""Metrics of generated text: ROUGE with the official GLM post-processing, and BLEU.

ROUGE (spec 4.4; THUDM/GLM ``tasks/seq2seq/evaluate.rouge_metric``) is the
``rouge-score`` package (``rouge1``, ``rouge2``, ``rougeLsum``, Porter stemming),
after the official post-processing of both sides:

* a text is split into sentences on ``[SEP]`` and the sentences joined with
  newlines (what ``rougeLsum`` reads as sentence boundaries);
* every sentence goes through :func:`fix_tokenization` (PTB-style quotes, ``n't``,
  numbers, acronyms and hyphens re-joined; Gigaword only maps ``[UNK]`` to ``UNK``;
  ``cnn_dm_org`` is left alone);
* prediction sentences of at most 4 words are dropped, then sentences whose words
  are more than ``duplicate_rate`` (0.7) contained in the sentences kept before them.
  (Upstream also drops a sentence whose word-F1 with a kept one exceeds 1.0, which
  no F1 does: that rule is a no-op there and is left out here.)

BLEU is ``sacrebleu``'s corpus BLEU-4. The official Yahoo and SQuAD scripts call
``multi-bleu.perl``, which scores the texts as they are tokenised; sacrebleu
tokenises itself (``13a`` by default). For texts already tokenised as
multi-bleu.perl expects, ``tokenize="none"`` gives the same n-gram counts, and the
two agree up to rounding.
"""

from __future__ import annotations

import string
from typing import Callable, Mapping, Sequence

import sacrebleu
from rouge_score import rouge_scorer

ROUGE_KEYS = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeLsum"}


def _is_number(word: str) -> bool:
    return all(ch.isdigit() or ch == "," for ch in word)


def fix_tokenization(text: str, dataset: str = "cnn_dm") -> str:
    """The official detokenisation repairs of one sentence, rule for rule."""
    if dataset == "cnn_dm_org":
        return text
    if dataset == "gigaword":
        return text.replace("[UNK]", "UNK")
    words = text.split()
    out: list[str] = []
    double_open = single_open = False
    joining_dash = False
    i = 0
    while i < len(words):
        word, nxt = words[i], (words[i + 1] if i + 1 < len(words) else None)
        dash_now = False
        if word == '"':
            out.append("''" if double_open else "``")
            double_open = not double_open
            i += 1
        elif word == "'" and out and out[-1].endswith("n") and nxt == "t":
            out[-1] = out[-1][:-1]
            out.append("n't")
            i += 2
        elif word == "'" and nxt in ("s", "d", "ll"):
            out.append("'" + nxt)
            i += 2
        elif word == "'":
            out.append("'" if single_open else "`")
            single_open = not single_open
            i += 1
        elif word == "." and i + 2 < len(words) and words[i + 1] == "." and words[i + 2] == ".":
            out.append("...")
            i += 3
        elif word == "," and out and _is_number(out[-1]) and nxt is not None and _is_number(nxt):
            out[-1] += "," + nxt  # 3 , 000 -> 3,000
            i += 2
        elif word == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt  # 3 . 03 -> 3.03
            i += 2
        elif (word == "." and out and len(out[-1]) == 1 and out[-1].isalpha() and i + 2 < len(words)
              and len(words[i + 1]) == 1 and words[i + 1].isalpha() and words[i + 2] == "."):
            end = i + 3  # U . N . -> U.N.
            while end + 2 < len(words) and len(words[end + 1]) == 1 and words[end + 1].isalpha() \
                    and words[end + 2] == ".":
                end += 2
            out[-1] += "".join(words[i:end])
            i = end
        elif word == "-":
            if nxt == "-":
                out.append("--")
                i += 2
            elif nxt is None or i == 0:
                out.append("-")
                i += 1
            # A substring test, as upstream: "()" counts as punctuation too.
            elif out[-1] not in string.punctuation and nxt[0] not in string.punctuation:
                out[-1] += "-"  # well - known -> well-known
                dash_now = True
                i += 1
            else:
                out.append("-")
                i += 1
        elif joining_dash and out and word[0] not in string.punctuation:
            out[-1] += word
            i += 1
        else:
            out.append(word)
            i += 1
        joining_dash = dash_now
    return " ".join(out)


def drop_repeated(sentences: Sequence[str], duplicate_rate: float) -> list[str]:
    """Sentences whose (lowercased) words are at most ``duplicate_rate`` contained in
    the words of all sentences before them, kept or not (upstream's ``remove_duplicate``)."""
    kept, seen = [], set()
    for sentence in sentences:
        words = set(sentence.lower().split())
        if words and len(words & seen) / len(words) <= duplicate_rate:
            kept.append(sentence)
        seen |= words
    return kept


def prepare_reference(reference: str, dataset: str = "cnn_dm") -> str:
    """A reference as ROUGE reads it: ``[SEP]``-split sentences, repaired, one per line."""
    return "\n".join(fix_tokenization(s, dataset) for s in reference.strip().split("[SEP]"))


def prepare_prediction(prediction: str, dataset: str = "cnn_dm", duplicate_rate: float = 0.7) -> str:
    """A prediction as ROUGE reads it: repaired sentences of more than 4 words,
    repeated ones dropped, one per line."""
    sentences = [fix_tokenization(s, dataset) for s in prediction.strip().split("[SEP]")]
    sentences = [s for s in sentences if len(s.split()) > 4]
    if duplicate_rate and duplicate_rate < 1:
        sentences = drop_repeated(sentences, duplicate_rate)
    return "\n".join(sentences)


def rouge(references: Sequence[str], predictions: Sequence[str], *, dataset: str = "cnn_dm",
          duplicate_rate: float = 0.7, postprocess: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (percent) of ``predictions`` against ``references``;
    with ``postprocess`` (the official protocol) both sides are prepared first."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if not references:
        raise ValueError("no examples to score")
    if postprocess:
        references = [prepare_reference(r, dataset) for r in references]
        predictions = [prepare_prediction(p, dataset, duplicate_rate) for p in predictions]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS.values()), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for reference, prediction in zip(references, predictions):
        # Upstream's argument order: the prediction in score()'s target place. F1 of
        # ROUGE-1/2 does not care; rougeLsum's union LCS does, so it is kept.
        scores = scorer.score(prediction, reference)
        for name, key in ROUGE_KEYS.items():
            totals[name] += scores[key].fmeasure
    return {name: 100.0 * total / len(references) for name, total in totals.items()}


def bleu(references: Sequence[str], predictions: Sequence[str], *, tokenize: str = "13a") -> dict[str, float]:
    """Corpus BLEU-4 (sacrebleu, one reference per example)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize).score)}


def seqio_metric(fn: Callable[..., Mapping[str, float]], **kwargs) -> Callable[[Sequence[str], Sequence[str]], dict]:
    """``fn`` as a ``seqio.Evaluator`` metric: ``(targets, predictions) -> {name: value}``."""

    def metric(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
        return dict(fn(targets, predictions, **kwargs))

    metric.__name__ = fn.__name__
    return metric
