"""The mesh, the logical rules, and sharded == unsharded (8 fake CPU devices, conftest)."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from glm_jax import sharding
from glm_jax.model import GLM, ModelConfig

CONFIG = ModelConfig(
    vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=32,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)


def batch(b=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    sep = rng.integers(1, t, b).astype(np.int32)
    return dict(
        tokens=rng.integers(0, CONFIG.vocab_size, (b, t)).astype(np.int32),
        position_ids=np.minimum(np.arange(t), sep[:, None]).astype(np.int32),
        block_position_ids=np.maximum(np.arange(t) - sep[:, None] + 1, 0).astype(np.int32),
        sep=sep,
    )


def test_eight_fake_devices():
    assert jax.device_count() == 8, "tests/conftest.py must set the fake device count before jax loads"


def test_mesh_shapes_and_errors():
    mesh = sharding.make_mesh((-1, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh((1, -1, 1)).shape)["fsdp"] == 8
    with pytest.raises(ValueError, match="mesh.ici_shape"):
        sharding.make_mesh((3, 2, 2))
    with pytest.raises(ValueError, match="at most one entry"):
        sharding.make_mesh((-1, -1, 2))
    with pytest.raises(ValueError, match="3 entries"):
        sharding.make_mesh((4, 2))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_forward_equals_unsharded(scan_layers):
    config = CONFIG.replace(scan_layers=scan_layers)
    model, inputs = GLM(config), batch()
    rng = jax.random.PRNGKey(0)
    params = nn.unbox(model.init(rng, **inputs)["params"])
    reference = model.apply({"params": params}, **inputs)

    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        _, shardings = sharding.abstract_params_and_shardings(
            lambda r: model.init(r, **inputs)["params"], mesh, rng
        )
        sharded_params = jax.device_put(params, shardings)
        sharded_inputs = sharding.shard_batch(inputs, mesh)
        logits = jax.jit(lambda p, x: model.apply({"params": p}, **x))(sharded_params, sharded_inputs)

    # The parameters really are split as the rules say.
    layer = sharded_params["layers"] if scan_layers else sharded_params["layers_0"]
    qkv = layer["attention"]["query_key_value"]["kernel"]
    want = P(None, "fsdp", None, "tensor", None) if scan_layers else P("fsdp", None, "tensor", None)
    assert qkv.sharding.spec == want
    assert sharded_params["word_embeddings"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=1e-5)


def test_indivisible_parameter_is_named():
    config = CONFIG.replace(num_heads=2)  # 2 heads cannot split over tensor=4
    model, inputs = GLM(config), batch()
    mesh = sharding.make_mesh((1, 2, 4))
    with pytest.raises(ValueError, match=r"query_key_value.*not divisible by mesh axes \('tensor',\)"):
        sharding.abstract_params_and_shardings(
            lambda r: model.init(r, **inputs)["params"], mesh, jax.random.PRNGKey(0)
        )


def test_batch_must_divide_data_parallelism():
    mesh = sharding.make_mesh((2, 2, 2))
    with pytest.raises(ValueError, match="'tokens' has batch size 6"):
        sharding.shard_batch(batch(b=6), mesh)
