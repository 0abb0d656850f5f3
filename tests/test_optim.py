"""The optimizer: AnnealingLR schedule values, the weight-decay mask, AdamW, clipping."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from glm_jax import config as config_lib
from glm_jax.model import GLM, ModelConfig
from glm_jax.optim import OptimizerConfig, clip_by_global_norm, decay_mask, make_optimizer, make_schedule


def annealing_lr(step, peak, warmup_iter, decay_iters, style, ratio):
    """``learning_rates.AnnealingLR.get_lr`` transcribed from spec 3.5, in float64."""
    end_iter = decay_iters - warmup_iter
    if warmup_iter > 0 and step <= warmup_iter:
        return peak * step / warmup_iter
    if style == "cosine":
        big_r = 1.0 / ratio
        progress = min(1.0, (step - warmup_iter) / end_iter)
        return peak / big_r * ((math.cos(math.pi * progress) + 1) * (big_r - 1) / 2 + 1)
    if style == "linear":
        return peak - peak * (1 - ratio) * (step - warmup_iter) / end_iter
    return peak


STEPS = [0, 1, 500, 999, 1000, 1001, 2500, 5000, 7500, 9999, 10000, 12000, 20000]


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_schedule_matches_annealing_lr(style):
    # GLM-Large's shape: warmup 0.05 of the decay steps, floor 0.05 of the peak.
    cfg = OptimizerConfig(learning_rate=2e-4, decay_steps=20000, warmup=0.05, decay_style=style, lr_decay_ratio=0.05)
    schedule = jax.jit(make_schedule(cfg))
    got = np.array([float(schedule(s)) for s in STEPS])
    want = np.array([annealing_lr(s, 2e-4, 1000.0, 20000, style, 0.05) for s in STEPS])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12)


def test_schedule_landmarks():
    peak, ratio = 1.0, 0.1
    common = dict(learning_rate=peak, decay_steps=110, warmup_steps=10, lr_decay_ratio=ratio)
    cos = make_schedule(OptimizerConfig(**common))
    lin = make_schedule(OptimizerConfig(**common, decay_style="linear"))
    assert float(cos(0)) == 0.0  # warmup starts at 0: the first update has lr 0
    np.testing.assert_allclose(float(cos(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(cos(10)), peak, rtol=1e-6)
    np.testing.assert_allclose(float(cos(60)), (peak + peak * ratio) / 2, rtol=1e-6)  # half-way: mid point
    np.testing.assert_allclose(float(cos(110)), peak * ratio, rtol=1e-5)
    np.testing.assert_allclose(float(cos(1000)), peak * ratio, rtol=1e-5)  # flat after decay_steps
    np.testing.assert_allclose(float(lin(60)), 0.55, rtol=1e-6)
    np.testing.assert_allclose(float(lin(110)), peak * ratio, rtol=1e-5)
    # Not clamped, as the official code: past decay_steps the linear decay goes on.
    np.testing.assert_allclose(float(lin(160)), peak * ratio - 0.45, rtol=1e-5)


def test_warmup_fraction_and_steps():
    assert OptimizerConfig(decay_steps=120_000, warmup=0.05).warmup_iters == 6000.0  # GLM-Base
    assert OptimizerConfig(decay_steps=120_000, warmup=0.05, warmup_steps=100).warmup_iters == 100.0
    no_warmup = make_schedule(OptimizerConfig(learning_rate=3.0, decay_steps=10, warmup=0.0, decay_style="constant"))
    assert float(no_warmup(0)) == 3.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup=1.5), "optimizer.warmup"),
        (dict(decay_steps=100, warmup_steps=100), r"optimizer.warmup_steps: warmup \(100 updates\) must end before"),
        (dict(decay_steps=100, warmup=1.0), r"optimizer.warmup: warmup"),
        (dict(lr_decay_ratio=0.0), "optimizer.lr_decay_ratio"),
        (dict(b2=1.0), "optimizer.b2"),
        (dict(clip_norm=0.0), "optimizer.clip_norm"),
        (dict(decay_style="exponential"), "optimizer.decay_style"),
    ],
)
def test_invalid_optimizer_config_names_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


def test_config_section_rejects_unknown_and_mistyped_keys():
    with pytest.raises(config_lib.ConfigError, match=r"unknown key 'optimizer.peak_lr'"):
        config_lib.from_dict(config_lib.Config, {"model": {"preset": "glm_tiny"}, "optimizer": {"peak_lr": 1e-4}})
    with pytest.raises(config_lib.ConfigError, match=r"optimizer.decay_style: expected one of"):
        config_lib.from_dict(config_lib.Config, {"model": {"preset": "glm_tiny"}, "optimizer": {"decay_style": "cos"}})
    cfg = config_lib.from_dict(
        config_lib.Config, {"model": {"preset": "glm_tiny"}, "optimizer": {"learning_rate": 1, "warmup_steps": 10}}
    )
    assert cfg.optimizer.learning_rate == 1.0 and cfg.optimizer.warmup_iters == 10.0


TINY = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16)


def param_shapes(config):
    ids = jnp.zeros((1, 4), jnp.int32)
    variables = jax.eval_shape(
        lambda: GLM(config).init(jax.random.key(0), ids, ids, ids, sep=jnp.ones((1,), jnp.int32))
    )
    return jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), variables["params"])


def flat_names(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in leaves}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decay_mask_excludes_biases_and_layernorm(scan_layers):
    params = nn.unbox(param_shapes(TINY.replace(scan_layers=scan_layers)))
    mask = flat_names(decay_mask(params))
    layer = "layers" if scan_layers else "layers_1"
    no_decay = {name for name, decays in mask.items() if not decays}
    assert {
        "final_layernorm/scale",
        "final_layernorm/bias",
        f"{layer}/input_layernorm/scale",
        f"{layer}/post_attention_layernorm/bias",
        f"{layer}/attention/query_key_value/bias",
        f"{layer}/attention/dense/bias",
        f"{layer}/mlp/dense_h_to_4h/bias",
        f"{layer}/mlp/dense_4h_to_h/bias",
    } <= no_decay
    assert all(name.endswith(("/bias", "/scale")) for name in no_decay)
    decays = {name for name, d in mask.items() if d}
    assert {
        "word_embeddings/embedding",
        "position_embeddings/embedding",
        "block_position_embeddings/embedding",
        f"{layer}/attention/query_key_value/kernel",
        f"{layer}/mlp/dense_4h_to_h/kernel",
    } <= decays
    assert all(name.endswith(("/kernel", "/embedding")) for name in decays)


def test_adamw_decays_only_masked_params_and_scales_with_lr():
    # Zero gradients: Adam's direction is 0, so the update is the decoupled decay
    # alone, -lr * wd * p, exactly where the mask says.
    cfg = OptimizerConfig(learning_rate=0.5, decay_steps=10, warmup=0.0, decay_style="constant", weight_decay=0.1)
    tx, _ = make_optimizer(cfg)
    params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)},
              "norm": {"scale": jnp.full((3,), 2.0)}, "embed": {"embedding": jnp.full((4, 3), 2.0)}}
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    flat = {k: np.asarray(v) for k, v in flat_names(updates).items()}
    np.testing.assert_allclose(flat["dense/kernel"], -0.5 * 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(flat["embed/embedding"], -0.1, rtol=1e-6)
    np.testing.assert_array_equal(flat["dense/bias"], 0.0)
    np.testing.assert_array_equal(flat["norm/scale"], 0.0)


def test_adam_step_matches_hand_computation_and_clipping():
    cfg = OptimizerConfig(learning_rate=0.1, decay_steps=10, warmup=0.0, decay_style="constant",
                          weight_decay=0.0, b1=0.9, b2=0.98, eps=1e-6, clip_norm=1.0)
    tx, _ = make_optimizer(cfg)
    params = {"w": jnp.zeros((4,))}
    grads = {"w": jnp.array([3.0, -4.0, 0.0, 0.0])}  # norm 5 -> clipped to norm 1
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    updates, state = update(grads, state, params)
    g = np.array([0.6, -0.8, 0.0, 0.0])  # clipped
    m, v = 0.0, 0.0
    for t in (1, 2):
        m, v = 0.9 * m + 0.1 * g, 0.98 * v + 0.02 * g * g
        want = -0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.98**t)) + 1e-6)
    np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-5, atol=1e-9)
    # First moments hold the clipped gradient, not the raw one.
    adam_state = state[1][0]
    np.testing.assert_allclose(float(optax.global_norm(adam_state.mu)), (1 - 0.9**2) * 1.0, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.1, 7.0])  # global norm below, then above, the threshold
def test_clipping_equals_optax_and_keeps_its_state(scale):
    rng = np.random.default_rng(0)
    grads = {"a": jnp.asarray(rng.standard_normal((5, 3)) * scale, jnp.float32),
             "b": {"c": jnp.asarray(rng.standard_normal(4) * scale, jnp.float32)}}
    ours, theirs = clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
    got, state = jax.jit(ours.update)(grads, ours.init(grads))
    want, _ = theirs.update(grads, theirs.init(grads))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-7, atol=0)
    assert float(optax.global_norm(got)) == pytest.approx(min(1.0, float(optax.global_norm(grads))), rel=1e-6)
    # The same (empty) state as optax's: checkpoints written before still restore.
    assert jax.tree.structure(state) == jax.tree.structure(theirs.init(grads))
