"""glm_jax/model/projection.py: a 2-D matmul with the einsum's values; kernels merged
only where their sharding allows; the kernel's gradient without a transposed copy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import sharding
from glm_jax.model.config import ModelConfig
from glm_jax.model import projection
from glm_jax.model.projection import Projection, _mergeable, contracted_axes, merges_kernel_axes

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, max_position_embeddings=16)

# GLM's four projections: (equation, kernel shape, kernel axes, bias axes).
CASES = [
    ("btd,dxhk->btxhk", (32, 3, 4, 8), ("embed", "qkv", "heads", "kv"), ("qkv", "heads", "kv")),
    ("bthk,hkd->btd", (4, 8, 32), ("heads", "kv", "embed"), ("norm",)),
    ("btd,df->btf", (32, 128), ("embed", "mlp"), ("mlp",)),
    ("btf,fd->btd", (128, 32), ("mlp", "embed"), ("norm",)),
]


@pytest.mark.parametrize("equation,shape,axes,bias_axes", CASES)
def test_values_and_gradients_equal_the_einsum(equation, shape, axes, bias_axes):
    module = Projection(CONFIG, equation, shape, axes, bias_axes, 0.5)
    n_in = contracted_axes(equation)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, *shape[:n_in])), jnp.float32)
    params = module.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a bias that is not zero
    cotangent = jnp.asarray(rng.standard_normal((3, 5, *shape[n_in:])), jnp.float32)

    def ours(x, params):
        return jnp.sum(module.apply(params, x) * cotangent)

    def plain(x, params):
        p = nn.unbox(params)["params"]
        return jnp.sum((jnp.einsum(equation, x, p["kernel"]) + p["bias"]) * cotangent)

    got = jax.value_and_grad(ours, argnums=(0, 1))(x, params)
    want = jax.value_and_grad(plain, argnums=(0, 1))(x, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_equation_must_contract_the_inputs_trailing_axes():
    assert contracted_axes("btd,dxhk->btxhk") == 1 and contracted_axes("bthk,hkd->btd") == 2
    for bad in ("btd,fd->btf", "bd,df->bf", "btd,df->tbf", "btd,dff->btf"):
        with pytest.raises(ValueError, match=f"equation '{bad}'"):
            contracted_axes(bad)


def test_kernel_axes_are_merged_only_where_the_sharding_allows():
    qkv_out, attention_in = ("qkv", "heads", "kv"), ("heads", "kv")
    assert _mergeable(qkv_out) and _mergeable(attention_in)  # no mesh
    tensor_parallel = sharding.make_mesh((2, 2, 2))
    with jax.sharding.use_abstract_mesh(tensor_parallel.abstract_mesh), nn.logical_axis_rules(
            sharding.LOGICAL_AXIS_RULES):
        # heads (split over tensor) behind qkv: merging would move data; leading: fine.
        assert not _mergeable(qkv_out)
        assert _mergeable(attention_in)
    data_parallel = sharding.make_mesh((8, 1, 1))
    with jax.sharding.use_abstract_mesh(data_parallel.abstract_mesh), nn.logical_axis_rules(
            sharding.LOGICAL_AXIS_RULES):
        assert _mergeable(qkv_out)


def test_kernel_axes_are_merged_for_cpu_targets_only(monkeypatch):
    qkv_axes = ("embed", "qkv", "heads", "kv")
    assert merges_kernel_axes(qkv_axes, 1)  # this host's CPU
    for accelerator in ("tpu", "gpu"):  # e.g. a step compiled ahead of time for a TPU slice
        monkeypatch.setattr(projection, "target_platform", lambda: accelerator)
        assert not merges_kernel_axes(qkv_axes, 1)
        # ... and the projection still computes the same values, as an einsum.
        test_values_and_gradients_equal_the_einsum(*CASES[0])


@pytest.mark.parametrize("equation,shape,axes,bias_axes", CASES[1:])
def test_kernel_gradient_reads_each_operand_once(equation, shape, axes, bias_axes):
    # The point of the module: XLA:CPU computes the kernel's gradient as one matmul
    # over [tokens, in] and [tokens, out], without first copying either transposed.
    # (QKV is left out: its bias gradient reads the cotangent once more.)
    module = Projection(CONFIG, equation, shape, axes, bias_axes, 0.5)
    n_in = contracted_axes(equation)
    x = jnp.ones((4, 64, *shape[:n_in]), jnp.float32)
    params = module.init(jax.random.PRNGKey(0), x)
    cotangent = jnp.ones((4, 64, *shape[n_in:]), jnp.float32)

    def kernel_grad(params, x, cotangent):
        return jax.vjp(lambda p: module.apply(p, x), params)[1](cotangent)[0]["params"]["kernel"].value

    # XLA's count; the einsum over (batch, length) it replaced counts 1.36x-2.45x here.
    accessed = jax.jit(kernel_grad).lower(params, x, cotangent).compile().cost_analysis()["bytes accessed"]
    operands_and_result = (x.size + cotangent.size + np.prod(shape)) * 4
    assert accessed <= operands_and_result * 1.01
