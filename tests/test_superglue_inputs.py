"""SuperGLUE readers, patterns and the token layout (spec 2.4, 4.2, 4.3).

The data is written here in the official JSONL layout. A fake vocabulary splits
text into words and punctuation (each keeping its leading space) and logs every
``encode`` call, so the tests check both *which pieces* are tokenised (the
spec's piece lists, written out by hand below) and the resulting ids, token by
token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest

from glm_jax.command_tokens import CommandTokens
from glm_jax.data.superglue import inputs, patterns, readers
from glm_jax.data.superglue.patterns import MASK
from glm_jax.data.superglue.readers import SuperGLUEFormatError, read_split

CMD = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)
_TOKEN = re.compile(r"\s?\w+|\s?[^\w\s]")


class FakeVocab:
    """Words and punctuation marks (with their leading space) to fixed ids."""

    command_tokens = CMD

    def __init__(self, table: Optional[dict[str, int]] = None):
        self.table = dict(table or {})
        self.calls: list[str] = []

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def id(self, token: str) -> int:
        return self.table.setdefault(token, 100 + len(self.table))

    def encode(self, text: str) -> list[int]:
        self.calls.append(text)
        return [self.id(t) for t in self.tokenize(text)]

    def piece_ids(self, piece: Any) -> list[int]:
        return [CMD.mask] if piece is MASK else [self.id(t) for t in self.tokenize(piece)]


DATA: dict[str, list[dict[str, Any]]] = {
    "BoolQ": [{"question": "is it wet", "passage": "Rain is wet.", "idx": 0, "label": True}],
    "CB": [{"premise": "It rained.", "hypothesis": "It was wet.", "label": "entailment", "idx": 0}],
    "RTE": [{"premise": "It rained.", "hypothesis": "It was wet.", "label": "not_entailment", "idx": 0}],
    "WiC": [{"word": "bank", "sentence1": "The bank is open.", "sentence2": "A river bank.", "idx": 0,
             "label": False, "start1": 4, "end1": 8, "start2": 8, "end2": 12, "version": 1.1}],
    "MultiRC": [{"idx": 0, "version": 1.1, "passage": {"text": "Tom ran home.", "questions": [
        {"question": "Who ran?", "idx": 0, "answers": [{"text": "Tom", "idx": 0, "label": 1},
                                                       {"text": "Ann", "idx": 1, "label": 0}]},
        {"question": "Where?", "idx": 1, "answers": [{"text": "home", "idx": 2, "label": 1}]}]}}],
    "COPA": [{"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang a long song.",
              "question": "cause", "idx": 0, "label": 0}],
    "WSC": [{"text": "Mark told Pete he won.", "idx": 0, "label": True, "target": {
        "span1_index": 0, "span1_text": "Mark", "span2_index": 3, "span2_text": "he"}},
            {"text": "Mark told Pete he won.", "idx": 1, "label": False, "target": {
                "span1_index": 2, "span1_text": "Pete", "span2_index": 3, "span2_text": "he"}}],
    "ReCoRD": [{"idx": 0, "source": "x", "passage": {
        "text": "Obama met Putin.\n@highlight\nTalks went well",
        "entities": [{"start": 0, "end": 4}, {"start": 10, "end": 14}]},
        "qas": [{"query": "Later @placeholder spoke.", "idx": 7,
                 "answers": [{"start": 0, "end": 4, "text": "Obama"}]}]}],
}


def write(root: Path, task: str, split: str, records: Sequence[Any]) -> Path:
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / readers.SPLIT_FILES[split]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    for task, records in DATA.items():
        for split in readers.SPLIT_FILES:
            write(tmp_path, task, split, records)
    return tmp_path


# (task, pattern id, example index in the split) -> (Part A pieces, Part B pieces), from spec 4.2.
PIECES: dict[tuple[str, int], tuple[list[Any], list[Any]]] = {
    ("BoolQ", 0): (["Rain is wet.", " Question:", " is it wet", "? Answer:", MASK, "."], []),
    ("BoolQ", 1): (["Rain is wet.", " Question:", " is it wet", "? Answer:", MASK, "."], []),
    ("BoolQ", 2): (["Rain is wet.", " Based on the previous passage,", " is it wet", "?", MASK, "."], []),
    ("BoolQ", 3): (["Rain is wet.", " Based on the previous passage,", " is it wet", "?", MASK, "."], []),
    ("BoolQ", 4): (["Based on the following passage", " is it wet", "?", MASK, ".", " Rain is wet."], []),
    ("BoolQ", 5): (["Based on the following passage", " is it wet", "?", MASK, ".", " Rain is wet."], []),
    ("CB", 0): (['"', "It was wet", '" ?'], [MASK, ",", ' "', "It rained.", '"']),
    ("CB", 1): (["It was wet", "?"], [MASK, ",", " It rained."]),
    ("CB", 2): (['"', "It was wet", '" ?'], [MASK, '. "', "It rained.", '"']),
    ("CB", 3): (["It was wet", "?"], [MASK, ".", " It rained."]),
    ("CB", 4): (["It rained.", " question:", " It was wet.", " true, false or neither?", " answer:", MASK], []),
    ("RTE", 0): (['"', "It was wet", '" ?'], [MASK, ",", ' "', "It rained.", '"']),
    ("RTE", 1): (["It was wet", "?"], [MASK, ",", " It rained."]),
    ("RTE", 2): (['"', "It was wet", '" ?'], [MASK, '. "', "It rained.", '"']),
    ("RTE", 3): (["It was wet", "?"], [MASK, ".", " It rained."]),
    ("RTE", 4): (["It rained.", " question:", " It was wet", " True or False?", " answer:", MASK], []),
    ("WiC", 0): (['"The bank is open." / "A river bank."', ' Similar sense of "bank"?', MASK, "."], []),
    ("WiC", 1): (["The bank is open.", " A river bank.", " Does bank have the same meaning in both sentences?",
                  MASK], []),
    ("WiC", 2): (["bank", " .", ' Sense (1) (a) "', "The bank is open.", '"'],
                 [" (", MASK, ') "', "A river bank.", '"']),
    ("MultiRC", 0): (["Tom ran home", ".", " Question:", " Who ran?", " Is it", " Tom", "?", MASK, "."], []),
    ("MultiRC", 1): (["Tom ran home", ".", " Question:", " Who ran", "?", ' Is the correct answer "', "Tom", '"?',
                      MASK, "."], []),
    ("MultiRC", 2): (["Tom ran home", ". Based on the previous passage,", " Who ran", "?", ' Is "', "Tom",
                      '" a correct answer?', MASK, "."], []),
    ("MultiRC", 3): (["Tom ran home", " Who ran", "- [", MASK, "]", "Tom"], []),
    ("MultiRC", 4): (["Tom ran home", ".", " Question:", " Who ran", "?", " Tom", "?", MASK, "."], []),
    ("COPA", 0): (['"', "he slipped", '" or "', "he sang a long song", '"?', " The man fell", " because", MASK,
                   "."], []),
    ("COPA", 1): (["he slipped", " or", " he sang a long song", "?", " The man fell", " because", MASK, "."], []),
    ("WSC", 0): (["Mark told Pete *he* won.", " The pronoun '*he*' refers to", MASK, "."], []),
    ("WSC", 1): (["Mark told Pete *he* won.", " In the previous sentence, the pronoun '*he*' refers to", MASK,
                  "."], []),
    ("WSC", 2): (["Mark told Pete *he* won.",
                  " Question: In the passage above, what does the pronoun '*he*' refer to?", " Answer:", MASK,
                  "."], []),
    ("ReCoRD", 0): (["Obama met Putin.\n- Talks went well", " Later", MASK, " spoke."], []),
}

VERBALIZERS = {
    ("BoolQ", 0): (" No", " Yes"), ("BoolQ", 1): (" false", " true"), ("BoolQ", 2): (" No", " Yes"),
    ("BoolQ", 3): (" false", " true"), ("BoolQ", 4): (" No", " Yes"), ("BoolQ", 5): (" false", " true"),
    **{("CB", i): (" No", " Yes", " Maybe") for i in range(4)}, ("CB", 4): (" false", " true", " neither"),
    **{("RTE", i): (" No", " Yes") for i in range(4)}, ("RTE", 4): (" false", " true"),
    ("WiC", 0): (" No", " Yes"), ("WiC", 1): (" No", " Yes"), ("WiC", 2): ("2", "b"),
    **{("MultiRC", i): (" No", " Yes") for i in (0, 1, 2, 4)}, ("MultiRC", 3): (" False", " True"),
}
ANSWERS = {"COPA": [" he slipped", " he sang a long song"], "WSC": [" Mark"], "ReCoRD": [" Obama", " Putin"]}
LABEL = {"BoolQ": 1, "CB": 1, "RTE": 0, "WiC": 0, "MultiRC": 1, "COPA": 0, "WSC": 1, "ReCoRD": 0}


def test_every_pattern_id_is_covered():
    assert set(PIECES) == {(t, p) for t, spec in patterns.TASK_PATTERNS.items() for p in spec.pattern_ids}
    defaults = {t: s.default_pattern for t, s in patterns.TASK_PATTERNS.items()}
    assert defaults == {"BoolQ": 4, "CB": 3, "COPA": 0, "MultiRC": 0, "ReCoRD": 0, "RTE": 0, "WiC": 1, "WSC": 2}
    lengths = {t: s.max_seq_length for t, s in patterns.TASK_PATTERNS.items()}
    assert lengths == {"BoolQ": 256, "CB": 256, "COPA": 256, "MultiRC": 512, "ReCoRD": 512, "RTE": 256,
                       "WiC": 256, "WSC": 128}


@pytest.mark.parametrize("task,pattern_id", sorted(PIECES))
def test_layout_token_by_token(data_dir: Path, task: str, pattern_id: int):
    example = read_split(data_dir, task, "validation")[0]
    assert example.label == LABEL[task]
    part_a, part_b = PIECES[(task, pattern_id)]
    vocab = FakeVocab()
    out = inputs.encode_example(task, example, vocab, pattern_id=pattern_id, max_seq_length=64)
    pieces = part_a + part_b
    # Each piece is encoded on its own, in order (the mask is not text).
    assert vocab.calls[: len(pieces) - 1] == [p for p in pieces if p is not MASK]
    context = [CMD.cls] + [t for p in pieces for t in vocab.piece_ids(p)] + [CMD.eos]
    sep = len(context)
    mask_position = context.index(CMD.mask)
    assert int(out["label"]) == LABEL[task]
    if task not in ANSWERS:
        expect = context + [CMD.sop]
        np.testing.assert_array_equal(out["tokens"], expect + [CMD.pad] * (64 - len(expect)))
        np.testing.assert_array_equal(out["position_ids"], list(range(sep)) + [mask_position] + [0] * (63 - sep))
        np.testing.assert_array_equal(out["block_position_ids"], [0] * sep + [1] + [0] * (63 - sep))
        assert int(out["sep"]) == sep and int(out["mask_position"]) == mask_position
        words = VERBALIZERS[(task, pattern_id)]
        np.testing.assert_array_equal(out["choice_ids"], [vocab.id(vocab.tokenize(w)[0]) for w in words])
        return
    answers = ANSWERS[task]
    assert out["tokens"].shape == (len(answers), 64)
    for c, answer_text in enumerate(answers):
        answer = [vocab.id(t) for t in vocab.tokenize(answer_text)] + [CMD.eop]
        n = len(answer)
        expect = context + [CMD.sop] + answer[:-1]
        np.testing.assert_array_equal(out["tokens"][c], expect + [CMD.pad] * (64 - len(expect)))
        np.testing.assert_array_equal(out["position_ids"][c],
                                      list(range(sep)) + [mask_position] * n + [0] * (64 - sep - n))
        np.testing.assert_array_equal(out["block_position_ids"][c],
                                      [0] * sep + list(range(1, n + 1)) + [0] * (64 - sep - n))
        np.testing.assert_array_equal(out["targets"][c], [0] * sep + answer + [0] * (64 - sep - n))
        np.testing.assert_array_equal(out["loss_mask"][c], [0] * sep + [1] * n + [0] * (64 - sep - n))
        assert int(out["sep"][c]) == sep and int(out["answer_lengths"][c]) == n


def test_rte_ids_written_by_hand(data_dir: Path):
    table = {'"': 10, "It": 11, " was": 12, " wet": 13, " ?": 14, ",": 15, ' "': 16, " rained": 17, ".": 18,
             " No": 19, " Yes": 20}
    example = read_split(data_dir, "RTE", "train")[0]
    out = inputs.encode_example("RTE", example, FakeVocab(table), pattern_id=0, max_seq_length=20)
    # [CLS] " It was wet " ? [MASK] , " It rained . " [eos] [sop] pad pad pad pad
    np.testing.assert_array_equal(
        out["tokens"], [1, 10, 11, 12, 13, 10, 14, 2, 15, 16, 11, 17, 18, 10, 0, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["position_ids"], [*range(15), 7, 0, 0, 0, 0])
    np.testing.assert_array_equal(out["block_position_ids"], [0] * 15 + [1, 0, 0, 0, 0])
    assert (int(out["sep"]), int(out["mask_position"]), int(out["label"])) == (15, 7, 0)
    np.testing.assert_array_equal(out["choice_ids"], [19, 20])


def _words(vocab: FakeVocab, ids: np.ndarray) -> list[str]:
    names = {v: k for k, v in vocab.table.items()} | {1: "[CLS]", 2: "[MASK]", 3: "[sop]", 0: "[pad]"}
    return [names[int(i)] for i in ids]


def test_truncation_cuts_the_last_shortenable_piece(data_dir: Path):
    example = read_split(data_dir, "BoolQ", "train")[0]
    vocab = FakeVocab()
    # 15 pattern tokens + [CLS] [eos] [sop] = 18; 16 drops the passage's last two.
    out = inputs.encode_example("BoolQ", example, vocab, pattern_id=4, max_seq_length=16)
    assert _words(vocab, out["tokens"]) == ["[CLS]", "Based", " on", " the", " following", " passage", " is", " it",
                                            " wet", "?", "[MASK]", ".", " Rain", " is", "[pad]", "[sop]"]
    # 12: the passage is emptied (4), then the question loses two.
    out = inputs.encode_example("BoolQ", example, vocab, pattern_id=4, max_seq_length=12)
    assert _words(vocab, out["tokens"])[5:] == [" passage", " is", "?", "[MASK]", ".", "[pad]", "[sop]"]


def test_truncation_balances_part_a_and_b(data_dir: Path):
    example = read_split(data_dir, "CB", "train")[0]
    vocab = FakeVocab()
    # A = " It was wet " ? (3 shortenable), B = [M] , " It rained . " (3): 16 tokens in all.
    # Two cuts: the tie goes to B ("."), then A is longer (" wet").
    out = inputs.encode_example("CB", example, vocab, pattern_id=0, max_seq_length=14)
    assert _words(vocab, out["tokens"]) == ['[CLS]', '"', 'It', ' was', '"', ' ?', '[MASK]', ',', ' "', 'It',
                                            ' rained', '"', '[pad]', '[sop]']


def test_each_candidate_is_truncated_for_its_own_answer(data_dir: Path):
    example = read_split(data_dir, "COPA", "validation")[0]
    vocab = FakeVocab()
    # Pattern 1: 15 pattern tokens + [CLS] [eos]; answers " he slipped" (2 + eop) and
    # " he sang a long song" (5 + eop). With 21 the short one fits (20) and the long one
    # (23) costs the premise " The man fell" two words.
    out = inputs.encode_example("COPA", example, vocab, pattern_id=1, max_seq_length=21)
    assert out["sep"].tolist() == [17, 15]
    assert _words(vocab, out["tokens"][0][9:13]) == ["?", " The", " man", " fell"]
    assert _words(vocab, out["tokens"][1][9:17]) == ["?", " The", " because", "[MASK]", ".", "[pad]", "[sop]", " he"]
    assert out["tokens"].shape == (2, 21) and out["loss_mask"].sum(axis=1).tolist() == [3, 6]


def test_nothing_left_to_cut_names_the_example(data_dir: Path):
    example = read_split(data_dir, "MultiRC", "train")[0]
    with pytest.raises(ValueError, match=r"MultiRC example train-0-q0-a0: .* exceed max_seq_length 6"):
        inputs.encode_example("MultiRC", example, FakeVocab(), max_seq_length=6)


# --------------------------------------------------------------------------- readers


def test_readers_data_details(data_dir: Path):
    copa = read_split(data_dir, "COPA", "train")
    assert [(e.guid, e.candidates, e.label) for e in copa] == [
        ("train-0", ("He slipped.", "He sang a long song."), 0),
        ("train-0-m", ("He sang a long song.", "He slipped."), 1)]
    assert len(read_split(data_dir, "COPA", "validation")) == 1  # no mirroring outside train
    wsc_train = read_split(data_dir, "WSC", "train")
    assert [e.guid for e in wsc_train] == ["train-0"]  # the negative example is dropped
    assert len(read_split(data_dir, "WSC", "validation")) == 2
    multirc = read_split(data_dir, "MultiRC", "validation")
    assert [(e.fields["answer"], e.label, e.group) for e in multirc] == [
        ("Tom", 1, "validation-0-q0"), ("Ann", 0, "validation-0-q0"), ("home", 1, "validation-0-q1")]
    record = read_split(data_dir, "ReCoRD", "validation")[0]
    assert (record.candidates, record.answers, record.label, record.group) == (
        ("Obama", "Putin"), ("Obama",), 0, "validation-7")


def test_wsc_candidates_and_span_repair(tmp_path: Path):
    line = {"text": "Mark told Pete he won.", "idx": 3, "label": True, "candidates": ["Pete", "Mark", "Sue"],
            "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 4, "span2_text": "he"}}
    write(tmp_path, "WSC", "validation", [line])
    example = read_split(tmp_path, "WSC", "validation")[0]
    assert example.candidates == ("Mark", "Pete", "Sue")  # the gold referent first, no duplicate
    assert example.fields["span2_index"] == 3  # off by one in the file, repaired
    out = inputs.encode_example("WSC", example, FakeVocab(), pattern_id=0, max_seq_length=40)
    assert out["tokens"].shape == (3, 40)


def test_record_train_one_example_per_answer(tmp_path: Path):
    names = [f"N{i}" for i in range(12)]
    text = " ".join(names)
    entities = [{"start": text.index(n + " " if n != names[-1] else n), "end": text.index(n) + len(n) - 1}
                for n in names]
    qa = {"query": "@placeholder won", "idx": 5, "answers": [{"start": 0, "end": 1, "text": "N0"},
                                                             {"start": 3, "end": 4, "text": "N1"}]}
    write(tmp_path, "ReCoRD", "train", [{"idx": 0, "passage": {"text": text, "entities": entities}, "qas": [qa]}])
    first, second = read_split(tmp_path, "ReCoRD", "train")
    again = read_split(tmp_path, "ReCoRD", "train")
    assert (first.candidates[0], second.candidates[0], first.label, second.label) == ("N0", "N1", 0, 0)
    for example in (first, second):
        assert len(example.candidates) == 10 and not {"N0", "N1"} & set(example.candidates[1:])
        assert set(example.candidates[1:]) <= set(names)
    assert again[0].candidates == first.candidates  # seeded
    full = read_split(tmp_path, "ReCoRD", "train", seed=1)[0].candidates
    assert len(full) == 10


@pytest.mark.parametrize("task,split,records,message", [
    ("BoolQ", "train", [DATA["BoolQ"][0], "{not json"], r"BoolQ/train\.jsonl:2: invalid JSON"),
    ("CB", "validation", [{k: v for k, v in DATA["CB"][0].items() if k != "label"}],
     r"CB/val\.jsonl:1: field 'label': missing"),
    ("BoolQ", "train", [{**DATA["BoolQ"][0], "label": "yes"}], r"BoolQ/train\.jsonl:1: field 'label': expected bool"),
    ("COPA", "train", [{**DATA["COPA"][0], "label": True}], r"COPA/train\.jsonl:1: field 'label': expected int"),
    ("CB", "train", [{**DATA["CB"][0], "label": "maybe"}], r"field 'label': 'maybe' is not one of"),
    ("RTE", "train", [{**DATA["RTE"][0], "premise": 3}], r"RTE/train\.jsonl:1: field 'premise': expected str"),
    ("MultiRC", "train", [{"idx": 0, "passage": {"text": "T.", "questions": [{"question": "Q?", "idx": 0, "answers": [
        {"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1}]}]}}],
     r"MultiRC/train\.jsonl:1: field 'passage\.questions\[0\]\.answers\[1\]\.label': missing"),
    ("WSC", "train", [{**DATA["WSC"][0], "target": {"span1_text": "Mark", "span2_text": "he", "span2_index": "3"}}],
     r"field 'target\.span2_index': expected int"),
    ("ReCoRD", "validation", [{**DATA["ReCoRD"][0], "qas": [{"query": "no placeholder", "idx": 1, "answers": []}]}],
     r"field 'qas\[0\]\.query': must contain '@placeholder'"),
])
def test_malformed_lines_are_named(tmp_path: Path, task: str, split: str, records: list[Any], message: str):
    write(tmp_path, task, split, records)
    with pytest.raises(SuperGLUEFormatError, match=message):
        read_split(tmp_path, task, split)


def test_test_split_needs_no_labels(tmp_path: Path):
    write(tmp_path, "CB", "test", [{k: v for k, v in DATA["CB"][0].items() if k != "label"}])
    (example,) = read_split(tmp_path, "CB", "test")
    assert example.label is None
    assert int(inputs.encode_example("CB", example, FakeVocab())["label"]) == -1


def test_punctuation_is_standardised(tmp_path: Path):
    write(tmp_path, "RTE", "train", [{**DATA["RTE"][0], "premise": "\u201cIt\u2019s\u201d \u2013 wet."}])
    assert read_split(tmp_path, "RTE", "train")[0].fields["premise"] == "\"It's\" - wet."


def test_label_words_sharing_their_first_token_are_refused():
    class Collide(FakeVocab):
        def encode(self, s):
            return [7] + list(super().encode(s))  # every word starts with the same id

    with pytest.raises(ValueError, match="RTE pattern 0: label words share their first token"):
        inputs.verbalizer_ids("RTE", 0, Collide())


def test_wsc_negative_candidates_as_objects(tmp_path: Path):
    """The official WSC-negative files give candidates as {"text": ...} objects."""
    line = {"text": "Mark told Pete he won.", "idx": 3, "label": True,
            "candidates": [{"text": "Pete"}, {"text": "Sue"}, {"text": "Pete"}, {"text": "mark"}],
            "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 3, "span2_text": "he"}}
    write(tmp_path, "WSC", "train", [line])
    (example,) = read_split(tmp_path, "WSC", "train")
    assert example.candidates == ("Mark", "Pete", "Sue")
    line["candidates"] = [{"txt": "Pete"}]
    write(tmp_path, "WSC", "train", [line])
    with pytest.raises(SuperGLUEFormatError, match=r"candidates\[0\].*expected a str or \{\"text\": str\}"):
        read_split(tmp_path, "WSC", "train")


REAL_BERT = Path(__file__).resolve().parents[2] / "shared" / "vocab" / "bert_base_uncased" / "vocab.txt"


@pytest.mark.skipif(not REAL_BERT.is_file(), reason=f"the real BERT vocabulary is not at {REAL_BERT}")
@pytest.mark.parametrize("pattern_id", [0, 1, 4])
def test_multirc_passage_ending_in_a_space_gets_one_period(tmp_path: Path, pattern_id):
    """Real MultiRC passages end in ". " (official pvp.py strips it before the final punctuation)."""
    from glm_jax.data.official_vocabs import official_vocabulary

    vocab = official_vocabulary("bert", REAL_BERT)
    example = readers.Example("g-a0", {"passage": "They hid in the cellar and survived. ",
                                       "question": "Where did they hide?", "answer": "In the cellar"}, 1)
    out = inputs.encode_example("MultiRC", example, vocab, pattern_id=pattern_id, max_seq_length=64)
    text = vocab.decode([int(t) for t in out["tokens"] if t != vocab.command_tokens.pad])
    before = text.split("question")[0]
    assert before.endswith("survived. "), text
    assert before.count(".") == 1, text


def test_wsc_pronoun_glued_to_punctuation_is_split_off(tmp_path: Path):
    line = {"text": 'Sam said "I told him," and left.', "idx": 0, "label": True,
            "target": {"span1_index": 0, "span1_text": "Sam", "span2_index": 4, "span2_text": "him"}}
    write(tmp_path, "WSC", "validation", [line])
    (example,) = read_split(tmp_path, "WSC", "validation")
    assert example.fields["text"] == 'Sam said "I told him ," and left.'
    assert example.fields["text"].split()[example.fields["span2_index"]] == "him"


def test_official_details_of_issue_15_item_6(tmp_path):
    """ReCoRD candidates in the official order (a sorted set), COPA text as written
    (the official COPA reader does not standardise punctuation), and WiC pattern 2 in
    one part where only the first sentence may be cut."""
    record = {"idx": 0, "passage": {"text": "Putin met Obama and Putin smiled.", "entities": [
        {"start": 0, "end": 4}, {"start": 10, "end": 14}, {"start": 20, "end": 24}]},
        "qas": [{"query": "@placeholder spoke.", "idx": 1, "answers": [{"start": 10, "end": 14, "text": "Obama"}]}]}
    write(tmp_path, "ReCoRD", "validation", [record])
    [ex] = read_split(tmp_path, "ReCoRD", "validation")
    assert ex.candidates == ("Obama", "Putin")  # passage order would give Putin first

    copa = {**DATA["COPA"][0], "choice1": "He said \u201chi\u201d.", "premise": "The man \u2013 fell."}
    write(tmp_path, "COPA", "validation", [copa])
    [ex] = read_split(tmp_path, "COPA", "validation")
    assert ex.candidates[0] == "He said \u201chi\u201d." and ex.fields["premise"] == "The man \u2013 fell."
    # The other readers standardise (RTE here).
    write(tmp_path, "RTE", "validation", [{**DATA["RTE"][0], "premise": "It \u201crained\u201d."}])
    assert read_split(tmp_path, "RTE", "validation")[0].fields["premise"] == 'It "rained".'

    first_text = "The bank is open " + "every day " * 6 + "."
    second_text = "A river bank " + "by the water " * 7 + "."  # the longer one: cut first if it could be
    write(tmp_path, "WiC", "validation", [{**DATA["WiC"][0], "sentence1": first_text, "sentence2": second_text}])
    [ex] = read_split(tmp_path, "WiC", "validation")
    vocab = FakeVocab()
    out = inputs.encode_example("WiC", ex, vocab, pattern_id=2, max_seq_length=52)
    tokens = [int(t) for t in out["tokens"]]

    def contains(text):
        ids = [vocab.id(t) for t in vocab.tokenize(text)]
        return any(tokens[i:i + len(ids)] == ids for i in range(len(tokens)))

    assert contains(second_text)  # the second sentence is kept whole
    assert contains("The bank is open every day") and not contains(first_text)  # the first is cut
