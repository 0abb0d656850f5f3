"""Seq2seq rows (glm_jax/data/seq2seq.py) token by token against the official
Seq2SeqDataset rules (spec 2.4, 4.4)."""

import pytest

from glm_jax.command_tokens import CommandTokens
from glm_jax.data import seq2seq

CT = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5, smask=6, gmask=7)
NO_TASK_MASK = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)
CONTENT = [50, 51]  # " Content:"


def lists(row):
    return {k: (v.tolist() if k != "sep" else int(v)) for k, v in row.items()}


def test_summary_training_row():
    source = seq2seq.summary_source([60, 61, 62], CONTENT, 8, CT)
    assert source == [1, 6, 50, 51, 60, 61, 62]  # [CLS] [sMASK] " Content:" article
    row = lists(seq2seq.seq2seq_row(source, [70, 71], 8, 4, CT))
    #                  Part A, padded inside to 8          | [sop] t1 t2 [eop]->input stops before
    assert row["tokens"] == [1, 6, 50, 51, 60, 61, 62, 0, 3, 70, 71, 4]
    assert row["targets"] == [0] * 8 + [70, 71, 4, 0]
    assert row["loss_mask"] == [0] * 8 + [1, 1, 1, 0]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 5, 6, 7, 1, 1, 1, 1]  # the pads keep their positions
    assert row["block_position_ids"] == [0] * 8 + [1, 2, 3, 4]
    assert row["sep"] == 8


def test_long_article_and_long_target_are_cut():
    source = seq2seq.summary_source(list(range(60, 80)), CONTENT, 8, NO_TASK_MASK)
    assert source == [1, 2, 50, 51, 60, 61, 62, 63]  # [MASK] without task masks; article cut to fit
    row = lists(seq2seq.seq2seq_row(source, [70, 71, 72, 73, 74], 8, 4, NO_TASK_MASK))
    assert row["targets"][8:] == [70, 71, 72, 73]  # target + [eop] cut to tgt_length: no [eop] left
    assert row["loss_mask"][8:] == [1, 1, 1, 1]
    assert row["tokens"][8:] == [3, 70, 71, 72]


def test_evaluation_row_is_part_a_and_sop():
    row = lists(seq2seq.seq2seq_row([1, 6, 50, 51, 60], None, 6, 4, CT))
    assert row == {"tokens": [1, 6, 50, 51, 60, 0, 3], "position_ids": [0, 1, 2, 3, 4, 5, 1],
                   "block_position_ids": [0, 0, 0, 0, 0, 0, 1], "sep": 6}


def test_question_generation_source_centres_on_the_answer():
    passage = list(range(100, 120)) + [90, 91]  # ... " Question:"
    answer, pattern = [80, 81, 110], [110]  # " Answer: x", " x"
    source = seq2seq.question_source(passage, answer, pattern, 12, CT)
    # Budget 12 - 3 - 2 = 7 passage tokens, from max(10 - 3, 0) = 7: tokens 107..113.
    assert source == [1, 107, 108, 109, 110, 111, 112, 113, 6, 80, 81, 110]
    short = seq2seq.question_source([100, 90, 91], answer, pattern, 12, CT)
    assert short == [1, 100, 90, 91, 6, 80, 81, 110]
    absent = seq2seq.question_source(list(range(100, 120)), answer, [999], 12, CT)
    assert absent[1:8] == list(range(100, 107))  # no answer in the passage: from its start
    row = lists(seq2seq.seq2seq_row(source, [70], 12, 2, CT))
    assert row["position_ids"][12:] == [8, 8]  # Part B sits at the blank, after the passage


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="more than src_length=4"):
        seq2seq.seq2seq_row([1, 6, 9, 9, 9], [7], 4, 2, CT)
    with pytest.raises(ValueError, match="no blank"):
        seq2seq.seq2seq_row([1, 9], [7], 4, 2, CT)


class Words:
    """Each word its id (a leading space is id 9), from 20 up."""

    command_tokens = CT

    def __init__(self):
        self.ids = {}

    def encode(self, text):
        return ([9] if text.startswith(" ") else []) + [self.ids.setdefault(w, 20 + len(self.ids)) for w in text.split()]


def test_summary_row_encodes_the_pieces_separately():
    vocab = Words()
    row = lists(seq2seq.summary_row("a b", "c", vocab, 8, 3))
    # " a b" -> 9 20 21; " Content:" -> 9 22; " c" -> 9 23.
    assert row["tokens"] == [1, 6, 9, 22, 9, 20, 21, 0, 3, 9, 23]
    assert row["targets"][8:] == [9, 23, 4]
    assert lists(seq2seq.summary_row("a b", None, vocab, 8, 3))["tokens"] == [1, 6, 9, 22, 9, 20, 21, 0, 3]


def test_question_generation_row_puts_the_blank_before_the_answer():
    vocab = Words()
    row = lists(seq2seq.question_generation_row("p q ", "q", "what", vocab, 10, 3))
    # "p q Question:" -> 20 21 22; " Answer: q" -> 9 23 21; " what" -> 9 24.
    assert row["tokens"][:9] == [1, 20, 21, 22, 6, 9, 23, 21, 0]
    assert row["position_ids"][10:] == [4, 4, 4] and row["targets"][10:] == [9, 24, 4]
