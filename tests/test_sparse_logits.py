"""The output layer computed only at the loss positions (glm_jax/sparse_logits.py) and
the materialisation helpers (glm_jax/model/materialize.py): the same sums and
gradients as the full-logits path, whether the positions fit or fall back, grouped,
smoothed, sharded over 8 devices, in bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm_jax import sharding, sparse_logits, train, train_state
from glm_jax.model import ModelConfig, materialize

V, D = 96, 16


def full_path(hidden, embedding, targets, mask, smoothing):
    """The reference: logits everywhere (the model's head) and ``train.loss_sums``."""
    logits = jnp.einsum("btd,vd->btv", hidden, embedding.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return train.loss_sums(logits, targets, mask, smoothing)


def random_inputs(seed, batch=4, length=24, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    sep = rng.integers(4, length - 2, batch)
    mask = (np.arange(length)[None] >= sep[:, None]).astype(np.int32)
    return (jnp.asarray(rng.normal(size=(batch, length, D)), dtype), jnp.asarray(rng.normal(size=(V, D)) * 0.5,
            jnp.float32), jnp.asarray(rng.integers(0, V, (batch, length)), jnp.int32), jnp.asarray(mask))


def test_positions_lists_each_groups_loss_positions_in_order():
    active = np.array([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]], bool)
    index, valid = sparse_logits._positions(jnp.asarray(active), 4)
    for row, idx, ok in zip(active, np.asarray(index), np.asarray(valid)):
        expected = np.flatnonzero(row)
        assert ok.sum() == len(expected)
        np.testing.assert_array_equal(idx[ok], expected)


def test_capacity_rounds_up_to_a_multiple_of_eight_and_checks_its_range():
    assert sparse_logits.capacity_for(2048, 0.25) == 512
    assert sparse_logits.capacity_for(100, 0.3) == 32
    assert sparse_logits.capacity_for(20, 0.99) == 20
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        sparse_logits.capacity_for(100, 0.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("capacity,groups", [(1.0, 1), (0.75, 1), (0.75, 2), (0.1, 1)])
def test_sums_and_gradients_equal_the_full_logits_path(capacity, groups, smoothing):
    hidden, embedding, targets, mask = random_inputs(0)
    rows = hidden.shape[0] // groups * hidden.shape[1]
    counts = np.asarray(mask).reshape(groups, rows).sum(1)
    fits = counts.max() <= sparse_logits.capacity_for(rows, capacity)
    assert fits == (capacity > 0.5)  # 0.75 takes the sparse branch, 0.1 the fallback

    def sparse(h, e):
        sums = sparse_logits.token_loss_sums(h, e, targets, mask, capacity_fraction=capacity,
                                             label_smoothing=smoothing, groups=groups)
        return sums.ce, sums

    def full(h, e):
        sums = full_path(h, e, targets, mask, smoothing)
        return sums.ce, sums

    (_, got), got_grads = jax.value_and_grad(sparse, argnums=(0, 1), has_aux=True)(hidden, embedding)
    (_, want), want_grads = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(hidden, embedding)
    np.testing.assert_allclose(float(got.ce), float(want.ce), rtol=1e-6)
    assert float(got.correct) == float(want.correct) and float(got.loss_tokens) == float(want.loss_tokens)
    ran = groups * sparse_logits.capacity_for(rows, capacity) if fits else hidden.shape[0] * hidden.shape[1]
    assert float(got.logit_positions) == ran
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(got_grads[0]).max()) > 1e-2  # not trivially zero
    # No gradient reaches positions the loss does not read.
    assert float(jnp.abs(jnp.where(mask[..., None] == 0, got_grads[0], 0.0)).max()) == 0.0


def test_bfloat16_hidden_states_match_the_full_path():
    hidden, embedding, targets, mask = random_inputs(1, dtype=jnp.bfloat16)
    got = sparse_logits.token_loss_sums(hidden, embedding, targets, mask, capacity_fraction=0.75, groups=1)
    want = full_path(hidden, embedding, targets, mask, 0.0)
    np.testing.assert_allclose(float(got.ce), float(want.ce), rtol=1e-6)
    grad = jax.grad(lambda h: sparse_logits.token_loss_sums(h, embedding, targets, mask, capacity_fraction=0.75,
                                                            groups=1).ce)(hidden)
    want_grad = jax.grad(lambda h: full_path(h, embedding, targets, mask, 0.0).ce)(hidden)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(want_grad, np.float32), rtol=2e-2,
                               atol=2e-3)


TINY = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16,
                   embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)


def glm_batch(seed=0, batch=16, length=16):
    rng = np.random.default_rng(seed)
    sep = rng.integers(6, length - 1, batch).astype(np.int32)
    part_b = np.arange(length) >= sep[:, None]
    return dict(
        tokens=rng.integers(0, TINY.vocab_size, (batch, length)).astype(np.int32),
        targets=rng.integers(0, TINY.vocab_size, (batch, length)).astype(np.int32),
        loss_mask=part_b.astype(np.int32),
        position_ids=np.where(part_b, sep[:, None] - 1, np.arange(length)).astype(np.int32),
        block_position_ids=np.maximum(np.arange(length) - sep[:, None] + 1, 0).astype(np.int32),
        sep=sep,
    )


def sgd_step(loss, mesh, params, batch):
    """One SGD(1.0) step: (metrics, gradient) on the host."""
    sgd = optax.sgd(1.0)
    _, shardings = train_state.train_state_shardings(TINY, sgd, mesh)
    state = jax.device_put(train_state.TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                                                  opt_state=sgd.init(params)), shardings)
    new_state, metrics = train.make_train_step(TINY, sgd, mesh, loss=loss)(state, sharding.shard_batch(batch, mesh))
    grads = jax.tree.map(lambda a, b: a - b, params, jax.device_get(new_state.params))
    return jax.device_get(metrics), grads


def test_train_step_on_eight_devices_equals_the_full_logits_step_on_one():
    mesh1 = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    params = jax.device_get(train_state.init_train_state(TINY, optax.sgd(1.0), mesh1, 0).params)
    batch = glm_batch()
    want, want_grads = sgd_step(train.TokenLoss(), mesh1, params, batch)
    # Four batch shards of 4 rows x 16 positions, at most 4 x 10 loss tokens each: capacity
    # 0.75 (48) holds them, so the sharded step takes the sparse path.
    assert batch["loss_mask"].reshape(4, -1).sum(1).max() <= 48
    got, got_grads = sgd_step(train.TokenLoss(logits_capacity=0.75), sharding.make_mesh((2, 2, 2)), params, batch)
    for name in ("loss", "accuracy", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
    assert want["logit_positions"] == 16 * 16 and got["logit_positions"] == 4 * 48
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_train_config_names_a_bad_capacity():
    with pytest.raises(ValueError, match="train.logits_capacity"):
        train.TrainConfig(logits_capacity=1.5)
    assert train.TrainConfig(logits_capacity=None).logits_capacity is None


def test_materialize_keeps_values_and_gradients_on_every_platform(monkeypatch):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
    assert "cond" in str(jax.make_jaxpr(materialize.materialize)(x))  # CPU: a conditional
    np.testing.assert_array_equal(np.asarray(jax.jit(materialize.materialize)(x)), np.asarray(x))
    grad = jax.grad(lambda v: jnp.sum(jnp.sin(materialize.materialize_gradient(v))))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(jnp.cos(x)))
    nan = x.at[0, 0].set(jnp.nan)  # the other branch: values and the NaN kept
    np.testing.assert_array_equal(np.asarray(jax.jit(materialize.materialize)(nan)), np.asarray(nan))

    monkeypatch.setattr(materialize.attention, "target_platform", lambda: "tpu")
    jaxpr = str(jax.make_jaxpr(lambda v: materialize.materialize(v))(x))  # a new function: no cached trace
    assert "optimization_barrier" in jaxpr and "cond" not in jaxpr
