"""SuperGLUE metrics against hand-computed values, and the paper's average."""

from __future__ import annotations

import pytest

from glm_jax.data.superglue import metrics


def test_accuracy():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(50.0)
    assert metrics.accuracy_metric([True, False], [True, False]) == {"accuracy": 100.0}
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        metrics.accuracy([1, 0, 1], [1, 0])


def test_cb_macro_f1():
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 1 fp 2 fn 0 -> 1/2; class 2: tp 0 fn 1 -> 0.
    scores = metrics.cb_metric([0, 0, 1, 2], [0, 1, 1, 1])
    assert scores["f1_macro"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    assert scores["accuracy"] == pytest.approx(50.0)
    # A class never predicted nor present does not count; a perfect run is 100.
    assert metrics.macro_f1([0, 1], [0, 1]) == pytest.approx(100.0)


def test_multirc_f1a_and_grouped_exact_match():
    groups = ["q1", "q2", "q1", "q3", "q1", "q2"]
    targets = [1, 0, 0, 0, 1, 1]
    predictions = [1, 0, 0, 1, 0, 1]
    # F1a over all options: tp 2 (0, 5), fp 1 (3), fn 1 (4) -> 4/6.
    # EM per question: q1 misses option 4, q2 is all right, q3 misses option 3 -> 1/3.
    scores = metrics.multirc_scores(groups, targets, predictions)
    assert scores["f1a"] == pytest.approx(100 * 4 / 6)
    assert scores["em"] == pytest.approx(100 / 3)
    seqio = metrics.multirc_metric([{"group": g, "label": t} for g, t in zip(groups, targets)], predictions)
    assert seqio == {"f1a": pytest.approx(100 * 4 / 6), "exact_match": pytest.approx(100 / 3)}
    # Accuracy over options would be 4/6; EM without grouping would be 4/6 too: grouping matters.
    assert metrics.multirc_scores(list(range(6)), targets, predictions)["em"] == pytest.approx(100 * 4 / 6)


def test_record_normalisation_and_max_over_answers():
    assert metrics.normalize_answer("The  Cat's, a dog!") == "cats dog"
    assert metrics.token_f1("Barack Obama", "Obama") == pytest.approx(2 / 3)
    # Query 1: "Obama" matches its second gold answer exactly (EM 1, F1 1), though the
    # first ("Barack Obama") gives F1 2/3 only. Query 2: "House of Lords" vs "the White
    # House" -> tokens {house, of, lords} vs {white, house}: p 1/3, r 1/2, F1 0.4, EM 0.
    answers = [["Barack Obama", "Obama"], ["the White House"]]
    scores = metrics.record_scores(answers, ["obama.", "House of Lords"])
    assert scores["f1"] == pytest.approx(100 * (1 + 0.4) / 2)
    assert scores["em"] == pytest.approx(50.0)
    seqio = metrics.record_metric([{"answers": a} for a in answers], ["obama.", "House of Lords"])
    assert seqio == {"f1": pytest.approx(70.0), "exact_match": pytest.approx(50.0)}
    with pytest.raises(ValueError, match="without gold answers"):
        metrics.record_scores([[]], ["x"])


# The paper's Table 1 cells (spec 5.1); two-metric tasks are (first, second) as printed.
GLM_LARGE = {"ReCoRD": (81.7, 81.1), "COPA": 76.0, "WSC": 81.7, "RTE": 74.0, "BoolQ": 82.1, "WiC": 68.5,
             "CB": (96.1, 94.6), "MultiRC": (77.1, 36.3)}
BERT_LARGE = {"ReCoRD": (76.3, 75.6), "COPA": 69.0, "WSC": 64.4, "RTE": 73.6, "BoolQ": 80.1, "WiC": 71.0,
              "CB": (94.8, 92.9), "MultiRC": (71.9, 24.1)}


def test_superglue_average_reproduces_the_paper():
    assert metrics.superglue_average(GLM_LARGE) == pytest.approx(77.0, abs=0.05)
    assert metrics.superglue_average(BERT_LARGE) == pytest.approx(72.0, abs=0.05)
    # Averaging the 11 numbers flat gives 77.2: outside the tolerance, so the order matters.
    flat = [x for v in GLM_LARGE.values() for x in (v if isinstance(v, tuple) else (v,))]
    assert sum(flat) / len(flat) == pytest.approx(77.2, abs=0.01)
    with pytest.raises(ValueError, match="missing SuperGLUE tasks"):
        metrics.superglue_average({k: v for k, v in GLM_LARGE.items() if k != "WiC"})


def test_metric_fns_cover_every_task():
    assert set(metrics.METRIC_FNS) == set(metrics.PAPER_TASKS)
