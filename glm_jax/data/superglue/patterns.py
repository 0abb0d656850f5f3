"""The cloze patterns and verbalizers of the SuperGLUE tasks (spec 4.2).

A pattern turns an :class:`~glm_jax.data.superglue.readers.Example` into two lists of
pieces, Part A and Part B of ``[CLS] A B [eos]``. Each piece is a string that is
tokenised on its own (leading spaces are significant: they are what the official
code feeds ``EncodeAsIds``), or :data:`MASK`, and is marked *shortenable* when
truncation may cut it (the data texts; never the template text). Part A and
Part B are concatenated without a separator; the split only matters to
truncation, which compares their shortenable lengths.

Verbalizers list one word per label, in the order of ``readers.LABELS[task]``.
The multi-token tasks (COPA, WSC, ReCoRD) have answers instead: one string per
candidate, scored as ``answer + [eop]``.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Callable, Mapping, Optional, Sequence, Union

from glm_jax.data.superglue.readers import Example


class _Mask:
    """The blank; a singleton so that no text can be mistaken for it."""

    def __repr__(self) -> str:
        return "MASK"


MASK = _Mask()
Text = Union[str, _Mask]


@dataclasses.dataclass(frozen=True)
class Piece:
    text: Text
    shortenable: bool = False


Parts = tuple[list[Piece], list[Piece]]


def _s(text: str) -> Piece:
    """A shortenable piece (data text)."""
    return Piece(text, True)


def _f(text: Text) -> Piece:
    """A fixed piece (template text or the mask)."""
    return Piece(text, False)


def remove_final_punc(text: str) -> str:
    return text.rstrip(string.punctuation)


def lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


@dataclasses.dataclass(frozen=True)
class TaskPatterns:
    """Everything pattern-related about one task.

    Attributes:
      name: the task folder name.
      pattern_ids: the valid ids.
      default_pattern: the id of the official Base/Large script
        (``scripts/finetune_superglue.sh``). Which ids produced the paper's
        Base/Large numbers is not stated (spec 7, item 2): the paper's appendix
        shows pattern 0, and the 10B script forces pattern 0.
      max_seq_length: spec 4.3.
      parts: ``(fields, pattern_id) -> (part_a, part_b)``.
      verbalizers: ``pattern_id -> one word per label`` for single-token tasks.
      answers: ``(example) -> one answer string per candidate`` for multi-token tasks.
    """

    name: str
    pattern_ids: tuple[int, ...]
    default_pattern: int
    max_seq_length: int
    parts: Callable[[Example, int], Parts]
    verbalizers: Optional[Callable[[int], tuple[str, ...]]] = None
    answers: Optional[Callable[[Example], tuple[str, ...]]] = None

    @property
    def multi_token(self) -> bool:
        return self.answers is not None

    def check_pattern(self, pattern_id: int) -> None:
        if pattern_id not in self.pattern_ids:
            raise ValueError(f"{self.name}: pattern id {pattern_id} not in {self.pattern_ids}")


def _str(example: Example, key: str) -> str:
    value = example.fields[key]
    if not isinstance(value, str):
        raise TypeError(f"{example.guid}: field {key!r} should be text, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- BoolQ


def _boolq_parts(ex: Example, pid: int) -> Parts:
    passage, question = _str(ex, "passage"), _str(ex, "question")
    if pid in (0, 1):
        return [_s(passage), _f(" Question:"), _s(" " + question), _f("? Answer:"), _f(MASK), _f(".")], []
    if pid in (2, 3):
        return [_s(passage), _f(" Based on the previous passage,"), _s(" " + question), _f("?"), _f(MASK), _f(".")], []
    return [_f("Based on the following passage"), _s(" " + question), _f("?"), _f(MASK), _f("."), _s(" " + passage)], []


def _boolq_verbalizer(pid: int) -> tuple[str, ...]:
    # Even ids answer No/Yes, odd ids false/true.
    return (" No", " Yes") if pid % 2 == 0 else (" false", " true")


# --------------------------------------------------------------------------- RTE and CB


def _entailment_parts(question_4: str, raw_hypothesis_4: bool = False) -> Callable[[Example, int], Parts]:
    """RTE and CB share patterns 0-3; pattern 4 differs in its question, and CB's
    keeps the hypothesis' punctuation (the official CbPVP overrides pattern 4 with
    the raw text)."""

    def parts(ex: Example, pid: int) -> Parts:
        premise = _str(ex, "premise")
        # The official code strips the hypothesis' final punctuation for every
        # pattern (the spec notes it on pattern 0) but CB's 4; "?" follows it in 0-3.
        raw = _str(ex, "hypothesis")
        hypothesis = raw if (pid == 4 and raw_hypothesis_4) else remove_final_punc(raw)
        quoted_a = [_f('"'), _s(hypothesis), _f('" ?')]
        plain_a = [_s(hypothesis), _f("?")]
        if pid == 0:
            return quoted_a, [_f(MASK), _f(","), _f(' "'), _s(premise), _f('"')]
        if pid == 1:
            return plain_a, [_f(MASK), _f(","), _s(" " + premise)]
        if pid == 2:
            return quoted_a, [_f(MASK), _f('. "'), _s(premise), _f('"')]
        if pid == 3:
            return plain_a, [_f(MASK), _f("."), _s(" " + premise)]
        return [_s(premise), _f(" question:"), _s(" " + hypothesis), _f(question_4), _f(" answer:"), _f(MASK)], []

    return parts


def _rte_verbalizer(pid: int) -> tuple[str, ...]:
    # Label order: not_entailment, entailment.
    return (" false", " true") if pid == 4 else (" No", " Yes")


def _cb_verbalizer(pid: int) -> tuple[str, ...]:
    # Label order: contradiction, entailment, neutral.
    return (" false", " true", " neither") if pid == 4 else (" No", " Yes", " Maybe")


# --------------------------------------------------------------------------- WiC


def _wic_parts(ex: Example, pid: int) -> Parts:
    s1, s2, word = _str(ex, "sentence1"), _str(ex, "sentence2"), _str(ex, "word")
    if pid == 0:
        return [_s(f'"{s1}" / "{s2}"'), _f(f' Similar sense of "{word}"?'), _f(MASK), _f(".")], []
    if pid == 1:
        return [_s(s1), _s(" " + s2), _f(f" Does {word} have the same meaning in both sentences?"), _f(MASK)], []
    # Pattern 2, as officially: one part, and only the first sentence may be cut.
    return [_f(word), _f(" ."), _f(' Sense (1) (a) "'), _s(s1), _f('"'), _f(" ("), _f(MASK), _f(') "'), _f(s2),
            _f('"')], []


def _wic_verbalizer(pid: int) -> tuple[str, ...]:
    return ("2", "b") if pid == 2 else (" No", " Yes")


# --------------------------------------------------------------------------- MultiRC


def _multirc_parts(ex: Example, pid: int) -> Parts:
    # Trailing whitespace first, as the official pvp.py does: real MultiRC passages
    # end in ". ", and without it the final "." survives next to the pattern's own.
    passage = remove_final_punc(_str(ex, "passage").rstrip())
    question = remove_final_punc(_str(ex, "question"))
    answer = _str(ex, "answer")
    if pid == 0:
        # The spec lists " {question}?" as one piece here (but "?" apart in 1, 2, 4).
        return [_s(passage), _f("."), _f(" Question:"), _f(f" {question}?"), _f(" Is it"), _f(" " + answer),
                _f("?"), _f(MASK), _f(".")], []
    if pid == 1:
        return [_s(passage), _f("."), _f(" Question:"), _f(" " + question), _f("?"),
                _f(' Is the correct answer "'), _f(answer), _f('"?'), _f(MASK), _f(".")], []
    if pid == 2:
        return [_s(passage), _f(". Based on the previous passage,"), _f(" " + question), _f("?"),
                _f(' Is "'), _f(answer), _f('" a correct answer?'), _f(MASK), _f(".")], []
    if pid == 3:
        return [_s(passage), _f(" " + question), _f("- ["), _f(MASK), _f("]"), _f(answer)], []
    return [_s(passage), _f("."), _f(" Question:"), _f(" " + question), _f("?"), _f(" " + answer), _f("?"),
            _f(MASK), _f(".")], []


def _multirc_verbalizer(pid: int) -> tuple[str, ...]:
    return (" False", " True") if pid == 3 else (" No", " Yes")


# --------------------------------------------------------------------------- COPA


def _copa_choice(text: str) -> str:
    return remove_final_punc(lowercase_first(text))


def _copa_parts(ex: Example, pid: int) -> Parts:
    premise = remove_final_punc(_str(ex, "premise"))
    c1, c2 = _copa_choice(_str(ex, "choice1")), _copa_choice(_str(ex, "choice2"))
    joiner = " because" if _str(ex, "question") == "cause" else ", so"
    if pid == 0:
        return [_f('"'), _f(c1), _f('" or "'), _f(c2), _f('"?'), _s(" " + premise), _f(joiner), _f(MASK), _f(".")], []
    return [_f(c1), _f(" or"), _f(" " + c2), _f("?"), _s(" " + premise), _f(joiner), _f(MASK), _f(".")], []


def _copa_answers(ex: Example) -> tuple[str, ...]:
    return tuple(" " + _copa_choice(c) for c in ex.candidates)


# --------------------------------------------------------------------------- WSC


def _wsc_parts(ex: Example, pid: int) -> Parts:
    words = _str(ex, "text").split()
    index = ex.fields["span2_index"]
    assert isinstance(index, int)
    words[index] = f"*{words[index]}*"  # mark the pronoun in the passage
    text, pronoun = " ".join(words), _str(ex, "span2_text")
    if pid == 0:
        return [_s(text), _f(f" The pronoun '*{pronoun}*' refers to"), _f(MASK), _f(".")], []
    if pid == 1:
        return [_s(text), _f(f" In the previous sentence, the pronoun '*{pronoun}*' refers to"), _f(MASK),
                _f(".")], []
    return [_s(text), _f(f" Question: In the passage above, what does the pronoun '*{pronoun}*' refer to?"),
            _f(" Answer:"), _f(MASK), _f(".")], []


def _spaced_answers(ex: Example) -> tuple[str, ...]:
    return tuple(" " + c for c in ex.candidates)


# --------------------------------------------------------------------------- ReCoRD


def _record_parts(ex: Example, pid: int) -> Parts:
    passage = _str(ex, "passage").replace("@highlight\n", "- ")
    left, right = _str(ex, "query").split("@placeholder")
    return [_s(passage), _f(" " + left.rstrip()), _f(MASK), _f(right)], []


# --------------------------------------------------------------------------- registry

TASK_PATTERNS: Mapping[str, TaskPatterns] = {
    t.name: t
    for t in (
        TaskPatterns("BoolQ", tuple(range(6)), 4, 256, _boolq_parts, verbalizers=_boolq_verbalizer),
        TaskPatterns("CB", tuple(range(5)), 3, 256, _entailment_parts(" true, false or neither?", raw_hypothesis_4=True),
                     verbalizers=_cb_verbalizer),
        TaskPatterns("RTE", tuple(range(5)), 0, 256, _entailment_parts(" True or False?"),
                     verbalizers=_rte_verbalizer),
        TaskPatterns("WiC", (0, 1, 2), 1, 256, _wic_parts, verbalizers=_wic_verbalizer),
        TaskPatterns("MultiRC", tuple(range(5)), 0, 512, _multirc_parts, verbalizers=_multirc_verbalizer),
        TaskPatterns("COPA", (0, 1), 0, 256, _copa_parts, answers=_copa_answers),
        TaskPatterns("WSC", (0, 1, 2), 2, 128, _wsc_parts, answers=_spaced_answers),
        TaskPatterns("ReCoRD", (0,), 0, 512, _record_parts, answers=_spaced_answers),
    )
}


def get_task(name: str) -> TaskPatterns:
    if name not in TASK_PATTERNS:
        raise ValueError(f"unknown SuperGLUE task {name!r}; expected one of {tuple(TASK_PATTERNS)}")
    return TASK_PATTERNS[name]


def pieces(task: str, example: Example, pattern_id: Optional[int] = None) -> Parts:
    """Part A and Part B pieces of ``example`` under ``pattern_id`` (default: the task's)."""
    spec = get_task(task)
    pid = spec.default_pattern if pattern_id is None else pattern_id
    spec.check_pattern(pid)
    part_a, part_b = spec.parts(example, pid)
    n_masks = sum(p.text is MASK for p in (*part_a, *part_b))
    assert n_masks == 1, f"{task} pattern {pid} has {n_masks} masks"
    return part_a, part_b


def texts(parts: Sequence[Piece]) -> list[Text]:
    """The piece texts, for inspection and tests."""
    return [p.text for p in parts]
