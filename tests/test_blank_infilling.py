"""Yahoo text-infilling rows (glm_jax/data/blank_infilling.py): upstream's masking,
the row layout token by token, and the text repairs."""

import random

import numpy as np

from glm_jax.data import blank_infilling as blank
from glm_jax.data.embedded_vocab import EmbeddedVocabulary


class Drawn:
    """A random.Random stand-in whose ``sample`` returns chosen indices (unsorted)."""

    def __init__(self, indices):
        self.indices = indices

    def sample(self, population, k):
        assert k == len(self.indices) and all(i in population for i in self.indices)
        return list(self.indices)


def test_masking_merges_runs_into_one_blank():
    text = "how do i cook rice on a stove"
    masked, spans = blank.mask_words(text, 0.4, Drawn([5, 2, 3]))  # int(8 * 0.4) = 3 words
    assert masked == " how do [MASK] rice [MASK] a stove" and spans == [" i cook", " on"]
    masked, spans = blank.mask_words("a b c d e f g h i j", 0.2, Drawn([9, 0]))
    assert masked == " [MASK] b c d e f g h i [MASK]" and spans == [" a", " j"]
    # The real draw: int(n * ratio) distinct words, reproducible from the seed.
    masked, spans = blank.mask_words(" ".join(f"w{i}" for i in range(20)), 0.3, random.Random(7))
    assert sum(len(s.split()) for s in spans) == 6 and masked.count("[MASK]") == len(spans)
    assert (masked, spans) == blank.mask_words(" ".join(f"w{i}" for i in range(20)), 0.3, random.Random(7))


def test_row_layout_token_by_token():
    vocab = EmbeddedVocabulary()
    ct = vocab.command_tokens
    row = blank.blank_row(" how do [MASK] rice [MASK] a stove", [" i cook", " on"], vocab, 16, 0.5)
    part_a = vocab.encode(" how do") + [ct.mask] + vocab.encode(" rice") + [ct.mask] + vocab.encode(" a stove")
    first, second = part_a.index(ct.mask), len(part_a) - 1 - part_a[::-1].index(ct.mask)
    span1, span2 = vocab.encode(" i cook"), vocab.encode(" on")
    length = 16 + 8
    pad_b = length - 16 - len(span1) - len(span2) - 2
    assert row["tokens"].tolist() == (part_a + [ct.pad] * (16 - len(part_a)) + [ct.sop] + span1 + [ct.sop] + span2
                                      + [ct.pad] * pad_b)
    assert row["targets"].tolist() == [0] * 16 + span1 + [ct.eop] + span2 + [ct.eop] + [ct.pad] * pad_b
    assert row["loss_mask"].tolist() == [0] * 16 + [1] * (len(span1) + len(span2) + 2) + [0] * pad_b
    assert row["position_ids"].tolist() == (list(range(16)) + [first] * (len(span1) + 1)
                                            + [second] * (len(span2) + 1) + [0] * pad_b)
    assert row["block_position_ids"].tolist() == (
        [0] * 16 + list(range(1, len(span1) + 2)) + list(range(1, len(span2) + 2)) + [0] * pad_b)
    assert int(row["sep"]) == 16 and blank.row_length(256, 0.3) == 256 + 76
    # A test row: Part A only; no [CLS] and no end token in Part A.
    test = blank.blank_row(" how do [MASK] rice", None, vocab, 16, 0.5)
    assert test["loss_mask"].sum() == 0 and test["tokens"][0] != ct.cls
    assert (test["tokens"][16:] == ct.pad).all()


def test_a_source_longer_than_part_a_keeps_the_blanks_that_fit():
    vocab = EmbeddedVocabulary()
    row = blank.blank_row(" a b c d e f [MASK] g h i j k l m n o p q [MASK]", [" x", " y"], vocab, 10, 0.5)
    part_a = row["tokens"][:10].tolist()
    assert part_a.count(vocab.command_tokens.mask) == 1
    assert np.count_nonzero(row["block_position_ids"] == 1) == 1  # only the first blank's span


def test_tokenization_repairs_and_detokenizer():
    assert blank.fix_tokenization("i don ' t know . . . the u . s . is e . g . big - - ok") == (
        "i don't know ... the u.s. is e.g. big -- ok")
    assert blank.fix_tokenization("it ' s ` ` fine ' ' , i ' m sure they ' re") == "it 's `` fine '' , i 'm sure they 're"  # the space before stays, as upstream
    assert blank.detokenize("a _UNK word <blank> here") == "a [UNK] word [MASK] here"
