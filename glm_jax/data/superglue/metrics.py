"""SuperGLUE metrics and the benchmark average (spec 4.2 and 5.1).

All scores are percentages (0-100), as the paper reports them. The plain
functions take python lists; the ``*_metric`` functions have seqio's
``(targets, predictions) -> {name: value}`` signature.

* BoolQ, COPA, RTE, WiC, WSC: accuracy.
* CB: accuracy and macro-F1 (mean of the per-class F1 over the classes seen).
* MultiRC: F1a, the binary F1 over every answer option, and exact match, the
  share of questions whose answer options are *all* right.
* ReCoRD: token F1 and exact match after SQuAD normalisation, each the max over
  a query's gold answers, then averaged over queries.
* The SuperGLUE average: tasks with two metrics are averaged first, then the
  mean is taken over the tasks.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Hashable, Mapping, Sequence, Union

import numpy as np


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        raise ValueError("no examples to score")


def accuracy(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    _check_lengths(targets, predictions)
    return 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 0 when the class never occurs nor is predicted."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def macro_f1(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    """Unweighted mean of the per-class F1 over the classes in targets or predictions
    (scikit-learn's ``f1_score(average="macro")``, which the official code used)."""
    _check_lengths(targets, predictions)
    classes = sorted(set(targets) | set(predictions), key=repr)
    scores = []
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(targets, predictions))
        fp = sum(t != c and p == c for t, p in zip(targets, predictions))
        fn = sum(t == c and p != c for t, p in zip(targets, predictions))
        scores.append(_f1(tp, fp, fn))
    return 100.0 * float(np.mean(scores))


def binary_f1(targets: Sequence[int], predictions: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class."""
    _check_lengths(targets, predictions)
    tp = sum(t == positive and p == positive for t, p in zip(targets, predictions))
    fp = sum(t != positive and p == positive for t, p in zip(targets, predictions))
    fn = sum(t == positive and p != positive for t, p in zip(targets, predictions))
    return 100.0 * _f1(tp, fp, fn)


def multirc_scores(groups: Sequence[Hashable], targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """MultiRC F1a over all answer options, and exact match per question.

    Args:
      groups: the question id of each answer option (``readers.Example.group``).
      targets, predictions: 0/1 per answer option.
    """
    _check_lengths(targets, predictions)
    if len(groups) != len(targets):
        raise ValueError(f"{len(groups)} groups but {len(targets)} targets")
    all_right: dict[Hashable, bool] = {}
    for g, t, p in zip(groups, targets, predictions):
        all_right[g] = all_right.get(g, True) and t == p
    return {
        "f1a": binary_f1(targets, predictions),
        "em": 100.0 * float(np.mean(list(all_right.values()))),
    }


# --------------------------------------------------------------------------- ReCoRD

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squash spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of the normalised strings, in [0, 1]."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def record_scores(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """ReCoRD F1 and EM: per query the max over its gold answers, then the mean."""
    _check_lengths(answers, predictions)
    f1s, ems = [], []
    for golds, pred in zip(answers, predictions):
        if not golds:
            raise ValueError("a ReCoRD query without gold answers cannot be scored")
        f1s.append(max(token_f1(pred, g) for g in golds))
        ems.append(max(exact_match(pred, g) for g in golds))
    return {"f1": 100.0 * float(np.mean(f1s)), "em": 100.0 * float(np.mean(ems))}


# --------------------------------------------------------------------------- average

# The tasks, in the order of the paper's Table 1.
PAPER_TASKS: tuple[str, ...] = ("ReCoRD", "COPA", "WSC", "RTE", "BoolQ", "WiC", "CB", "MultiRC")

Score = Union[float, Sequence[float]]


def superglue_average(scores: Mapping[str, Score]) -> float:
    """The paper's SuperGLUE average: a task's metrics are averaged first (CB
    F1/Acc, MultiRC F1a/EM, ReCoRD F1/Acc), then the mean over the tasks."""
    missing = [t for t in PAPER_TASKS if t not in scores]
    if missing:
        raise ValueError(f"missing SuperGLUE tasks {missing}")
    per_task = [float(np.mean(np.atleast_1d(np.asarray(scores[t], float)))) for t in PAPER_TASKS]
    return float(np.mean(per_task))


# --------------------------------------------------------------------------- seqio metric fns


def accuracy_metric(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
    return {"accuracy": accuracy(targets, predictions)}


def cb_metric(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
    return {"accuracy": accuracy(targets, predictions), "f1_macro": macro_f1(targets, predictions)}


def multirc_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[int]) -> dict[str, float]:
    """``targets``: ``{"group": question id, "label": 0/1}`` per answer option."""
    scores = multirc_scores([t["group"] for t in targets], [t["label"] for t in targets], predictions)
    return {"f1a": scores["f1a"], "exact_match": scores["em"]}


def record_metric(targets: Sequence[Union[Mapping[str, Any], Sequence[str]]], predictions: Sequence[str]
                  ) -> dict[str, float]:
    """``targets``: the gold answers per query, or ``{"answers": [...]}``."""
    answers = [t["answers"] if isinstance(t, Mapping) else t for t in targets]
    scores = record_scores(answers, predictions)
    return {"f1": scores["f1"], "exact_match": scores["em"]}


METRIC_FNS: Mapping[str, Any] = {
    "BoolQ": accuracy_metric,
    "CB": cb_metric,
    "COPA": accuracy_metric,
    "MultiRC": multirc_metric,
    "ReCoRD": record_metric,
    "RTE": accuracy_metric,
    "WiC": accuracy_metric,
    "WSC": accuracy_metric,
}
