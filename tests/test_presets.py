"""Presets: shapes, parameter counts (without allocating a parameter) and their YAML files."""

from __future__ import annotations

import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from glm_jax.config import Config, load_yaml
from glm_jax.model import GLM, ModelConfig
from glm_jax.model.presets import PRESETS, get_preset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OFFICIAL = sorted(set(PRESETS) - {"glm_tiny"})


def count_params(cfg: ModelConfig) -> int:
    """Parameters of ``GLM(cfg)``, from shapes only (jax.eval_shape allocates nothing)."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    init = lambda: GLM(cfg).init(jax.random.key(0), tokens, tokens, tokens, sep=jnp.array([4], jnp.int32))
    shapes = nn.unbox(jax.eval_shape(init))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def closed_form_params(cfg: ModelConfig) -> int:
    """Spec 1.9 shapes: word + 2 position tables, 12h^2 + 13h per layer, final LN."""
    h = cfg.hidden_size
    per_layer = (3 * h * h + 3 * h) + (h * h + h) + (8 * h * h + 5 * h) + 4 * h  # qkv, dense, mlp, 2 LNs
    return cfg.vocab_size * h + 2 * cfg.position_table_size * h + cfg.num_layers * per_layer + 2 * h


# Tracing unscanned layers costs ~50 ms per layer; the count is the same either way
# (checked below), so the big models are counted scanned.
def count_fast(cfg: ModelConfig) -> int:
    return count_params(cfg.replace(scan_layers=True))


@pytest.mark.parametrize(
    "name, paper",
    [
        ("glm_base", 109.2e6),
        ("glm_large", 334.7e6),
        ("glm_410m", 410e6),
        ("glm_515m", 514e6),
        ("glm_2b", 1.92e9),
        ("glm_10b", 9.88e9),
    ],
)
def test_param_count_matches_the_spec(name: str, paper: float):
    assert count_fast(get_preset(name)) == pytest.approx(paper, rel=5e-3)


@pytest.mark.parametrize(
    "name, exact",
    [
        ("glm_base", 109_338_624),
        ("glm_large", 334_688_256),
        ("glm_410m", 410_265_600),
        ("glm_515m", 514_632_960),
        ("glm_2b", 1_920_122_880),
        ("glm_10b", 9_880_682_496),
        ("glm_tiny", 112_512),
    ],
)
def test_exact_param_counts(name: str, exact: int):
    # Pinned so that any change to the parameter layout is a visible, deliberate diff.
    assert closed_form_params(get_preset(name)) == exact


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_has_the_closed_form_parameter_count(name: str):
    cfg = get_preset(name)
    assert count_fast(cfg) == closed_form_params(cfg)


def test_scan_layers_does_not_change_the_count():
    cfg = get_preset("glm_base")
    assert count_params(cfg) == count_params(cfg.replace(scan_layers=True)) == 109_338_624


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_presets_share_the_spec_invariants(name: str):
    cfg = get_preset(name)
    assert cfg.head_dim == 64  # spec 1.1: every official model
    assert cfg.vocab_size % 128 == 0  # padded with --make-vocab-size-divisible-by 128
    assert cfg.max_position_embeddings in (512, 1024)
    assert cfg.mlp_dim == 4 * cfg.hidden_size and cfg.layernorm_epsilon == 1e-5
    assert cfg.activation == "gelu_tanh"


def test_vocabularies_follow_the_tokenizers():
    vocab = {name: get_preset(name).vocab_size for name in OFFICIAL}
    assert {vocab[n] for n in ("glm_base", "glm_large", "glm_doc", "glm_410m", "glm_515m")} == {30592}
    assert {vocab[n] for n in ("glm_roberta_large", "glm_2b", "glm_10b")} == {50304}
    assert {vocab[n] for n in ("glm_large_chinese", "glm_10b_chinese")} == {50048}


def test_tiny_preset_has_the_official_fixture_shape():
    cfg = get_preset("glm_tiny")
    shape = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.vocab_size, cfg.max_position_embeddings)
    assert shape == (2, 64, 4, 128, 32)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model preset 'glm_huge'.*glm_10b_chinese.*glm_tiny"):
        get_preset("glm_huge")


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["mine"] = get_preset("glm_tiny")  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_has_a_model_yaml(name: str):
    path = CONFIGS / "model" / f"{name}.yaml"
    assert path.read_text().startswith("# "), f"{path} should open with a one-line description"
    assert load_yaml(path) == Config(model=get_preset(name))
