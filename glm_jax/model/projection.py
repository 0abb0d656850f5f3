"""The model's linear layers: ``x [batch, T, *in] @ kernel [*in, *out] + bias``.

Every projection of GLM contracts the trailing axes of its input with the leading
axes of its kernel: QKV ``[embed] -> [3, heads, head_dim]``, the attention output
``[heads, head_dim] -> [embed]``, the MLP's ``[embed] -> [mlp]`` and back. Kernels keep
those natural shapes (flax's DenseGeneral initialises multi-axis kernels flattened,
which breaks their logical sharding annotations under an active mesh), but the
matmul runs on a 2-D view: ``[batch * T, prod(in)] @ [prod(in), prod(out)]``.

Why 2-D, on XLA:CPU: the kernel's gradient contracts the tokens. With tokens as two
axes (batch, length), or with several output axes, XLA:CPU first copies an operand
transposed (the larger one: ``[tokens, mlp]`` for the MLP's second kernel,
``[tokens, 3 * embed]`` for QKV) and copies the kernel or its gradient between
layouts; a single contracted axis on each side is one matmul that reads its operand
transposed in place. The train step at hidden 512 moves 0.7 GB less per step
(benchmarks/RESULTS.md, 2026-12-07). Kernel axes are merged only on CPU and only
where that keeps their sharding: no axis but a group's first may be split over
devices (QKV's ``heads`` under tensor parallelism is not the first of ``[3, heads,
head_dim]``). For other targets only the tokens are merged: XLA:TPU lays out
``[tokens, 3, heads, head_dim]`` better than its flattened form (a merged QKV kernel
cost the sparse-logits step 0.43 GB more by its count), so the accelerator's
program is left as it was.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from glm_jax.model.attention import target_platform
from glm_jax.model.config import ModelConfig

Array = jax.Array


def param_init(std: float, axes: tuple[str, ...]):
    """Normal(0, std) initialiser annotated with logical ``axes``."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


class Projection(nn.Module):
    """``einsum(equation, x, kernel) + bias`` for an equation ``"bt{in},{in}{out}->bt{out}"``.

    ``x`` is ``[batch, T, *in]``; the kernel ``kernel_shape = (*in, *out)`` carries
    ``kernel_axes``, the bias ``[*out]`` carries ``bias_axes``; the result is
    ``[batch, T, *out]`` in the compute dtype.
    """

    config: ModelConfig
    equation: str
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    bias_axes: tuple[str, ...]
    init_std: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dtype, param_dtype = jnp.dtype(self.config.dtype), jnp.dtype(self.config.param_dtype)
        kernel = self.param("kernel", param_init(self.init_std, self.kernel_axes), self.kernel_shape, param_dtype)
        bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes):]
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.bias_axes), bias_shape, param_dtype
        )
        n_in = contracted_axes(self.equation)
        in_shape, out_shape = self.kernel_shape[:n_in], self.kernel_shape[n_in:]
        tokens = x.astype(dtype).reshape(-1, *in_shape)  # [batch * T, *in]
        kernel = kernel.astype(dtype)
        if merges_kernel_axes(self.kernel_axes, n_in):
            y = jnp.dot(tokens.reshape(tokens.shape[0], -1), kernel.reshape(math.prod(in_shape), -1))
        else:
            letters = "abcdefghijklm"[:len(self.kernel_shape)]
            y = jnp.einsum(f"n{letters[:n_in]},{letters}->n{letters[n_in:]}", tokens, kernel)
        return y.reshape(*x.shape[:2], *out_shape) + bias.astype(dtype)


def contracted_axes(equation: str) -> int:
    """How many leading kernel axes ``equation`` contracts; it must read
    ``"bt{in},{in}{out}->bt{out}"`` (ValueError naming it otherwise)."""
    inputs, _, output = equation.partition("->")
    x_axes, _, kernel_axes = inputs.partition(",")
    n_in = len(x_axes) - 2
    if not (x_axes.startswith("bt") and output.startswith("bt") and n_in > 0
            and kernel_axes == x_axes[2:] + output[2:] and len(set(equation) - set(",->")) == len(kernel_axes) + 2):
        raise ValueError(f"Projection equation {equation!r} must read 'bt<in>,<in><out>->bt<out>' "
                         "(the input's trailing axes contracted with the kernel's leading ones)")
    return n_in


def merges_kernel_axes(kernel_axes: tuple[str, ...], n_in: int) -> bool:
    """Whether the kernel runs as a 2-D ``[prod(in), prod(out)]`` matmul: on CPU
    targets, where neither group of axes is split past its first (module docstring)."""
    return (target_platform() == "cpu" and _mergeable(kernel_axes[:n_in])
            and _mergeable(kernel_axes[n_in:]))


def _mergeable(logical_axes: tuple[str, ...]) -> bool:
    """Whether kernel axes can be merged into one without moving data: no axis but
    the first is split over devices under the mesh and logical-axis rules being traced."""
    if len(logical_axes) < 2:
        return True
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return True
    for entry in nn.logical_to_mesh_axes(logical_axes[1:]):
        names = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
        if math.prod(mesh.shape.get(name, 1) for name in names) > 1:
            return False
    return True
