"""The train and eval steps on a tiny GLM: token-level loss, sharding, accumulation,
remat, bf16, dropout keys, and the config sections (8 fake CPU devices, conftest).

Most tests run the step with ``optax.sgd(1.0)``, so that ``params - new_params`` is
exactly the gradient the step computed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from glm_jax import config as config_lib
from glm_jax import sharding, train, train_state
from glm_jax.model import GLM, ModelConfig, stack_layers
from glm_jax.optim import OptimizerConfig, make_optimizer

TINY = ModelConfig(
    vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)
B, T = 16, 16
SGD = optax.sgd(1.0)
# CPU compile time dominates these tests; skipping XLA's LLVM optimisations halves it.
# Every comparison is between programs compiled the same way, or against numpy at
# float32 tolerances.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_fast(jitted, *args):
    """``jitted`` compiled for ``args`` (shardings and donation included), quickly."""
    return jitted.lower(*args).compile(compiler_options=FAST_COMPILE)


def make_batch(seed=0, b=B):
    """Part A then one Part B span per row; the loss mask (Part B) has a different
    number of tokens in every row."""
    rng = np.random.default_rng(seed)
    sep = rng.integers(2, T - 1, b).astype(np.int32)
    part_b = np.arange(T) >= sep[:, None]
    return dict(
        tokens=rng.integers(0, TINY.vocab_size, (b, T)).astype(np.int32),
        targets=rng.integers(0, TINY.vocab_size, (b, T)).astype(np.int32),
        loss_mask=part_b.astype(np.int32),
        position_ids=np.where(part_b, 1, np.arange(T)).astype(np.int32),
        block_position_ids=np.maximum(np.arange(T) - sep[:, None] + 1, 0).astype(np.int32),
        sep=sep,
    )


@pytest.fixture(scope="module")
def mesh8():
    return sharding.make_mesh((2, 2, 2))


@pytest.fixture(scope="module")
def mesh1():
    return sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def initial(mesh8):
    """A state initialised directly on the 2x2x2 mesh."""
    return train_state.init_train_state(TINY, SGD, mesh8, jax.random.key(42))


@pytest.fixture(scope="module")
def params(initial):
    return jax.device_get(initial.params)


def place(params, tx, mesh, config=TINY, step=0):
    """A state holding ``params``, copied into the layout for ``mesh``."""
    params = jax.device_get(params)  # a fresh copy: the step donates its state
    _, shardings = train_state.train_state_shardings(config, tx, mesh)
    state = train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params))
    return jax.device_put(state, shardings)


def run_step(params, mesh, config=TINY, num_microbatches=1, batch=None):
    """One SGD(1.0) step: (metrics, grads) as host values."""
    batch = sharding.shard_batch(make_batch() if batch is None else batch, mesh)
    state = place(params, SGD, mesh, config)
    step = compile_fast(train.make_train_step(config, SGD, mesh, num_microbatches=num_microbatches), state, batch)
    new_state, metrics = step(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, params, jax.device_get(new_state.params))
    return jax.device_get(metrics), grads, new_state


@pytest.fixture(scope="module")
def reference(params, mesh1):
    """The single-device, single-microbatch step everything else is compared with."""
    metrics, grads, _ = run_step(params, mesh1)
    return metrics, grads


def assert_trees_close(a, b, **tolerance):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tolerance)


def test_init_is_sharded_and_follows_the_initialisers(initial, params):
    qkv = initial.params["layers_0"]["attention"]["query_key_value"]["kernel"]
    assert qkv.sharding.spec == P("fsdp", None, "tensor", None)
    assert initial.params["word_embeddings"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert int(initial.step) == 0 and initial.step.sharding.spec == P()
    # Each device drew its own shard; together they are one N(0, 0.02) sample (the
    # 2-process test checks they equal a single process's draw).
    embedding = params["word_embeddings"]["embedding"]
    assert abs(embedding.std() - TINY.init_std) < 0.1 * TINY.init_std and abs(embedding.mean()) < 1e-3
    out_std = TINY.init_std / np.sqrt(2 * TINY.num_layers)
    assert abs(params["layers_1"]["mlp"]["dense_4h_to_h"]["kernel"].std() - out_std) < 0.1 * out_std
    np.testing.assert_array_equal(params["final_layernorm"]["scale"], 1.0)
    np.testing.assert_array_equal(params["layers_0"]["attention"]["dense"]["bias"], 0.0)
    # Shards are not copies of each other.
    assert np.abs(embedding[:, :8] - embedding[:, 8:16]).min() < np.abs(embedding).max()
    assert not np.allclose(embedding[: TINY.vocab_size // 2], embedding[TINY.vocab_size // 2 :])


def test_optimizer_state_is_sharded_like_params(mesh8):
    tx, _ = make_optimizer(OptimizerConfig(decay_steps=10, warmup=0.0))
    _, shardings = train_state.train_state_shardings(TINY, tx, mesh8)
    adam = shardings.opt_state[1][0]
    assert adam.count.spec == P()
    assert adam.mu == shardings.params and adam.nu == shardings.params
    assert adam.mu["layers_1"]["mlp"]["dense_h_to_4h"]["kernel"].spec == P("fsdp", "tensor")


def test_loss_sums_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 4
    targets = rng.integers(0, 11, (3, 5))
    mask = (rng.random((3, 5)) < 0.6).astype(np.int32)
    sums = jax.jit(train.loss_sums)(logits, targets, mask)
    logits = logits.astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.ce), (ce * mask).sum(), rtol=1e-5)
    assert float(sums.correct) == ((logits.argmax(-1) == targets) * mask).sum()
    assert float(sums.loss_tokens) == mask.sum()


def test_loss_is_token_level_mean_over_the_batch(params, mesh8, reference):
    batch = make_batch()
    counts = batch["loss_mask"].sum(1)
    assert len(set(counts.tolist())) > 4  # rows have different numbers of loss tokens

    forward = compile_fast(jax.jit(lambda p, x: GLM(TINY).apply({"params": p}, **x)), params, batch)
    logits = np.asarray(forward(params, batch), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
    token_mean = (ce * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
    mean_of_means = ((ce * batch["loss_mask"]).sum(1) / counts).mean()
    assert abs(token_mean - mean_of_means) > 1e-3  # the two definitions really differ here
    accuracy = ((logits.argmax(-1) == batch["targets"]) * batch["loss_mask"]).sum() / counts.sum()

    metrics, _ = reference
    np.testing.assert_allclose(metrics["loss"], token_mean, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-6)
    assert metrics["loss_tokens"] == counts.sum() and metrics["tokens"] == B * T

    sharded = jax.device_put(params, train_state.params_layout(TINY, mesh8)[1])
    sharded_batch = sharding.shard_batch(batch, mesh8)
    evaluated = compile_fast(train.make_eval_step(TINY, mesh8), sharded, sharded_batch)(sharded, sharded_batch)
    np.testing.assert_allclose(float(evaluated["loss"]), token_mean, rtol=1e-5)
    np.testing.assert_allclose(float(evaluated["accuracy"]), accuracy, rtol=1e-6)
    np.testing.assert_allclose(float(evaluated["ce"]), (ce * batch["loss_mask"]).sum(), rtol=1e-5)
    # The output layer only at the loss positions (training's logits_capacity): the same
    # sums; label smoothing, a training-only term, is not applied to evaluation.
    fraction = float(batch["loss_mask"].mean()) + 0.2
    sparse_eval = train.make_eval_step(TINY, mesh8, loss=train.TokenLoss(0.1, logits_capacity=fraction))
    sparse = compile_fast(sparse_eval, sharded, sharded_batch)(sharded, sharded_batch)
    for name in ("loss", "accuracy", "ce", "correct", "loss_tokens"):
        np.testing.assert_allclose(float(sparse[name]), float(evaluated[name]), rtol=1e-5, err_msg=name)


def test_sharded_step_equals_single_device(params, mesh8, reference):
    # Two microbatches: the strided split must also hold up under the batch sharding.
    metrics, grads, new_state = run_step(params, mesh8, num_microbatches=2)
    ref_metrics, ref_grads = reference
    for name in ("loss", "accuracy", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, err_msg=name)
    assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    assert float(np.abs(ref_grads["word_embeddings"]["embedding"]).max()) > 1e-3  # not trivially zero
    qkv = new_state.params["layers_1"]["attention"]["query_key_value"]["kernel"]
    assert qkv.sharding.spec == P("fsdp", None, "tensor", None)  # out_shardings keep the layout
    assert int(new_state.step) == 1


def test_microbatches_equal_full_batch(params, mesh1, reference):
    batch = make_batch()
    # Microbatch m holds rows m, m+4, ...: their loss-token counts differ, so a mean of
    # per-microbatch means would not equal the full-batch token mean.
    per_micro = batch["loss_mask"].reshape(B // 4, 4, T).sum((0, 2))
    assert len(set(per_micro.tolist())) > 1
    metrics, grads, _ = run_step(params, mesh1, num_microbatches=4, batch=batch)
    ref_metrics, ref_grads = reference
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    assert metrics["loss_tokens"] == ref_metrics["loss_tokens"]
    assert_trees_close(grads, ref_grads, rtol=1e-5, atol=1e-7)


def test_remat_and_scan_equal_plain_step(params, mesh1, reference):
    config = TINY.replace(remat_policy="full", scan_layers=True)
    metrics, grads, _ = run_step(stack_layers(params, TINY.num_layers), mesh1, config=config)
    ref_metrics, ref_grads = reference
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    assert_trees_close(grads, stack_layers(ref_grads, TINY.num_layers), rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params(params, mesh1, reference):
    metrics, grads, new_state = run_step(params, mesh1, config=TINY.replace(dtype="bfloat16"))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new_state.params))
    ref_metrics, ref_grads = reference
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
    ref_norm = ref_metrics["grad_norm"]
    diff = float(optax.global_norm(jax.tree.map(lambda a, b: a - b, grads, ref_grads)))
    assert diff < 0.1 * ref_norm  # bf16 activations: close to, not equal to, float32


def test_adamw_training_dropout_keys_and_loss_decrease(params, mesh8):
    config = TINY.replace(hidden_dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1)
    opt = OptimizerConfig(learning_rate=1e-2, decay_steps=100, warmup_steps=2, decay_style="linear")
    tx, schedule = make_optimizer(opt)
    batch = sharding.shard_batch(make_batch(), mesh8)
    step = compile_fast(
        train.make_train_step(config, tx, mesh8, schedule=schedule, seed=7), place(params, tx, mesh8, config), batch
    )

    # Dropout keys depend on (seed, step) only: a restart at step 5 draws the same masks.
    _, at_5 = step(place(params, tx, mesh8, config, step=5), batch)
    _, again = step(place(params, tx, mesh8, config, step=5), batch)
    _, at_6 = step(place(params, tx, mesh8, config, step=6), batch)
    assert float(at_5["loss"]) == float(again["loss"])
    assert float(at_5["loss"]) != float(at_6["loss"])
    np.testing.assert_allclose(float(at_5["learning_rate"]), float(schedule(5)), rtol=1e-7)

    state, losses = place(params, tx, mesh8, config), []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 8
    assert float(metrics["learning_rate"]) == pytest.approx(float(schedule(7)))
    assert losses[0] == pytest.approx(np.log(TINY.vocab_size), rel=0.05)  # ~uniform at init
    assert losses[-1] < losses[0] - 0.5, losses  # the tiny model starts memorising the batch


def test_batch_must_divide_microbatches_times_shards(params, mesh8):
    step = train.make_train_step(TINY, SGD, mesh8, num_microbatches=4)
    with pytest.raises(ValueError, match=r"global batch size 8 must be divisible by train.num_microbatches \(4\)"):
        step(place(params, SGD, mesh8), sharding.shard_batch(make_batch(b=8), mesh8))


def test_config_sections():
    base = {"model": {"preset": "glm_tiny"}}
    for section, key in [("train", "batch_size"), ("mesh", "ici"), ("optimizer", "lr")]:
        with pytest.raises(config_lib.ConfigError, match=rf"unknown key '{section}.{key}'"):
            config_lib.from_dict(config_lib.Config, {**base, section: {key: 1}})
    sections = {"train": {"num_microbatches": 4, "global_batch_size": 32}, "mesh": {"ici_shape": [2, 2, 2]}}
    cfg = config_lib.from_dict(config_lib.Config, {**base, **sections})
    assert cfg.train == train.TrainConfig(global_batch_size=32, num_microbatches=4)
    assert cfg.mesh.ici_shape == (2, 2, 2) and cfg.mesh.dcn_shape == (1, 1, 1)
    message = r"train.global_batch_size \(30\) must be divisible by train.num_microbatches \(4\)"
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.from_dict(config_lib.Config, {**base, "train": {"num_microbatches": 4, "global_batch_size": 30}})
    with pytest.raises(config_lib.ConfigError, match=r"mesh.ici_shape entries must be positive, with at most one -1"):
        config_lib.from_dict(config_lib.Config, {**base, "mesh": {"ici_shape": [-1, -1, 2]}})
    with pytest.raises(config_lib.ConfigError, match=r"mesh.dcn_shape: expected list \[int, int, int\] \(3 items\)"):
        config_lib.from_dict(config_lib.Config, {**base, "mesh": {"dcn_shape": [1, 1]}})


def test_mesh_that_does_not_fit_the_devices_is_named():
    assert dict(sharding.mesh_from_config(sharding.MeshConfig()).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match=r"mesh.ici_shape=\(3, 2, 1\) does not divide the 8 available devices"):
        sharding.mesh_from_config(sharding.MeshConfig(ici_shape=(3, 2, 1)))
    with pytest.raises(ValueError, match=r"mesh.ici_shape=\(2, 2, 1\) uses 4 devices but 8 are available"):
        sharding.mesh_from_config(sharding.MeshConfig(ici_shape=(2, 2, 1)))


def _toy_state(optimizer):
    params = {"w": jnp.arange(4, dtype=jnp.float32), "b": jnp.ones((2,), jnp.float32)}
    return train_state.TrainState(step=jnp.int32(7), params=params, opt_state=optimizer.init(params))


@pytest.mark.parametrize("bad", ["grad", "loss"])
def test_apply_update_skips_a_nonfinite_step_when_asked(bad):
    optimizer = optax.adamw(0.1)
    grads = {"w": jnp.array([1.0, 2.0, 3.0, 4.0]), "b": jnp.array([0.5, -0.5])}
    loss = jnp.float32(1.0)
    if bad == "grad":
        grads["w"] = grads["w"].at[2].set(jnp.nan)
    else:
        loss = jnp.float32(jnp.inf)
    state = _toy_state(optimizer)

    skipped, metrics = train.apply_update(optimizer, state, grads, loss, skip_nonfinite=True)
    assert float(metrics["nonfinite"]) == 1.0 and int(skipped.step) == 8  # the data position moves on
    for new, old in zip(jax.tree.leaves((skipped.params, skipped.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(new, old)  # parameters and Adam's moments and count untouched

    applied, metrics = train.apply_update(optimizer, state, grads, loss, skip_nonfinite=False)
    assert float(metrics["nonfinite"]) == 1.0  # flagged either way; the loop decides (stop)
    if bad == "grad":
        assert not np.isfinite(np.asarray(applied.params["w"])).all()


def test_apply_update_reports_health_of_a_good_step():
    optimizer = optax.sgd(0.5)
    state = _toy_state(optimizer)
    grads = {"w": jnp.array([3.0, 0.0, 0.0, 0.0]), "b": jnp.array([0.0, 4.0])}
    new, metrics = train.apply_update(optimizer, state, grads, jnp.float32(2.0), skip_nonfinite=True)
    np.testing.assert_allclose(new.params["w"], [-1.5, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(float(metrics["grad_norm"]), 5.0)
    np.testing.assert_allclose(float(metrics["param_norm"]), np.sqrt(1.5**2 + 1 + 4 + 9 + 1 + 1))
    assert float(metrics["nonfinite"]) == 0.0


def test_label_smoothed_loss_is_the_official_formula():
    """(1 - eps) * CE + eps * mean over the whole vocabulary of -log_softmax (spec 4.4),
    by hand; eps = 0 is the plain CE, bit for bit."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 3))
    mask = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    smooth = -log_probs.mean(-1)
    expected = ((0.9 * ce + 0.1 * smooth) * mask).sum()
    got = train.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), label_smoothing=0.1)
    assert float(got.ce) == pytest.approx(expected, rel=1e-5)
    plain = train.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(plain.ce) == pytest.approx((ce * mask).sum(), rel=1e-5)
    assert np.asarray(train.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), 0.0).ce) \
        == np.asarray(plain.ce)
    assert float(got.ce) != float(plain.ce)
