"""``evaluate`` through seqio.Evaluator: a fake predict_fn with known choices, exact
metric values by hand (MultiRC exact match per question, ReCoRD max over answers),
and the predictions file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pytest

from glm_jax.data import corpus
from glm_jax.data.superglue import evaluation, registry
from glm_jax.data.embedded_vocab import EmbeddedVocabulary
from test_superglue_inputs import DATA, write

PREFIX = "evaltest"


def _pair(task: str, labels: list[str]) -> list[dict]:
    return [{**DATA[task][0], "idx": i, "label": label} for i, label in enumerate(labels)]


def _multirc(idx: int, questions: list[list[int]]) -> dict:
    qs = [{"question": f"Question {q}?", "idx": q, "answers": [
        {"text": f"answer {q}{a}", "idx": a, "label": label} for a, label in enumerate(labels)]}
        for q, labels in enumerate(questions)]
    return {"idx": idx, "passage": {"text": "Tom ran home.", "questions": qs}}


PASSAGE = "Barack Obama met Vladimir Putin in Paris."
SPANS = {"Barack Obama": (0, 11), "Obama": (7, 11), "Vladimir Putin": (17, 30), "Putin": (26, 30)}

VALIDATION = {
    "RTE": _pair("RTE", ["entailment", "not_entailment", "entailment", "not_entailment"]),
    "CB": _pair("CB", ["contradiction", "entailment", "neutral", "entailment"]),
    "BoolQ": _pair("BoolQ", [True, False]),
    "WiC": _pair("WiC", [False, True]),
    "COPA": [{**DATA["COPA"][0], "idx": 0, "label": 0}, {**DATA["COPA"][0], "idx": 1, "label": 1}],
    "WSC": DATA["WSC"] + [{**DATA["WSC"][1], "idx": 2, "candidates": ["Mark"]}],
    "MultiRC": [_multirc(0, [[1, 0], [1]]), _multirc(1, [[1, 0, 1]])],
    "ReCoRD": [{"idx": 0, "passage": {"text": PASSAGE, "entities": [
        {"start": s, "end": e} for s, e in SPANS.values()]}, "qas": [
        {"query": "@placeholder spoke first.", "idx": 1,
         "answers": [{"start": 0, "end": 11, "text": "Barack Obama"}, {"start": 7, "end": 11, "text": "Obama"}]},
        {"query": "@placeholder listened.", "idx": 2,
         "answers": [{"start": 17, "end": 30, "text": "Vladimir Putin"}]}]}],
}

# guid -> choice (label index, or candidate index for COPA, WSC, ReCoRD).
CHOICES = {
    # gold 1 0 1 0 -> right, wrong, right, wrong: 50.
    "RTE": {"validation-0": 1, "validation-1": 1, "validation-2": 1, "validation-3": 1},
    # gold 0 1 2 1, predicted 0 1 1 0: accuracy 50; F1 per class 2/3, 1/2, 0.
    "CB": {"validation-0": 0, "validation-1": 1, "validation-2": 1, "validation-3": 0},
    "BoolQ": {"validation-0": 1, "validation-1": 1},  # gold 1 0
    "WiC": {"validation-0": 0, "validation-1": 0},  # gold 0 1
    "COPA": {"validation-0": 0, "validation-1": 0},  # gold 0 1
    # True -> candidate 0 (right); False with one candidate: 0 is True (wrong);
    # False with candidates (Pete, Mark): 1 is False (right).
    "WSC": {"validation-0": 0, "validation-1": 0, "validation-2": 1},
    # Gold per option (p0 q0: 1 0, p0 q1: 1, p1 q0: 1 0 1) vs predicted 1 0 | 0 | 1 1 1.
    "MultiRC": {"validation-0-q0-a0": 1, "validation-0-q0-a1": 0, "validation-0-q1-a0": 0,
                "validation-1-q0-a0": 1, "validation-1-q0-a1": 1, "validation-1-q0-a2": 1},
    # Candidate strings; mapped to indices in the test.
    "ReCoRD": {"validation-1": "Obama", "validation-2": "Putin"},
}

EXPECTED = {
    "RTE": {"accuracy": 50.0},
    "CB": {"accuracy": 50.0, "f1_macro": 100 * (2 / 3 + 1 / 2 + 0) / 3},
    "BoolQ": {"accuracy": 50.0},
    "WiC": {"accuracy": 50.0},
    "COPA": {"accuracy": 50.0},
    "WSC": {"accuracy": 100 * 2 / 3},
    # F1a: tp 3, fp 1 (p1 a1), fn 1 (p0 q1) -> 6/8. EM per question: only p0 q0 is all right.
    "MultiRC": {"f1a": 75.0, "exact_match": 100 / 3},
    # "Obama" matches the 2nd gold answer exactly (vs 2/3 F1 with "Barack Obama");
    # "Putin" vs "Vladimir Putin": F1 2/3, EM 0.
    "ReCoRD": {"f1": 100 * (1 + 2 / 3) / 2, "exact_match": 50.0},
}


@pytest.fixture(scope="module")
def registered(tmp_path_factory, corpus_dir) -> Iterator[list[str]]:
    root = tmp_path_factory.mktemp("superglue_eval")
    for task, records in VALIDATION.items():
        write(root, task, "validation", records)
        write(root, task, "test", DATA[task])
    names = registry.register_superglue_tasks(vocabulary=EmbeddedVocabulary(corpus_dir), data_dir=str(root),
                                              prefix=PREFIX, pattern_ids=[])
    yield names
    registry.unregister(names)


def predict_by_guid(name: str, split: str, choices: Mapping[str, object]):
    """A predict_fn answering from ``choices`` (guid -> index or ReCoRD entity)."""
    examples = registry.task_info(name).examples(split)

    def predict_fn(batches) -> dict[int, int]:
        out = {}
        for batch in batches:
            assert batch["example_id"].shape == (4,) and batch["tokens"].dtype == np.int32
            for eid in batch["example_id"]:
                if eid < 0:
                    continue
                ex = examples[eid]
                choice = choices[ex.guid]
                out[int(eid)] = ex.candidates.index(choice) if isinstance(choice, str) else choice
        return out

    return predict_fn


@pytest.mark.parametrize("task", list(VALIDATION))
def test_metrics_by_hand(registered, task: str, tmp_path: Path):
    name = registry.task_name(task, prefix=PREFIX)
    scores = evaluation.evaluate(name, "validation", predict_by_guid(name, "validation", CHOICES[task]),
                                 output_dir=str(tmp_path), batch_size=4)
    assert scores == pytest.approx(EXPECTED[task], abs=1e-9)
    lines = [json.loads(line) for line in (tmp_path / f"{name}_validation_predictions.jsonl").read_text().splitlines()]
    examples = registry.task_info(name).examples("validation")
    assert [(line["example_id"], line["guid"]) for line in lines] == [(i, e.guid) for i, e in enumerate(examples)]
    if task == "ReCoRD":
        assert [(line["prediction"], line["target"]) for line in lines] == [
            ("Obama", {"answers": ["Barack Obama", "Obama"]}), ("Putin", {"answers": ["Vladimir Putin"]})]
    if task == "WSC":
        assert [(line["choice"], line["prediction"], line["target"]) for line in lines] == [
            (0, True, True), (0, True, False), (1, False, False)]
    if task == "MultiRC":
        assert lines[2]["target"] == {"group": "validation-0-q1", "label": 1} and lines[2]["prediction"] == 0


def test_evaluator_is_reused_and_predictions_are_not(registered):
    name = registry.task_name("RTE", prefix=PREFIX)
    first = evaluation.evaluate(name, "validation", predict_by_guid(name, "validation", CHOICES["RTE"]),
                                batch_size=4)
    cached = evaluation._EVALUATORS[(name, "validation", None)]
    gold = {f"validation-{i}": label for i, label in enumerate([1, 0, 1, 0])}
    second = evaluation.evaluate(name, "validation", predict_by_guid(name, "validation", gold), batch_size=4)
    assert (first, second) == ({"accuracy": 50.0}, {"accuracy": 100.0})
    assert evaluation._EVALUATORS[(name, "validation", None)] is cached


def test_test_split_writes_predictions_only(registered, tmp_path: Path):
    name = registry.task_name("CB", prefix=PREFIX)
    scores = evaluation.evaluate(name, "test", predict_by_guid(name, "test", {"test-0": 2}),
                                 output_dir=str(tmp_path), batch_size=4)
    assert scores == {}
    line = json.loads((tmp_path / f"{name}_test_predictions.jsonl").read_text())
    assert line == {"example_id": 0, "guid": "test-0", "choice": 2, "prediction": 2}


def test_bad_predictions_are_named(registered):
    name = registry.task_name("RTE", prefix=PREFIX)
    with pytest.raises(ValueError, match=r"gave no choice for 2 example ids \(first: \[2, 3\]\)"):
        evaluation.evaluate(name, "validation", lambda batches: {0: 1, 1: 0, **{-1: 0}}, batch_size=4)
    with pytest.raises(ValueError, match="evaltest_rte validation: example 2: choice 2 outside its 2 choices"):
        evaluation.evaluate(name, "validation", lambda batches: {i: min(i, 2) for i in range(4)}, batch_size=4)
    copa = registry.task_name("COPA", prefix=PREFIX)
    with pytest.raises(ValueError, match="example 0: choice 2 outside its 2 choices"):
        evaluation.evaluate(copa, "validation", lambda batches: {0: 2, 1: 0}, batch_size=4)


def test_every_example_reaches_predict_fn_once(registered):
    name = registry.task_name("MultiRC", prefix=PREFIX)
    seen: list[int] = []

    def predict_fn(batches):
        for batch in batches:
            assert batch["example_id"].shape == (4,)
            seen.extend(int(e) for e in batch["example_id"])
        return {i: 0 for i in range(6)}

    evaluation.evaluate(name, "validation", predict_fn, batch_size=4)
    assert seen == [0, 1, 2, 3, 4, 5, -1, -1]  # 6 answer options (2 + 1 + 3), in file order
