"""LayerNorm over the last axis, with its gradient written out.

The forward is flax's ``nn.LayerNorm(use_fast_variance=False)``, operation for
operation: statistics in float32 whatever the compute dtype, the two-pass variance
torch computes, ``(x - mean) * (rsqrt(var + eps) * scale) + bias``, cast to the
compute dtype. Parameters ``scale`` and ``bias`` ``[embed]`` carry the same names
and logical axes, so checkpoints and the official-weight converter are unchanged.

Why the gradient is written out: autodiff of that expression, as XLA:CPU fuses it,
makes about a dozen passes over ``[batch, T, embed]`` per layernorm in the backward
(each broadcast and partial product its own fusion, some re-evaluated in several
consumers), two layernorms per layer. The closed form needs the input, the two
float32 statistics per row and three passes: the row reductions, ``d_x``, and the
column sums for ``d_scale`` and ``d_bias``:

    x_hat = (x - mean) * rstd,   g = d_y * scale
    d_x = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    d_scale = sum(d_y * x_hat),  d_bias = sum(d_y)      (over every row)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class LayerNorm(nn.Module):
    """``[..., embed] -> [..., embed]`` in ``dtype``; see the module docstring."""

    epsilon: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (features,),
                           self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,),
                          self.param_dtype)
        return layer_norm(x, scale, bias, float(self.epsilon), jnp.dtype(self.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: Array, scale: Array, bias: Array, epsilon: float, dtype: jnp.dtype) -> Array:
    """Normalise ``x [..., embed]`` over its last axis; ``scale, bias [embed]``."""
    return _forward(x, scale, bias, epsilon, dtype)[0]


def _statistics(x: Array, epsilon: float) -> tuple[Array, Array]:
    """Float32 ``(mean, rstd)`` ``[..., 1]`` of ``x``'s last axis (two-pass variance)."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + epsilon)


def _forward(x, scale, bias, epsilon, dtype):
    """The output and what the backward keeps: ``x``, ``scale`` and the statistics."""
    mean, rstd = _statistics(x, epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return y.astype(dtype), (x, scale, mean, rstd)


def _bwd(epsilon, dtype, residuals, d_y):
    del epsilon, dtype
    x, scale, mean, rstd = residuals
    d_y = d_y.astype(mean.dtype)
    x_hat = (x - mean) * rstd
    g = d_y * scale.astype(mean.dtype)
    d_x = rstd * (g - jnp.mean(g, axis=-1, keepdims=True) - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    d_scale = jnp.sum(d_y * x_hat, axis=rows)
    d_bias = jnp.sum(d_y, axis=rows)
    # scale and bias share the parameter dtype.
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


layer_norm.defvjp(_forward, _bwd)
