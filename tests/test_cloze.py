"""Cloze scoring and losses (spec 4.1) against a plain numpy recomputation.

The batches are real SuperGLUE inputs (glm_jax.data.superglue.inputs.encode_example on
RTE and COPA examples with a word-level fake vocabulary); the reference runs the
tiny fp32 GLM one row at a time and does every reduction in float64 numpy loops.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import cloze, sharding, train, train_state
from glm_jax.command_tokens import CommandTokens
from glm_jax.model import GLM, ModelConfig
from glm_jax.optim import OptimizerConfig, make_optimizer
from glm_jax.data.superglue.inputs import encode_example
from glm_jax.data.superglue.readers import Example

CMD = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)
CONFIG = ModelConfig(vocab_size=192, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64)


class WordVocab:
    """Words and punctuation (with their leading space) to ids 10.., as met."""

    command_tokens = CMD

    def __init__(self):
        self.table: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.table.setdefault(t, 10 + len(self.table)) for t in re.findall(r"\s?\w+|\s?[^\w\s]", text)]


def stack(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def rte_rows(n: int) -> dict[str, np.ndarray]:
    """``n`` single-token rows (with example ids) of short random RTE pairs."""
    rng = np.random.default_rng(0)
    words = "cat dog bird fish sat ran near the mat road happy sad".split()
    vocab, rows = WordVocab(), []
    for i in range(n):
        premise, hypothesis = (" ".join(rng.choice(words, 4)).capitalize() + "." for _ in range(2))
        ex = Example(f"train-{i}", {"premise": premise, "hypothesis": hypothesis}, int(rng.integers(2)))
        rows.append({**encode_example("RTE", ex, vocab, max_seq_length=24), "example_id": np.int32(i)})
    return stack(rows)


@pytest.fixture(scope="module")
def model_and_params():
    model = GLM(CONFIG)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = jax.jit(lambda: model.init(jax.random.key(3), ids, ids, ids, sep=jnp.array([2]))["params"])()
    return model, nn.unbox(params)


@pytest.fixture(scope="module")
def batches():
    vocab = WordVocab()
    rte = [
        Example(f"train-{i}", {"premise": p, "hypothesis": h}, label)
        for i, (p, h, label) in enumerate([
            ("The cat sat on the mat.", "A cat sat.", 1),
            ("It rained all day long in the town.", "The town was dry.", 0),
            ("Tom ate bread.", "Tom ate.", 1),
        ])
    ]
    single = stack([encode_example("RTE", ex, vocab, max_seq_length=24) for ex in rte])
    copa = [
        Example("train-0", {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang a long song.",
                            "question": "cause"}, 0, candidates=("He slipped.", "He sang a long song.")),
        Example("train-1", {"premise": "The sun rose.", "choice1": "It got dark.", "choice2": "It got light.",
                            "question": "effect"}, 1, candidates=("It got dark.", "It got light.")),
    ]
    rows = [encode_example("COPA", ex, vocab, max_seq_length=24) for ex in copa]
    # Pad every example to 3 candidates: the third is a padded (zero) candidate.
    padded = []
    for row in rows:
        out = {}
        for key, value in row.items():
            if key == "label":
                out[key] = value
                continue
            pad = np.zeros((1, *value.shape[1:]), value.dtype)
            out[key] = np.concatenate([value, pad])
        out["choice_mask"] = np.array([1, 1, 0], np.int32)
        padded.append(out)
    multi = stack(padded)
    return single, multi


def row_logits(model, params, batch, index) -> np.ndarray:
    """Full ``[T, V]`` logits of one row, through a model call on that row alone."""
    one = {k: batch[k][index][None] for k in ("tokens", "position_ids", "block_position_ids")}
    out = _apply(params, **one, sep=batch["sep"][index][None])
    return np.asarray(out[0], np.float64)


@jax.jit
def _apply(params, **inputs):
    return GLM(CONFIG).apply({"params": params}, **inputs)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_single_token_choice_logits_are_the_verbalizer_logits_at_sop(model_and_params, batches):
    model, params = model_and_params
    single, _ = batches
    got = np.asarray(jax.jit(lambda p, b: cloze.choice_logits(model, p, b))(params, single))
    assert got.shape == (3, 2)
    for b in range(3):
        logits = row_logits(model, params, single, b)
        sep = int(single["sep"][b])
        assert single["tokens"][b, sep] == CMD.sop
        want = [logits[sep, t] for t in single["choice_ids"][b]]
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
    # The full-logits path gives the same numbers.
    full = _apply(params, **{k: single[k] for k in ("tokens", "position_ids", "block_position_ids", "sep")})
    np.testing.assert_allclose(got, cloze.single_token_logits(full, single["sep"], single["choice_ids"]), atol=1e-5)


def test_single_token_path_never_builds_the_full_logits(model_and_params, batches):
    model, params = model_and_params
    single, _ = batches
    b, t = single["tokens"].shape

    hlo = jax.jit(lambda p: cloze.choice_logits(model, p, single)).lower(params).compile().as_text()
    assert f"f32[{b},{t},{CONFIG.vocab_size}]" not in hlo
    # ... whereas the multi-token path needs them (sanity check of the probe).
    full = jax.jit(lambda p: model.apply({"params": p}, single["tokens"], single["position_ids"],
                                         single["block_position_ids"], sep=single["sep"]))
    assert f"f32[{b},{t},{CONFIG.vocab_size}]" in full.lower(params).compile().as_text()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_multi_token_scores_losses_and_predictions_match_numpy(model_and_params, batches, length_penalty):
    model, params = model_and_params
    _, multi = batches
    fn = jax.jit(lambda p, b: cloze.choice_logits(model, p, b, length_penalty=length_penalty))
    got = np.asarray(fn(params, multi))
    B, C = multi["choice_mask"].shape
    want = np.zeros((B, C))
    for b in range(B):
        for c in range(C):
            if not multi["choice_mask"][b, c]:
                want[b, c] = -10000.0
                continue
            flat = {k: v.reshape(B * C, *v.shape[2:]) for k, v in multi.items() if v.ndim >= 2}
            logp = log_softmax(row_logits(model, params, flat, b * C + c))
            total, n = 0.0, 0
            for j in range(logp.shape[0]):
                if multi["loss_mask"][b, c, j]:
                    total += logp[j, multi["targets"][b, c, j]]
                    n += 1
            assert n == multi["answer_lengths"][b, c]  # candidate tokens + [eop]
            want[b, c] = total / n**length_penalty
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # Logits over the answer window only (8 rows from [sop]) give the same scores.
    window = cloze.answer_window(multi["loss_mask"])
    assert window == 8 and multi["answer_lengths"].max() <= 8
    windowed = jax.jit(lambda p, b: cloze.choice_logits(model, p, b, length_penalty=length_penalty,
                                                         answer_window=window))(params, multi)
    np.testing.assert_allclose(windowed, want, rtol=1e-5, atol=1e-4)
    # CE over candidates and the mix loss, per example.
    for loss in ("cross_entropy", "mix"):
        sums = cloze.cloze_sums(jnp.asarray(got), multi, loss)
        ce = [np.log(np.exp(want[b, :2]).sum()) - want[b, multi["label"][b]] for b in range(B)]
        expected = sum(ce) - (sum(want[b, multi["label"][b]] for b in range(B)) if loss == "mix" else 0.0)
        np.testing.assert_allclose(float(sums.loss), expected, rtol=1e-5)
        assert float(sums.examples) == B
    assert list(cloze.predictions(got)) == [int(np.argmax(want[b])) for b in range(B)]


def test_an_answer_longer_than_the_window_is_nan_not_truncated():
    hidden = jnp.ones((2, 6, 4))
    embedding = jnp.eye(5, 4)
    loss_mask = jnp.array([[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]])
    targets = jnp.ones((2, 6), jnp.int32)
    sep = jnp.array([1, 3])
    logits, tgt, mask = cloze.window_logits(hidden, embedding, sep, targets, loss_mask, 2, jnp.float32)
    assert logits.shape == (2, 2, 5) and tgt.shape == (2, 2)
    assert np.isnan(mask[0]).all() and list(mask[1]) == [1.0, 1.0]  # row 0 has 3 answer tokens
    # Windows reaching past the row's end do not count its last row twice.
    _, _, mask = cloze.window_logits(hidden, embedding, jnp.array([4, 4]), targets, jnp.array([[0, 0, 0, 0, 1, 1]] * 2),
                                     4, jnp.float32)
    assert list(mask[0]) == [1.0, 1.0, 0.0, 0.0]
    assert cloze.answer_window(np.array([[0, 1, 1, 0]])) == 8 and cloze.answer_window(np.ones((1, 9))) == 16


def test_padded_candidates_are_masked_out():
    scores = jnp.array([[-1.0, -2.0, 5.0]])
    masked = cloze.mask_choices(scores, jnp.array([[1, 1, 0]]))
    np.testing.assert_allclose(masked, [[-1.0, -2.0, -10000.0]])
    # The padded candidate never wins and adds nothing to the cross-entropy.
    assert int(cloze.predictions(masked)[0]) == 0
    ce = cloze.per_example_loss(masked, jnp.array([1]))
    np.testing.assert_allclose(ce, [np.log(np.exp(-1.0) + np.exp(-2.0)) + 2.0], rtol=1e-6)


def test_length_penalty_divides_by_the_answer_token_count():
    # Uniform logits over 4 tokens: every answer token has log-prob -log 4.
    logits = jnp.zeros((2, 5, 4))
    targets = jnp.ones((2, 5), jnp.int32)
    loss_mask = jnp.array([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])  # row 1: a padded candidate
    lg4 = np.log(4.0)
    np.testing.assert_allclose(cloze.candidate_scores(logits, targets, loss_mask), [-3 * lg4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(cloze.candidate_scores(logits, targets, loss_mask, 1.0), [-lg4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        cloze.candidate_scores(logits, targets, loss_mask, 0.5), [-3 * lg4 / np.sqrt(3), 0.0], rtol=1e-6
    )


def test_mix_loss_is_minus_the_gold_score_plus_cross_entropy():
    logits = jnp.array([[-0.5, -3.0], [-2.0, -1.0]])
    label = jnp.array([0, 0])
    ce = np.array([np.log(np.exp(-0.5) + np.exp(-3.0)) + 0.5, np.log(np.exp(-2.0) + np.exp(-1.0)) + 2.0])
    np.testing.assert_allclose(cloze.per_example_loss(logits, label, "cross_entropy"), ce, rtol=1e-6)
    np.testing.assert_allclose(cloze.per_example_loss(logits, label, "mix"), ce + np.array([0.5, 2.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="hinge"):
        cloze.per_example_loss(logits, label, "hinge")


def test_unknown_labels_and_padding_rows_are_ignored():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0], [0.0, 5.0]])
    batch = {"label": jnp.array([0, 0, -1, 1]), "example_id": jnp.array([0, 1, 2, -1])}
    sums = cloze.cloze_sums(logits, batch)
    assert float(sums.examples) == 2 and float(sums.correct) == 1
    ce = np.log(1 + np.exp(-2.0))
    np.testing.assert_allclose(float(sums.loss), ce + (ce + 2.0), rtol=1e-6)
    assert np.all(np.isfinite(cloze.per_example_loss(logits, batch["label"])))


def test_train_step_loss_microbatches_and_padding_rows(model_and_params):
    _, pretrained = model_and_params
    train_rows = rte_rows(20)
    model = CONFIG.replace(hidden_dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    mesh = sharding.make_mesh((2, 2, 2))
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=1e-3, decay_steps=10))
    _, state_shardings = train_state.train_state_shardings(model, optimizer, mesh)
    steps = {m: train.make_train_step(model, optimizer, mesh, loss=cloze.ChoiceLoss(), num_microbatches=m) for m in (1, 2)}

    def one_step(batch, microbatches=1):
        state = jax.jit(lambda p: train_state.TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)),
                        out_shardings=state_shardings)(pretrained)
        return jax.tree.map(float, steps[microbatches](state, sharding.shard_batch(batch, mesh))[1])

    # Rows 12..15 are batch padding (example_id -1) or unlabelled (label -1).
    batch = {k: v[:16].copy() for k, v in train_rows.items()}
    batch["example_id"][12:14] = -1
    batch["label"][14:16] = -1
    full = one_step(batch)
    # The loss is the mean per-example cross-entropy over the verbalizer logits at [sop].
    logits = np.asarray(jax.jit(lambda p, b: cloze.choice_logits(GLM(model), p, b))(pretrained, batch))[:12]
    ce = np.mean([np.log(np.exp(row).sum()) - row[y] for row, y in zip(logits, batch["label"][:12])])
    assert full["loss"] == pytest.approx(ce, rel=1e-5) and full["examples"] == 12
    # Other content in those rows changes nothing.
    other = {k: v.copy() for k, v in batch.items()}
    for k in ("tokens", "position_ids", "block_position_ids", "sep"):
        other[k][12:16] = train_rows[k][16:20]
    assert one_step(other) == pytest.approx(full, rel=1e-6)
    # Two microbatches give the same update statistics.
    micro = one_step(batch, 2)
    assert micro["loss"] == pytest.approx(full["loss"], rel=1e-6)
    assert micro["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-5)


def test_predict_pads_multi_token_batches_to_the_mesh(model_and_params, batches):
    model, params = model_and_params
    _, multi = batches  # 2 examples: predict pads them to the 4 data*fsdp shards
    mesh = sharding.make_mesh((2, 2, 2))
    step = cloze.eval_step_for(CONFIG, mesh, "mix", 1.0)
    choices, sums = cloze.predict(step, params, [multi], mesh)
    want = jax.jit(lambda p, b: cloze.choice_logits(model, p, b, length_penalty=1.0))(params, multi)
    assert choices == {0: int(np.argmax(want[0])), 1: int(np.argmax(want[1]))}
    assert sums["examples"] == sums["predicted"] == 2
    assert sums["loss"] == pytest.approx(float(cloze.cloze_sums(want, multi, "mix").loss), rel=1e-5)
