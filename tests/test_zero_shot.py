"""LAMBADA accuracy and perplexity (glm_jax/zero_shot.py) equal a direct computation
with the model: each row run alone, log-probabilities summed in numpy."""

import jax
import numpy as np
import pytest

from glm_jax import sharding, train_state, zero_shot
from glm_jax.command_tokens import CommandTokens
from glm_jax.data import language_model as lm
from glm_jax.model import GLM, ModelConfig
from glm_jax.optim import OptimizerConfig, make_optimizer

CT = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5, smask=6, gmask=7)
V = 64
MODEL = ModelConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
                    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)


class NumberedWords:
    """``"w17"`` <-> id 17: the tests can write a passage whose last word is a chosen id."""

    command_tokens = CT

    def encode(self, text):
        return [int(word[1:]) for word in text.split()]


@pytest.fixture(scope="module")
def setup():
    mesh = sharding.mesh_from_config(sharding.MeshConfig())
    optimizer, _ = make_optimizer(OptimizerConfig())
    params = train_state.init_train_state(MODEL, optimizer, mesh, 3).params
    return mesh, params, zero_shot.make_score_step(MODEL, mesh)


def direct(params, row):
    """``(nll, all answer tokens are the argmax)`` of one row, in numpy."""
    inputs = {k: row[k][None] for k in ("tokens", "position_ids", "block_position_ids")}
    logits = np.asarray(GLM(MODEL).apply({"params": params}, **inputs, sep=row["sep"][None], deterministic=True))[0]
    logits = logits.astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    mask = row["loss_mask"] == 1
    nll = -log_probs[np.arange(len(row["targets"])), row["targets"]][mask].sum()
    return nll, bool(np.all(logits.argmax(-1)[mask] == row["targets"][mask]))


@pytest.mark.parametrize("unidirectional", [False, True])
def test_lambada_accuracy_is_the_share_of_passages_whose_last_word_is_the_argmax(setup, unidirectional):
    mesh, params, step = setup
    vocab = NumberedWords()
    texts, expected = [], []
    for i in range(11):
        context = [10 + (7 * i + j) % 40 for j in range(3 + i % 4)]
        probe = lm.lambada_row(context, [10], 16, CT, unidirectional=unidirectional)
        inputs = {k: probe[k][None] for k in ("tokens", "position_ids", "block_position_ids")}
        logits = GLM(MODEL).apply({"params": params}, **inputs, sep=probe["sep"][None], deterministic=True)
        scored = int(np.flatnonzero(probe["loss_mask"])[-1])
        best = int(np.argmax(logits[0, scored]))
        # Every other passage ends with the model's own guess (any id: this test's
        # vocabulary writes every id as a word), the rest with another word.
        last = best if i % 2 == 0 else (best + 1) % V
        texts.append(" ".join(f"w{t}" for t in [*context, last]))
        expected.append(direct(params, lm.lambada_row(context, [last], 16, CT, unidirectional=unidirectional))[1])
    result = zero_shot.lambada_accuracy(step, params, vocab, texts, mesh, seq_length=16,
                                        unidirectional=unidirectional, batch_size=4)
    assert expected == [i % 2 == 0 for i in range(11)]
    assert result["examples"] == 11 and result["correct"] == 6
    assert result["accuracy"] == pytest.approx(100 * sum(expected) / 11)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_perplexity_is_the_nll_of_every_window_row(setup, unidirectional):
    mesh, params, step = setup
    rng = np.random.default_rng(0)
    documents = [" ".join(f"w{t}" for t in rng.integers(10, V, n)) for n in (23, 1, 9, 40)]
    vocab = NumberedWords()
    result = zero_shot.perplexity(step, params, vocab, documents, num_words=70, mesh=mesh, seq_length=12,
                                  stride=4, unidirectional=unidirectional, batch_size=3)
    rows = [row for d in documents for row in lm.perplexity_rows(vocab.encode(d), 12, 4, CT,
                                                                 unidirectional=unidirectional)]
    nll = sum(direct(params, row)[0] for row in rows)
    assert result["tokens"] == 73
    assert result["loss"] == pytest.approx(nll / 72, rel=1e-5)
    assert result["ppl"] == pytest.approx(np.exp(nll / 72), rel=1e-5)
    assert result["adjusted_ppl"] == pytest.approx(np.exp(nll / 72 * 72 / 69), rel=1e-5)


def test_row_scores_on_fixed_logits():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]]], np.float32))
    out = zero_shot.row_scores(logits, np.array([[0, 1, 2]]), np.array([[1, 1, 0]]))
    assert float(out["nll"][0]) == pytest.approx(-np.log(0.7) - np.log(0.3), rel=1e-6)
    assert float(out["all_correct"][0]) == 0.0  # the second target is not the argmax
    assert float(out["tokens"][0]) == 2.0
    out = zero_shot.row_scores(logits, np.array([[0, 2, 1]]), np.array([[1, 1, 0]]))
    assert float(out["all_correct"][0]) == 1.0  # the unmasked third place does not count
