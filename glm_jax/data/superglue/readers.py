"""Readers for the official SuperGLUE JSONL files (spec 4.2, "Data details").

A task folder holds ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` with one JSON
object per line, in the layout of the official SuperGLUE release (``BoolQ/``,
``CB/``, ``COPA/``, ``MultiRC/``, ``ReCoRD/``, ``RTE/``, ``WiC/``, ``WSC/``).
Every line is validated; a malformed one raises :class:`SuperGLUEFormatError`
naming the file, the line number and the field, so a broken download is found
at read time rather than as a shape error deep inside training.

The readers also apply the data handling of the official GLM finetuning code:

* texts go through :func:`punctuation_standardization` (curly quotes, en dash);
* COPA train is doubled with mirrored copies (choices swapped, label flipped);
* WSC train keeps only the positive examples, and dev/test span indices that are
  off by one word are repaired; extra candidates come from an optional
  ``candidates`` field (the ``WSC-negative`` data) and always follow the gold one;
* ReCoRD train yields one example per gold answer, candidates ``[answer] + up
  to 9 sampled negative entities`` (so its label is 0); dev/test use every entity;
* MultiRC is flattened to one (passage, question, answer) example per answer
  option, with a ``group`` id per question for the exact-match metric.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

TASKS: tuple[str, ...] = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
SPLIT_FILES: Mapping[str, str] = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}

# Label values in the JSON, in the order of the label index an Example carries.
# The single-token verbalizers (patterns.py) are listed in this same order.
LABELS: Mapping[str, tuple[Any, ...]] = {
    "BoolQ": (False, True),
    "CB": ("contradiction", "entailment", "neutral"),
    "RTE": ("not_entailment", "entailment"),
    "WiC": (False, True),
    "MultiRC": (0, 1),
    "WSC": (False, True),
}

# The official training code caps ReCoRD train candidates at 10 (gold + 9).
RECORD_TRAIN_NEGATIVES = 9
RECORD_SEED = 42

Field = Union[str, int]


class SuperGLUEFormatError(ValueError):
    """A line of a SuperGLUE file does not have the official layout."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One model input's worth of data, before patterns and tokenisation.

    Attributes:
      guid: ``"{split}-{idx}"``; MultiRC appends ``-q{question}-a{answer}``,
        ReCoRD ``-q{qas idx}`` (and ``-a{n}`` on train), mirrored COPA ``-m``.
      fields: the texts the patterns use (already punctuation-standardised),
        plus ``span2_index`` (int) for WSC.
      label: index into ``LABELS[task]`` for the classification tasks and WSC;
        index into ``candidates`` for COPA and ReCoRD (-1 when no candidate is
        gold); None when the split has no labels (test).
      candidates: the answer strings of the multi-token tasks (COPA, WSC, ReCoRD).
      group: the question id that MultiRC's exact match groups by; the query id
        for ReCoRD.
      answers: ReCoRD's gold answer texts (the metric takes the max over them).
    """

    guid: str
    fields: Mapping[str, Field]
    label: Optional[int]
    candidates: tuple[str, ...] = ()
    group: Optional[str] = None
    answers: tuple[str, ...] = ()


def punctuation_standardization(text: str) -> str:
    """Map curly quotes and the en dash to ASCII, as the official data code does."""
    return text.translate(_PUNCTUATION)


_PUNCTUATION = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-"})


# --------------------------------------------------------------------------- validation


class _Record:
    """A parsed JSON object plus where it came from, for error messages."""

    def __init__(self, value: Mapping[str, Any], where: str, prefix: str = ""):
        self.value = value
        self.where = where
        self.prefix = prefix

    def _fail(self, key: str, problem: str) -> SuperGLUEFormatError:
        return SuperGLUEFormatError(f"{self.where}: field '{self.prefix}{key}': {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        if key not in self.value:
            if required:
                raise self._fail(key, "missing")
            return None
        value = self.value[key]
        # bool is a subclass of int: an int field must not accept true/false.
        wrong_bool = isinstance(value, bool) and bool not in _as_tuple(kind)
        if wrong_bool or not isinstance(value, kind):
            names = "/".join(k.__name__ for k in _as_tuple(kind))
            raise self._fail(key, f"expected {names}, got {type(value).__name__} {value!r:.40}")
        return value

    def text(self, key: str) -> str:
        return punctuation_standardization(self.get(key, str))

    def raw_text(self, key: str) -> str:
        """The field as written: the official COPA reader does not standardise punctuation."""
        return self.get(key, str)

    def child(self, key: str) -> "_Record":
        return _Record(self.get(key, dict), self.where, f"{self.prefix}{key}.")

    def children(self, key: str) -> list["_Record"]:
        items = self.get(key, list)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self._fail(f"{key}[{i}]", f"expected object, got {type(item).__name__}")
            out.append(_Record(item, self.where, f"{self.prefix}{key}[{i}]."))
        return out

    def label(self, key: str, allowed: Sequence[Any], required: bool) -> Optional[int]:
        """The index of the label value in ``allowed``; None when absent and optional."""
        kinds = tuple({type(a) for a in allowed})
        value = self.get(key, kinds, required=required)
        if value is None:
            return None
        if value not in allowed:
            raise self._fail(key, f"{value!r} is not one of {list(allowed)}")
        return list(allowed).index(value)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _records(path: Path) -> Iterator[_Record]:
    """The non-blank lines of a JSONL file as records; invalid JSON names its line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise SuperGLUEFormatError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(value, dict):
                raise SuperGLUEFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
            yield _Record(value, where)


# --------------------------------------------------------------------------- per task


def _guid(split: str, r: _Record) -> str:
    return f"{split}-{r.get('idx', int)}"


def _boolq(r: _Record, split: str, labelled: bool) -> list[Example]:
    fields = {"passage": r.text("passage"), "question": r.text("question")}
    return [Example(_guid(split, r), fields, r.label("label", LABELS["BoolQ"], labelled))]


def _pair(task: str) -> Callable[[_Record, str, bool], list[Example]]:
    def read(r: _Record, split: str, labelled: bool) -> list[Example]:
        fields = {"premise": r.text("premise"), "hypothesis": r.text("hypothesis")}
        return [Example(_guid(split, r), fields, r.label("label", LABELS[task], labelled))]

    return read


def _wic(r: _Record, split: str, labelled: bool) -> list[Example]:
    fields = {"sentence1": r.text("sentence1"), "sentence2": r.text("sentence2"), "word": r.text("word")}
    return [Example(_guid(split, r), fields, r.label("label", LABELS["WiC"], labelled))]


def _copa(r: _Record, split: str, labelled: bool) -> list[Example]:
    question = r.get("question", str)
    if question not in ("cause", "effect"):
        raise r._fail("question", f"{question!r} is not 'cause' or 'effect'")
    # As read: the official COPA reader, unlike the others, keeps the punctuation.
    c1, c2 = r.raw_text("choice1"), r.raw_text("choice2")
    label = r.label("label", (0, 1), labelled)
    fields = {"premise": r.raw_text("premise"), "question": question}
    out = [Example(_guid(split, r), {**fields, "choice1": c1, "choice2": c2}, label, (c1, c2))]
    if split == "train":
        # Mirror augmentation (spec 4.1): the same question with the choices swapped.
        flipped = None if label is None else 1 - label
        out.append(Example(_guid(split, r) + "-m", {**fields, "choice1": c2, "choice2": c1}, flipped, (c2, c1)))
    return out


def _repair_span(words: list[str], index: int, span: str) -> int:
    """The word index of ``span`` in ``words``: ``index`` or, if that does not
    match, ``index ± 1`` (the official dev file has a few off-by-one spans)."""
    target = span.lower().split()

    def matches(i: int) -> bool:
        return 0 <= i and [w.lower() for w in words[i : i + len(target)]] == target

    for candidate in (index, index - 1, index + 1):
        if matches(candidate):
            return candidate
    return index


def _wsc(r: _Record, split: str, labelled: bool) -> list[Example]:
    label = r.label("label", LABELS["WSC"], labelled)
    if split == "train" and label == 0:
        return []  # training uses positive examples only (spec 4.2)
    text = r.text("text")
    target = r.child("target")
    span1, span2 = target.text("span1_text"), target.text("span2_text")
    span2_index = target.get("span2_index", int)
    words = text.split()
    span2_index = _repair_span(words, span2_index, span2)
    if 0 <= span2_index < len(words) and words[span2_index] != span2 and words[span2_index].startswith(span2):
        # A pronoun glued to punctuation ('him,"'): split off the rest as its own
        # word and rejoin the text, as the official reader does (4 of 586 real texts).
        word = words[span2_index]
        words[span2_index:span2_index + 1] = [word[:len(span2)], word[len(span2):]]
        text = " ".join(words)
    if not 0 <= span2_index < len(words):
        raise target._fail("span2_index", f"{span2_index} is outside the {len(words)} words of 'text'")
    extra = r.get("candidates", list, required=False) or []
    texts = []
    for i, c in enumerate(extra):
        # Strings, or the official WSC-negative files' objects {"text": ...}.
        if isinstance(c, dict) and isinstance(c.get("text"), str):
            c = c["text"]
        if not isinstance(c, str):
            raise r._fail(f"candidates[{i}]", f'expected a str or {{"text": str}}, got {c!r:.60}')
        texts.append(c)
    negatives = [punctuation_standardization(c) for c in texts]
    # Duplicates removed, order kept, as the official reader does. Unlike it, a
    # negative equal to the gold span (case aside) is dropped too: scored as a wrong
    # answer, it would push the loss against the right one.
    candidates = (span1, *[c for c in dict.fromkeys(negatives) if c.lower() != span1.lower()])
    fields = {"text": text, "span1_text": span1, "span2_text": span2, "span2_index": span2_index}
    return [Example(_guid(split, r), fields, label, candidates)]


def _multirc(r: _Record, split: str, labelled: bool) -> list[Example]:
    passage_id = r.get("idx", int)
    passage = r.child("passage")
    text = passage.text("text")
    out = []
    for q in passage.children("questions"):
        group = f"{split}-{passage_id}-q{q.get('idx', int)}"
        question = q.text("question")
        for a in q.children("answers"):
            fields = {"passage": text, "question": question, "answer": a.text("text")}
            label = a.label("label", LABELS["MultiRC"], labelled)
            out.append(Example(f"{group}-a{a.get('idx', int)}", fields, label, group=group))
    return out


def _record(r: _Record, split: str, labelled: bool, rng: random.Random) -> list[Example]:
    passage = r.child("passage")
    text = passage.text("text")
    entities: list[str] = []
    for e in passage.children("entities"):
        start, end = e.get("start", int), e.get("end", int)
        if not 0 <= start <= end < len(text):
            raise e._fail("end", f"span [{start}, {end}] is outside the passage of {len(text)} characters")
        entities.append(text[start : end + 1])  # ReCoRD's ends are inclusive
    entities = sorted(set(entities))  # the official order: a sorted set
    out = []
    for q in r.children("qas"):
        query = q.text("query")
        if query.count("@placeholder") != 1:
            raise q._fail("query", "must contain '@placeholder' exactly once")
        group = f"{split}-{q.get('idx', int)}"
        answers_in = q.get("answers", list, required=labelled)
        answers = tuple(dict.fromkeys(a.text("text") for a in q.children("answers"))) if answers_in else ()
        if labelled and not answers:
            raise q._fail("answers", "empty: a labelled query needs at least one answer")
        fields = {"passage": text, "query": query}
        if split == "train":
            negatives = [e for e in entities if e not in answers]
            for n, answer in enumerate(answers):
                chosen = list(negatives)
                if len(chosen) > RECORD_TRAIN_NEGATIVES:
                    rng.shuffle(chosen)
                    chosen = chosen[:RECORD_TRAIN_NEGATIVES]
                out.append(Example(f"{group}-a{n}", fields, 0, (answer, *chosen), group, answers))
        else:
            gold = [i for i, e in enumerate(entities) if e in answers]
            label = (gold[0] if gold else -1) if labelled else None
            out.append(Example(group, fields, label, tuple(entities), group, answers))
    return out


_READERS: Mapping[str, Callable[[_Record, str, bool], list[Example]]] = {
    "BoolQ": _boolq,
    "CB": _pair("CB"),
    "RTE": _pair("RTE"),
    "WiC": _wic,
    "COPA": _copa,
    "WSC": _wsc,
    "MultiRC": _multirc,
}


def read_split(data_dir: Union[str, Path], task: str, split: str, *, seed: int = RECORD_SEED) -> list[Example]:
    """Read ``{data_dir}/{task}/{train,val,test}.jsonl`` into examples.

    Args:
      data_dir: the folder holding one sub-folder per task (the official release).
      task: one of :data:`TASKS`.
      split: ``train``, ``validation`` (file ``val.jsonl``) or ``test``. Labels are
        required on train and validation, optional on test.
      seed: seeds ReCoRD's choice of training negatives.

    Raises:
      SuperGLUEFormatError: a line is malformed (the message names file:line and field).
      FileNotFoundError / ValueError: unknown task, split or missing file.
    """
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {TASKS}")
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_FILES)}")
    path = Path(data_dir) / task / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected the official SuperGLUE layout)")
    labelled = split != "test"
    rng = random.Random(seed)
    out: list[Example] = []
    for record in _records(path):
        if task == "ReCoRD":
            out.extend(_record(record, split, labelled, rng))
        else:
            out.extend(_READERS[task](record, split, labelled))
    return out
