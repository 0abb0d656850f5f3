"""Behaviour of the Flax GLM on random tiny models (parity with the official code is
in tests/test_convert.py, which loads the official fixture)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model import GLM, ModelConfig, stack_layers, unstack_layers

TINY = ModelConfig(
    vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=32,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)
B, T = 3, 16


def make_batch(seed=0, seps=(5, 9, 16)):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, TINY.vocab_size, (B, T)).astype(np.int32)
    sep = np.array(seps, np.int32)
    # Part A positions 0..sep-1, then one span at position 2 with block ids 1, 2, ...
    position_ids = np.where(np.arange(T) < sep[:, None], np.arange(T), 2).astype(np.int32)
    block_position_ids = np.maximum(np.arange(T) - sep[:, None] + 1, 0).astype(np.int32)
    return dict(tokens=tokens, position_ids=position_ids, block_position_ids=block_position_ids, sep=sep)


def init(config, seed=0):
    batch = make_batch()
    variables = GLM(config).init(jax.random.PRNGKey(seed), **batch)
    return nn.unbox(variables["params"])


@pytest.fixture(scope="module")
def params():
    return init(TINY)


def forward(params, config=TINY, **batch):
    return GLM(config).apply({"params": params}, **batch)


def test_logits_are_float32_and_shaped(params):
    logits = forward(params, **make_batch())
    assert logits.shape == (B, T, TINY.vocab_size) and logits.dtype == jnp.float32


def test_part_a_does_not_see_part_b(params):
    batch = make_batch()
    changed = dict(batch, tokens=batch["tokens"].copy())
    changed["tokens"][0, 5:] = (changed["tokens"][0, 5:] + 1) % TINY.vocab_size  # row 0: sep 5
    a, b = forward(params, **batch), forward(params, **changed)
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-3


def test_part_a_is_bidirectional_and_part_b_causal(params):
    batch = make_batch()  # row 1: sep 9

    def perturbed(position):
        tokens = batch["tokens"].copy()
        tokens[1, position] = (tokens[1, position] + 1) % TINY.vocab_size
        return forward(params, **dict(batch, tokens=tokens))

    base = forward(params, **batch)
    in_a, in_b = perturbed(3), perturbed(12)
    assert np.abs(base[1, 0] - in_a[1, 0]).max() > 1e-3  # token 0 sees token 3: both in Part A
    np.testing.assert_array_equal(base[1, :12], in_b[1, :12])  # nothing before 12 sees it
    assert np.abs(base[1, 12:] - in_b[1, 12:]).max() > 1e-3


def test_three_mask_forms_agree(params):
    batch = make_batch()
    sep = batch.pop("sep")
    by_sep = forward(params, sep=sep, **batch)
    k, q = np.arange(T)[None, :], np.arange(T)[:, None]
    dense = ((k <= q) | (k < sep[:, None, None])).astype(np.float32)[:, None]
    by_dense = forward(params, attention_mask=dense, **batch)
    by_segments = forward(
        params, segment_ids=np.ones((B, T), np.int32), part_a=np.arange(T) < sep[:, None], **batch
    )
    np.testing.assert_array_equal(by_sep, by_dense)
    np.testing.assert_allclose(by_sep, by_segments, atol=1e-6)


def test_scan_layers_equals_unrolled(params):
    scanned_config = TINY.replace(scan_layers=True)
    scanned = stack_layers(params, TINY.num_layers)
    assert scanned["layers"]["attention"]["query_key_value"]["kernel"].shape == (2, 64, 3, 4, 16)
    batch = make_batch()
    np.testing.assert_allclose(
        forward(scanned, scanned_config, **batch), forward(params, **batch), atol=1e-6
    )
    back = unstack_layers(scanned, TINY.num_layers)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    # A scanned init has exactly the stacked structure.
    assert jax.tree.structure(init(scanned_config)) == jax.tree.structure(scanned)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch", "minimal"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_keeps_values_and_gradients(params, policy, scan):
    batch = make_batch()
    p = stack_layers(params, TINY.num_layers) if scan else params
    base = TINY.replace(scan_layers=scan)

    def loss(p, config):
        return jnp.mean(forward(p, config, **batch) ** 2)

    ref_loss, ref_grad = jax.value_and_grad(loss)(p, base)
    got_loss, got_grad = jax.value_and_grad(loss)(p, base.replace(remat_policy=policy))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), got_grad, ref_grad)


def test_bfloat16_compute_stays_close(params):
    batch = make_batch()
    ref = forward(params, **batch)
    got = forward(params, TINY.replace(dtype="bfloat16"), **batch)
    assert got.dtype == jnp.float32
    err = np.abs(np.asarray(got) - np.asarray(ref)).max()
    assert 0 < err < 0.1 * np.abs(np.asarray(ref)).max(), err


def test_exact_gelu_is_a_small_but_real_difference(params):
    batch = make_batch()
    diff = np.abs(forward(params, TINY.replace(activation="gelu_exact"), **batch) - forward(params, **batch))
    assert 0 < diff.max() < 1e-2


def test_dropout_is_seeded_and_off_when_deterministic():
    config = TINY.replace(embedding_dropout=0.1, attention_dropout=0.1, hidden_dropout=0.1)
    p, batch, model = init(config), make_batch(), GLM(config)

    def run(seed, deterministic):
        return model.apply({"params": p}, **batch, deterministic=deterministic,
                           rngs={"dropout": jax.random.PRNGKey(seed)})

    np.testing.assert_array_equal(run(0, False), run(0, False))
    assert np.abs(run(0, False) - run(1, False)).max() > 1e-3
    np.testing.assert_array_equal(run(0, True), run(1, True))
    np.testing.assert_array_equal(run(0, True), model.apply({"params": p}, **batch))


def test_initialisation_follows_the_spec():
    config = ModelConfig(vocab_size=512, hidden_size=256, num_layers=8, num_heads=4, max_position_embeddings=128)
    p = init(config)
    layer = p["layers_3"]
    assert np.std(p["word_embeddings"]["embedding"]) == pytest.approx(0.02, rel=0.03)
    assert np.std(p["block_position_embeddings"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(layer["attention"]["query_key_value"]["kernel"]) == pytest.approx(0.02, rel=0.03)
    scaled = 0.02 / np.sqrt(2 * 8)  # output projections: N(0, 0.02 / sqrt(2L))
    assert np.std(layer["attention"]["dense"]["kernel"]) == pytest.approx(scaled, rel=0.03)
    assert np.std(layer["mlp"]["dense_4h_to_h"]["kernel"]) == pytest.approx(scaled, rel=0.03)
    assert not np.any(layer["mlp"]["dense_h_to_4h"]["bias"])
    np.testing.assert_array_equal(layer["input_layernorm"]["scale"], np.ones(256))


def test_every_parameter_has_logical_axes():
    batch = make_batch()
    boxed = jax.eval_shape(GLM(TINY).init, jax.random.PRNGKey(0), **batch)["params"]
    specs = nn.get_partition_spec(boxed)
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (path, leaf), spec in zip(leaves, spec_leaves):
        assert len(spec) == leaf.ndim and all(a is not None for a in spec), jax.tree_util.keystr(path)
    assert specs["word_embeddings"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    qkv = specs["layers_0"]["attention"]["query_key_value"]["kernel"]
    assert qkv == jax.sharding.PartitionSpec("embed", "qkv", "heads", "kv")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_heads"):
        TINY.replace(num_heads=5)
    with pytest.raises(ValueError, match="model.activation"):
        TINY.replace(activation="relu")
    with pytest.raises(ValueError, match="model.remat_policy"):
        TINY.replace(remat_policy="everything")
