"""The config system: strict YAML loading, presets, inheritance, overrides, printing."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from glm_jax import typed_config
from glm_jax.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    load_yaml,
    to_dict,
    to_yaml,
)
from glm_jax.model.config import ModelConfig
from glm_jax.model.presets import get_preset
from glm_jax.typed_config import parse_yaml, require_at_least, require_divisible, require_positive

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = get_preset("glm_tiny")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def raises(match: str):
    """pytest.raises(ConfigError) matching ``match`` literally."""
    return pytest.raises(ConfigError, match=re.escape(match))


# A section exercising every supported annotation, independent of ModelConfig.
@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Everything:
    steps: int
    flag: bool = False
    rate: float = 1.0
    name: str = "run"
    limit: Optional[int] = None
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, str] = (0, "a")
    tags: list[str] = dataclasses.field(default_factory=list)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    mode: Literal["fast", "slow"] = "fast"
    inner: Inner = Inner()

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


# ---------------------------------------------------------------- files in configs/


def test_every_yaml_in_configs_loads():
    # configs/finetune/ holds the fine-tuning schema (tests/test_finetune.py loads those).
    paths = sorted(p for p in CONFIGS.rglob("*.yaml") if "finetune" not in p.relative_to(CONFIGS).parts)
    assert len(paths) >= 12  # 11 model presets + tiny.yaml
    for path in paths:
        assert isinstance(load_yaml(path), Config), path


def test_tiny_yaml_is_the_default_config():
    assert load_yaml(CONFIGS / "tiny.yaml") == load_config(None) == Config(model=TINY)


# ------------------------------------------------------------------------- from_dict


def test_from_dict_builds_and_canonicalises_every_supported_type():
    cfg = from_dict(
        Everything,
        {
            "steps": 3,
            "flag": True,
            "rate": 2,  # int accepted for float, stored as float
            "limit": 7,
            "sizes": [4, 5, 6],  # list -> tuple
            "pair": [1, "b"],
            "tags": ["a", "b"],
            "weights": {"x": 1, "y": 0.5},
            "mode": "slow",
            "inner": {"rate": 1},
        },
    )
    assert cfg == Everything(
        3, True, 2.0, "run", 7, (4, 5, 6), (1, "b"), ["a", "b"], {"x": 1.0, "y": 0.5}, "slow", Inner(1.0)
    )
    assert type(cfg.rate) is float and type(cfg.inner.rate) is float and type(cfg.weights["x"]) is float


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("steps", "3", "steps: expected int, got str '3'"),
        ("steps", 3.0, "steps: expected int, got float 3.0"),
        ("steps", True, "steps: expected int, got bool True"),
        ("flag", 1, "flag: expected bool, got int 1"),
        ("flag", "true", "flag: expected bool, got str 'true'"),
        ("rate", False, "rate: expected float, got bool False"),
        ("name", 5, "name: expected str, got int 5"),
        ("limit", "x", "limit: expected int or null, got str 'x'"),
        ("sizes", 3, "sizes: expected list of int, got int 3"),
        ("sizes", [1, "2"], "sizes[1]: expected int, got str '2'"),
        ("pair", [1], "pair: expected list [int, str] (2 items), got list [1]"),
        ("weights", {"x": "heavy"}, "weights.x: expected float, got str 'heavy'"),
        ("mode", "medium", "mode: expected one of 'fast', 'slow', got str 'medium'"),
        ("inner", 3, "inner: expected mapping (Inner), got int 3"),
        ("inner", {"rate": "hi"}, "inner.rate: expected float, got str 'hi'"),
    ],
)
def test_wrong_type_names_key_type_and_value(key, value, message):
    with raises(f"src: {message}"):
        from_dict(Everything, {"steps": 1, key: value}, where="src")


def test_unknown_key_names_its_full_path_and_the_valid_keys():
    with raises("src: unknown key 'inner.rat' (did you mean 'inner.rate'?); valid keys of 'inner': name, rate"):
        from_dict(Everything, {"steps": 1, "inner": {"rat": 1.0}}, where="src")


def test_missing_required_fields_are_named():
    with raises("config: Everything is missing required keys: steps"):
        from_dict(Everything, {})
    with raises("config: section 'model' is missing required keys: model.vocab_size, model.num_layers"):
        from_dict(Config, {"model": {"hidden_size": 64, "num_heads": 4, "max_position_embeddings": 8}})


def test_post_init_errors_name_the_source():
    with raises("src: invalid Everything: steps must be >= 0, got -1"):
        from_dict(Everything, {"steps": -1}, where="src")


def test_a_preset_is_the_base_of_its_section():
    cfg = from_dict(Config, {"model": {"preset": "glm_large", "hidden_dropout": 0.0, "dtype": "bfloat16"}})
    assert cfg.model == get_preset("glm_large").replace(hidden_dropout=0.0, dtype="bfloat16")


# ------------------------------------------------------------------------ YAML files


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "run.yaml", "model:\n  preset: glm_tiny\n  hiden_size: 32\n")
    with raises(f"{path}: unknown key 'model.hiden_size' (did you mean 'model.hidden_size'?)") as info:
        load_yaml(path)
    assert "num_layers" in str(info.value) and "preset" in str(info.value)  # the valid keys


def test_yaml_unknown_section_names_file(tmp_path):
    path = write(tmp_path, "run.yaml", "model: {preset: glm_tiny}\ntrainer: {steps: 1}\n")
    with raises(f"{path}: unknown key 'trainer' (did you mean 'train'?); valid keys: checkpoint, data, mesh, model, optimizer, train"):
        load_yaml(path)


def test_yaml_wrong_type_names_file_key_and_type(tmp_path):
    path = write(tmp_path, "run.yaml", "model:\n  preset: glm_tiny\n  scan_layers: 1\n")
    with raises(f"{path}: model.scan_layers: expected bool, got int 1"):
        load_yaml(path)


def test_yaml_rule_violation_names_file(tmp_path):
    path = write(tmp_path, "run.yaml", "model: {preset: glm_tiny, num_heads: 5}\n")
    with raises(f"{path}: model: invalid ModelConfig: model.hidden_size (64) must be divisible by model.num_heads (5)"):
        load_yaml(path)


def test_yaml_unknown_preset_lists_presets(tmp_path):
    path = write(tmp_path, "run.yaml", "model: {preset: glm_huge}\n")
    with raises(f"{path}: model.preset: unknown model preset 'glm_huge'; valid presets: glm_10b,"):
        load_yaml(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("model: {preset: glm_tiny\n", "invalid YAML: while parsing a flow mapping, expected ',' or '}'"),
        ("model: {preset: glm_tiny}\nmodel: {preset: glm_base}\n", "invalid YAML: duplicate key 'model' (line 2, column 1)"),
        ("- model\n", "expected a mapping of config sections at the top level, got list ['model']"),
        ("", "Config is missing required keys: model"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, text, problem):
    path = write(tmp_path, "bad.yaml", text)
    with raises(f"{path}: {problem}"):
        load_yaml(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")


def test_yaml_scalars_follow_yaml_1_2(tmp_path):
    # PyYAML alone reads 1e-5 as a string; our loader reads it as a float.
    path = write(tmp_path, "run.yaml", "model: {preset: glm_tiny, layernorm_epsilon: 1e-5, init_std: 2E-2}\n")
    model = load_yaml(path).model
    assert model.layernorm_epsilon == 1e-5 and model.init_std == 0.02
    # ...and 'no' is not a bool, so a str field may hold it.
    assert from_dict(Everything, {"steps": 1, "name": "no"}) == Everything(1, name="no")


# ----------------------------------------------------------------------- inheritance


def test_base_inheritance_merges_recursively(tmp_path):
    write(tmp_path, "common/base.yaml", "model:\n  preset: glm_large\n  hidden_dropout: 0.0\n  dtype: bfloat16\n")
    child = write(tmp_path, "runs/child.yaml", "base: ../common/base.yaml\nmodel:\n  dtype: float16\n")
    assert load_yaml(child).model == get_preset("glm_large").replace(hidden_dropout=0.0, dtype="float16")


def test_base_chain_of_three(tmp_path):
    write(tmp_path, "a.yaml", "model: {preset: glm_base, init_std: 0.01}\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nmodel: {num_layers: 6}\n")
    c = write(tmp_path, "c.yaml", "base: b.yaml\nmodel: {preset: glm_large}\n")
    # c switches the preset; explicit keys of a and b still override it.
    assert load_yaml(c).model == get_preset("glm_large").replace(init_std=0.01, num_layers=6)


def test_error_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path, "base.yaml", "model: {preset: glm_tiny, dropout: 0.0}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\n")
    with raises(f"{base}: unknown key 'model.dropout'"):
        load_yaml(child)


def test_missing_required_key_names_the_whole_chain(tmp_path):
    base = write(tmp_path, "base.yaml", "model: {hidden_size: 64}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel: {num_heads: 4}\n")
    with raises(f"{child} (inheriting {base}): section 'model' is missing required keys: model.vocab_size"):
        load_yaml(child)


def test_base_errors(tmp_path):
    missing = write(tmp_path, "missing.yaml", "base: gone.yaml\n")
    with raises(f"{missing}: base: file not found: {tmp_path / 'gone.yaml'}"):
        load_yaml(missing)
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    y = write(tmp_path, "y.yaml", "base: x.yaml\n")
    with raises(f"{y}: base: inheritance cycle"):
        load_yaml(tmp_path / "x.yaml")
    typed = write(tmp_path, "typed.yaml", "base: [a.yaml]\n")
    with raises(f"{typed}: base: expected str (a YAML file path), got list ['a.yaml']"):
        load_yaml(typed)


# ------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("model.hidden_size=128", "hidden_size", 128),
        ("model.init_std=0.05", "init_std", 0.05),
        ("model.layernorm_epsilon=1e-6", "layernorm_epsilon", 1e-6),
        ("model.init_std=1", "init_std", 1.0),  # int accepted for float
        ("model.scan_layers=true", "scan_layers", True),
        ("model.scan_layers=False", "scan_layers", False),
        ("model.dtype=bfloat16", "dtype", "bfloat16"),
        ("model.dtype='float16'", "dtype", "float16"),
        ("model.intermediate_size=256", "intermediate_size", 256),
        ("model.intermediate_size=null", "intermediate_size", None),
        ("model.remat_policy = full", "remat_policy", "full"),
    ],
)
def test_override_values_are_parsed_and_typed(override, field, expected):
    base = Config(model=TINY.replace(intermediate_size=100))
    value = getattr(apply_overrides(base, [override]).model, field)
    assert value == expected and type(value) is type(expected)


def test_overrides_of_collections_and_nested_sections():
    cfg = Everything(steps=1)
    out = apply_overrides(
        cfg, ["sizes=[3, 4]", "pair=[5, b]", "tags=[x]", "weights={a: 2}", "inner.name=deep", "inner={rate: 3}"]
    )
    assert out == Everything(1, sizes=(3, 4), pair=(5, "b"), tags=["x"], weights={"a": 2.0}, inner=Inner(3.0, "deep"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden_sizee=128", "override 'model.hidden_sizee=128': unknown key 'model.hidden_sizee'"),
        ("trainer.steps=1", "override 'trainer.steps=1': unknown key 'trainer' (did you mean 'train'?)"),
        ("model.hidden_size=big", "override 'model.hidden_size=big': model.hidden_size: expected int, got str 'big'"),
        ("model.scan_layers=1", "override 'model.scan_layers=1': model.scan_layers: expected bool, got int 1"),
        ("model.scan_layers=yes", "model.scan_layers: expected bool, got str 'yes'"),
        ("model.hidden_size", "override 'model.hidden_size': expected KEY=VALUE"),
        ("model..x=1", "override 'model..x=1': expected KEY=VALUE"),
        ("model.intermediate_size=", "model.intermediate_size: empty value; write null for None"),
        ("model.dtype=[unclosed", "override 'model.dtype=[unclosed': invalid YAML"),
        ("model.preset=glm_huge", "model.preset: unknown model preset 'glm_huge'"),
    ],
)
def test_bad_overrides_name_the_override(override, message):
    with raises(message):
        apply_overrides(Config(model=TINY), [override])
    with raises(message):
        load_config(None, [override])


def test_rule_violation_from_overrides_names_them():
    with raises("with overrides ['model.num_heads=5']: model: invalid ModelConfig: model.hidden_size (64)"):
        apply_overrides(Config(model=TINY), ["model.num_heads=5"])


def test_overrides_must_be_a_list():
    with pytest.raises(TypeError, match="sequence of 'key=value' strings"):
        apply_overrides(Config(model=TINY), "model.hidden_size=8")  # type: ignore[arg-type]


def test_later_override_wins():
    cfg = apply_overrides(Config(model=TINY), ["model.hidden_size=128", "model.hidden_size=256"])
    assert cfg.model.hidden_size == 256


def test_preset_override_rebuilds_the_section_then_applies_its_siblings():
    start = Config(model=TINY.replace(hidden_dropout=0.0))
    for order in (["model.preset=glm_base", "model.dtype=bfloat16"], ["model.dtype=bfloat16", "model.preset=glm_base"]):
        assert apply_overrides(start, order).model == get_preset("glm_base").replace(dtype="bfloat16")


def test_load_config_preset_override_keeps_the_files_other_keys(tmp_path):
    path = write(tmp_path, "run.yaml", "model: {preset: glm_large, hidden_dropout: 0.0, scan_layers: true}\n")
    cfg = load_config(path, ["model.preset=glm_10b", "model.dtype=bfloat16"])
    assert cfg.model == get_preset("glm_10b").replace(hidden_dropout=0.0, scan_layers=True, dtype="bfloat16")


def test_load_config_defaults_to_tiny_and_applies_overrides():
    assert load_config(None, ["model.num_layers=3"]).model == TINY.replace(num_layers=3)


# -------------------------------------------------------------------------- printing


def test_to_yaml_round_trips_through_a_file(tmp_path):
    cfg = load_config(
        None,
        [
            "model.preset=glm_10b",
            "model.dtype=bfloat16",
            "model.layernorm_epsilon=1e-6",
            "model.intermediate_size=16384",
            "model.scan_layers=true",
            "model.remat_policy=dots",
        ],
    )
    text = str(cfg)
    assert text == to_yaml(cfg) and "preset" not in text  # fully resolved: every field explicit
    assert load_yaml(write(tmp_path, "printed.yaml", text)) == cfg


def test_to_yaml_quotes_strings_that_look_like_other_types():
    tricky = ["1e-5", "yes", "010", "null", "true", "2024-01-01", "1_000", ".5", "on"]
    cfg = Everything(1, tags=tricky, name="1e-5", weights={"no": 1.0, "1e3": 2.0}, inner=Inner(name="off"))
    text = to_yaml(cfg)
    # Both our loader and a plain YAML 1.1 reader get the strings back.
    assert from_dict(Everything, parse_yaml(text, "printed")) == cfg
    assert from_dict(Everything, yaml.safe_load(text)) == cfg
    assert apply_overrides(Everything(1), ["name='1e-5'"]).name == "1e-5"


def test_to_dict_is_plain_data():
    data = to_dict(Everything(1, sizes=(1, 2)))
    assert data["sizes"] == [1, 2] and data["inner"] == {"rate": 0.5, "name": "x"}
    assert from_dict(Everything, data) == Everything(1, sizes=(1, 2))


# ----------------------------------------------------------------- generic module


def test_typed_config_imports_nothing_of_glm_jax():
    # The generic machinery sits below every section: checkpointing, model and the
    # data pipeline import it, and glm_jax.config imports them.
    tree = ast.parse(Path(typed_config.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in imported if m.split(".")[0] in ("glm_jax", "tasks")]


def test_presets_are_per_call_in_the_generic_module():
    data = {"preset": "glm_tiny", "dtype": "bfloat16"}
    with raises("unknown key 'preset'"):
        typed_config.from_dict(ModelConfig, data)
    assert from_dict(ModelConfig, data) == TINY.replace(dtype="bfloat16")  # glm_jax.config: with presets


@dataclasses.dataclass(frozen=True)
class Limits:
    size: int = 4
    parts: int = 2
    rate: float = 0.5
    cap: Optional[int] = None


@pytest.mark.parametrize(
    "check, limits, message",
    [
        (lambda c: require_positive("s", c, "size", "parts"), Limits(parts=0), "s.parts must be positive, got 0"),
        (lambda c: require_positive("s", c, "size", "parts"), Limits(size=-1, parts=0), "s.size must be positive, got -1"),
        (lambda c: require_positive("s", c, "cap", or_null=True), Limits(cap=0), "s.cap must be positive or null, got 0"),
        (lambda c: require_at_least("s", c, 0, "rate"), Limits(rate=-0.5), "s.rate must be >= 0, got -0.5"),
        (lambda c: require_at_least("s", c, 8, "size"), Limits(size=7), "s.size must be >= 8, got 7"),
        (lambda c: require_at_least("s", c, 1, "cap", or_null=True), Limits(cap=0), "s.cap must be >= 1 or null, got 0"),
        (lambda c: require_divisible("s", c, "size", "parts"), Limits(size=5), "s.size (5) must be divisible by s.parts (2)"),
    ],
)
def test_field_checks_word_the_first_failure(check, limits, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        check(limits)


def test_field_checks_pass_valid_values_and_null():
    ok = Limits()
    require_positive("s", ok, "size", "parts", "rate")
    require_positive("s", ok, "cap", or_null=True)
    require_at_least("s", ok, 2, "size", "parts")
    require_at_least("s", ok, 1, "cap", or_null=True)
    require_divisible("s", ok, "size", "parts")
