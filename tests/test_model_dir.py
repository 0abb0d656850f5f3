"""glm_jax.model_dir: the config.yaml + orbax params directory."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from glm_jax.model import ModelConfig
from glm_jax.model_dir import CONFIG_FILE, PARAMS_DIR, abstract_params, load_model_dir, read_config, save_model_dir

CONFIG = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16,
                     intermediate_size=48, activation="gelu_exact", hidden_dropout=0.0)


def random_params(config: ModelConfig) -> dict:
    """Distinct random float32 values in every leaf of ``GLM(config)``'s params tree."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract_params(config))


def assert_trees_equal(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), e)


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_is_bit_exact(tmp_path, scan):
    config = CONFIG.replace(scan_layers=scan)
    params = random_params(config)
    save_model_dir(tmp_path / "model", config, params)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [CONFIG_FILE, PARAMS_DIR]
    loaded_config, loaded = load_model_dir(tmp_path / "model")
    assert loaded_config == config
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded, params)


def test_load_with_shardings_gives_jax_arrays(tmp_path):
    params = random_params(CONFIG)
    save_model_dir(tmp_path / "model", CONFIG, params)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _, loaded = load_model_dir(tmp_path / "model", shardings=jax.tree.map(lambda _: sharding, params))
    assert all(isinstance(x, jax.Array) and x.sharding == sharding for x in jax.tree.leaves(loaded))
    assert_trees_equal(loaded, params)


def test_refuses_non_empty_directory(tmp_path):
    params = random_params(CONFIG)
    (tmp_path / "empty").mkdir()
    save_model_dir(tmp_path / "empty", CONFIG, params)  # an empty directory is fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=f"output directory {tmp_path / 'full'} is not empty"):
        save_model_dir(tmp_path / "full", CONFIG, params)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_model_dir(tmp_path / "file", CONFIG, params)


def test_params_that_do_not_match_config_are_refused(tmp_path):
    params = random_params(CONFIG)
    params["layers_1"]["attention"]["dense"]["kernel"] = np.zeros((4, 8, 33), np.float32)
    message = r"layers_1/attention/dense/kernel: expected float32\[4, 8, 32\], got float32\[4, 8, 33\]"
    with pytest.raises(ValueError, match=message):
        save_model_dir(tmp_path / "a", CONFIG, params)
    # Unscanned params with a scan_layers config: every path is named.
    with pytest.raises(ValueError, match=r"(?s)missing layers/attention.*unexpected layers_0/"):
        save_model_dir(tmp_path / "b", CONFIG.replace(scan_layers=True), random_params(CONFIG))
    bf16 = jax.tree.map(lambda x: x.astype("bfloat16"), random_params(CONFIG))
    with pytest.raises(ValueError, match=r"final_layernorm/bias: expected float32\[32\], got bfloat16\[32\]"):
        save_model_dir(tmp_path / "c", CONFIG, bf16)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing half-written


def test_config_yaml_errors_name_the_key(tmp_path):
    save_model_dir(tmp_path / "model", CONFIG, random_params(CONFIG))
    path = tmp_path / "model" / CONFIG_FILE
    text = path.read_text()
    assert "hidden_size: 32\n" in text and "intermediate_size: 48\n" in text
    assert read_config(path) == CONFIG

    path.write_text(text + "hiden_size: 64\n")
    with pytest.raises(ValueError, match=r"config\.yaml: unknown key 'hiden_size'"):
        load_model_dir(tmp_path / "model")
    path.write_text(text.replace("num_layers: 2", "num_layers: two"))
    with pytest.raises(ValueError, match=r"config\.yaml: num_layers: expected int, got str 'two'"):
        load_model_dir(tmp_path / "model")
    path.write_text(text.replace("num_layers: 2", "num_layers: 3"))
    with pytest.raises(ValueError, match=r"params stored in .* do not match the config.*\n.*missing layers_2/"):
        load_model_dir(tmp_path / "model")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="is not a glm-jax model directory"):
        load_model_dir(tmp_path / "model")
