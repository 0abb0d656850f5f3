"""The held-out blanks report (glm_jax/blank_report.py): which sentences and words
are taken, the row GLM reads a blank from, the ranks and accuracies, and the
model's distribution equal to a direct forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import blank_report as br
from glm_jax.command_tokens import CommandTokens
from glm_jax.model import GLM, ModelConfig

CT = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)


class WordVocab:
    """One id per word (ids from 10), " " ignored; multi-letter words beyond the table are unknown."""

    command_tokens = CT

    def __init__(self, words):
        self.ids = {w: 10 + i for i, w in enumerate(words)}
        self.vocab_size = 10 + len(words)

    def encode(self, text):
        return [self.ids.get(w, CT.unk) for w in text.split()]

    def decode(self, ids):
        names = {v: k for k, v in self.ids.items()}
        return " ".join(names.get(i, "<x>") for i in ids)


WORDS = "the cat sat on a mat dog ran to park and it was fun 42 .".split()


def test_sentences_and_the_blanked_word_are_chosen_deterministically():
    vocab = WordVocab(WORDS)
    texts = ["the cat sat on a mat . Too short here. ** heading ** the dog ran to a park and it was fun .",
             "the dog ran to the park 42 42 ."]
    blanks = br.held_out_blanks(texts, vocab, count=5)
    # Markup and short sentences are skipped; the middle word made of letters is blanked.
    assert [(b.before, b.answer, b.after) for b in blanks] == [
        ("the cat sat", "on", "a mat ."), ("the dog ran to", "the", "park 42 42 .")]
    assert blanks[0].answer_id == vocab.ids["on"]
    assert br.held_out_blanks(texts, vocab, count=1) == blanks[:1]


def test_the_row_is_glm_infilling_one_blank():
    vocab = WordVocab(WORDS)
    blank = br.Blank("the cat", "sat", "on a mat", vocab.ids["sat"])
    short = br.Blank("a", "dog", "ran", vocab.ids["dog"])
    rows = br.blank_rows([blank, short], vocab)
    ids = vocab.ids
    context = [CT.cls, ids["the"], ids["cat"], CT.mask, ids["on"], ids["a"], ids["mat"], CT.eos]
    assert rows["tokens"][0].tolist() == context + [CT.sop]
    assert rows["position_ids"][0].tolist() == list(range(8)) + [3]
    assert rows["block_position_ids"][0].tolist() == [0] * 8 + [1]
    assert rows["sep"].tolist() == [8, 5]
    assert rows["tokens"][1].tolist() == [CT.cls, ids["a"], CT.mask, ids["ran"], CT.eos, CT.sop, 0, 0, 0]


def test_ranks_and_accuracies():
    scores = np.array([[0.1, 0.5, 0.4, 0.0], [0.3, 0.3, 0.2, 0.2]])
    candidates = np.array([True, True, True, False])
    np.testing.assert_array_equal(br.ranks(scores, np.array([2, 0]), candidates), [2, 2])  # a tie ranks last
    np.testing.assert_array_equal(br.ranks(scores, np.array([1, 2]), np.array([False, True, True, True])), [1, 3])


def test_the_models_distribution_is_a_direct_forward_pass():
    vocab = WordVocab(WORDS)
    config = ModelConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32)
    model = GLM(config)
    z = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), z, z, z, sep=jnp.ones(1, jnp.int32))["params"]
    blanks = [br.Blank("the cat", "sat", "on a mat", vocab.ids["sat"]), br.Blank("a", "dog", "ran", vocab.ids["dog"])]
    rows = br.blank_rows(blanks, vocab)
    probs = br.blank_probabilities(params, config, rows, batch_size=1)
    for i in range(2):
        n = int(rows["sep"][i]) + 1  # the row without its padding
        logits = model.apply({"params": params}, *(jnp.asarray(rows[k][i: i + 1, :n]) for k in
                             ("tokens", "position_ids", "block_position_ids")), sep=jnp.asarray(rows["sep"][i: i + 1]))
        np.testing.assert_allclose(probs[i], np.asarray(jax.nn.softmax(logits[0, -1])), rtol=1e-5, atol=1e-6)
    counts = br.token_counts(["the the the cat"], vocab)
    text, figures = br.report(blanks, probs, counts, vocab, shown=1)
    assert "infilling accuracy over 2 blanks" in text and len(text.splitlines()) == 4
    assert figures["baseline_top1"] == 0.0 and 0 <= figures["model_top5"] <= 100
    with pytest.raises(ValueError, match="no held-out sentence"):
        br.run(params, config, vocab, ["too short"], [], count=3)
