"""glm_jax/model/layer_norm.py: flax's LayerNorm values, a written-out gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model.layer_norm import LayerNorm


def _pair(dtype):
    ours = LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)
    flax_ln = nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False)
    return ours, flax_ln


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    # An offset and a spread per row, as a residual stream has: the two-pass variance matters.
    x = rng.standard_normal((3, 5, 48)) * rng.uniform(0.5, 4.0, (3, 5, 1)) + rng.uniform(-20, 20, (3, 5, 1))
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 48), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(48), jnp.float32)}
    cotangent = jnp.asarray(rng.standard_normal((3, 5, 48)), dtype)
    return jnp.asarray(x, dtype), {"params": params}, cotangent


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_equal_flax_layernorm(dtype):
    ours, flax_ln = _pair(dtype)
    x, params, cotangent = _inputs(dtype)

    def grads(module):
        def loss(x, params):
            return jnp.sum((module.apply(params, x) * cotangent).astype(jnp.float32))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, params)

    (value, (d_x, d_params)), (want_value, (want_x, want_params)) = grads(ours), grads(flax_ln)
    y, want_y = ours.apply(params, x), flax_ln.apply(params, x)
    assert y.dtype == want_y.dtype == dtype and d_x.dtype == dtype
    if dtype == jnp.float32:
        np.testing.assert_array_equal(y, want_y)  # the same operations in the same order
        tol = dict(rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(np.float32(y), np.float32(want_y), rtol=1e-2, atol=1e-2)
        tol = dict(rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(value, want_value, **tol)
    np.testing.assert_allclose(np.float32(d_x), np.float32(want_x), **tol)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(d_params["params"][name], want_params["params"][name], **tol)
    assert float(jnp.abs(np.float32(d_x)).max()) > 0.1  # not trivially zero


def test_gradient_is_the_derivative():
    # Independent of flax: a central difference of the float64 expression.
    ours, _ = _pair(jnp.float32)
    x, params, cotangent = _inputs(jnp.float32, seed=1)
    d_x = jax.grad(lambda x: jnp.sum(ours.apply(params, x) * cotangent))(x)
    x64, c64 = np.float64(x), np.float64(cotangent)
    scale, bias = (np.float64(params["params"][k]) for k in ("scale", "bias"))

    def f(v):
        mean = v.mean(-1, keepdims=True)
        return np.sum(((v - mean) / np.sqrt(((v - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * scale + bias) * c64)

    rng = np.random.default_rng(2)
    for _ in range(5):
        index = tuple(rng.integers(0, n) for n in x64.shape)
        step = np.zeros_like(x64)
        step[index] = 1e-6
        assert abs((f(x64 + step) - f(x64 - step)) / 2e-6 - float(d_x[index])) < 1e-3


def test_parameters_keep_their_names_and_axes():
    ours, _ = _pair(jnp.float32)
    variables = ours.init(jax.random.PRNGKey(0), jnp.ones((2, 4, 16)))
    boxed = variables["params"]
    assert set(boxed) == {"scale", "bias"}
    assert boxed["scale"].names == ("norm",) and boxed["bias"].names == ("norm",)
    np.testing.assert_array_equal(nn.unbox(boxed)["scale"], np.ones(16))
