"""Typed run configuration: frozen dataclasses, YAML files and ``key=value`` overrides.

A run is described by one :class:`Config`, a frozen dataclass whose fields are
sections (``model`` for now; train, data, mesh, ... later, each one more field).
It comes from YAML, and everything that enters is checked against the dataclass
annotations:

* an unknown key is an error naming its full dotted path and the valid keys
  (silently ignored typos are the classic config bug);
* a wrong type is an error naming the key, the expected type and the value. There
  is no coercion except int -> float; in particular 1/0 and "true" are not bools;
* the error names its source: the YAML file (each file of an inheritance chain is
  checked on its own, so the error points at the file with the bad line) or the
  override string;
* cross-field rules live in each dataclass's ``__post_init__``; their ValueErrors
  are re-raised with the source prepended.

YAML conveniences:

* ``base: other.yaml`` (top level, relative to the file) inherits another file;
  mappings merge recursively, the inheriting file wins.
* A section registered in ``_SECTION_PRESETS`` (``model``) may say
  ``preset: glm_large``: the preset's values are the defaults and the section's
  other keys override them.

All ConfigErrors are ValueErrors, which the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

import yaml

from glm_jax.checkpointing import CheckpointConfig
from glm_jax.data import DataConfig
from glm_jax.model.config import ModelConfig
from glm_jax.model.presets import get_preset
from glm_jax.optim import OptimizerConfig
from glm_jax.sharding import MeshConfig
from glm_jax.train import TrainConfig

T = TypeVar("T")

DEFAULT_PRESET = "glm_tiny"  # what `load_config(None)` builds
PRESET_KEY = "preset"
BASE_KEY = "base"

# Section types that accept ``preset: NAME``, and how to look NAME up (raising
# ValueError for an unknown name).
_SECTION_PRESETS: dict[type, Callable[[str], Any]] = {ModelConfig: get_preset}


class ConfigError(ValueError):
    """A config value, key or file is invalid; the message names where and why."""


def _fail(where: str, path: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- YAML
# PyYAML implements YAML 1.1, whose implicit typing surprises configs: `1e-5` is a
# string (no dot), `no`/`on` are bools, `010` is octal 8 and `2024-01-01` a date.
# Our loader keeps YAML 1.2's stricter core rules for those four types.

_TAG = "tag:yaml.org,2002:"
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?  # 1.5 .5 1. 1.5e-3
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+                                   # 1e-5
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
_REPLACED_TAGS = {_TAG + t for t in ("bool", "int", "float", "timestamp")}


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and an error on duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeConstructor reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that either YAML 1.1 or our loader would read as non-string,
    so that a dumped config means the same to both."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in entries if tag not in _REPLACED_TAGS]
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_TAG + "bool", _BOOL_RE, list("tTfF"))
    _cls.add_implicit_resolver(_TAG + "int", _INT_RE, list("-+0123456789"))
    _cls.add_implicit_resolver(_TAG + "float", _FLOAT_RE, list("-+0123456789."))


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:  # one line, with the position, for the CLI
        problem = ", ".join(p for p in (e.context, e.problem) if p)
        mark = e.problem_mark or e.context_mark
        position = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _fail(where, "", f"invalid YAML: {problem}{position}") from None
    except yaml.YAMLError as e:
        raise _fail(where, "", f"invalid YAML: {e}") from None


# ------------------------------------------------------------------ type checking


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """``{name: resolved annotation}`` of the fields a config file may set."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    """The type as a config author thinks of it: "int or null", "list of int"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return "list [" + ", ".join(_type_name(a) for a in args) + "]"
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", repr(tp))


def _is_structured(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (tuple, list, dict) or tp in (tuple, list, dict)


def _value_repr(value: Any) -> str:
    kind = {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if value is not None else "null"


def _convert(tp: Any, value: Any, where: str, path: str, build: bool) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it in canonical form
    (int -> float where a float is expected, lists -> tuples for tuple fields).

    With ``build=False`` dataclass sections are only checked (keys, types, preset
    names), not constructed, so that a partial config (one file of an inheritance
    chain, one override) can be validated on its own.
    """

    def mismatch() -> ConfigError:
        return _fail(where, path, f"expected {_type_name(tp)}, got {_value_repr(value)}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise mismatch()
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and _is_structured(members[0]):
            # Optional[section or collection]: the inner error names the precise key.
            return _convert(members[0], value, where, path, build)
        for member in members:
            try:
                return _convert(member, value, where, path, build)
            except ConfigError:
                continue
        raise mismatch()
    if tp is bool:  # exactly a bool: 1, 0 and "true" are mistakes, not bools
        if type(value) is bool:
            return value
        raise mismatch()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise mismatch()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise mismatch()
    if tp is str:
        if isinstance(value, str):
            return value
        raise mismatch()
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise mismatch()
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise mismatch()
        if not args:
            items = list(value)
        elif origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(args[0], v, where, f"{path}[{i}]", build) for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _fail(where, path, f"expected {_type_name(tp)} ({len(args)} items), got {_value_repr(value)}")
            items = [_convert(a, v, where, f"{path}[{i}]", build) for i, (a, v) in enumerate(zip(args, value))]
        return list(items) if (origin or tp) is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise mismatch()
        key_tp, value_tp = args or (Any, Any)
        return {
            _convert(key_tp, k, where, path, build): _convert(value_tp, v, where, _join(path, str(k)), build)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _convert_section(tp, value, where, path, build)
    raise TypeError(f"config field {path or '<root>'} has unsupported annotation {tp!r}")


def _convert_section(cls: type, value: Any, where: str, path: str, build: bool) -> Any:
    """A dataclass section from a mapping (or an existing instance, as is)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise _fail(where, path, f"expected {_type_name(cls)}, got {_value_repr(value)}")
    fields = _field_types(cls)
    lookup_preset = _SECTION_PRESETS.get(cls)
    valid = sorted([*fields, *([PRESET_KEY] if lookup_preset else [])])
    for key in value:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {_join(path, close[0])!r}?)" if close else ""
            raise _fail(
                where,
                "",
                f"unknown key {_join(path, str(key))!r}{hint}; valid keys"
                f"{' of ' + repr(path) if path else ''}: {', '.join(valid)}",
            )

    data = dict(value)
    defaults: dict[str, Any] = {}
    if lookup_preset and PRESET_KEY in data:
        name = data.pop(PRESET_KEY)
        preset_path = _join(path, PRESET_KEY)
        if not isinstance(name, str):
            raise _fail(where, preset_path, f"expected str, got {_value_repr(name)}")
        try:
            preset = lookup_preset(name)
        except ValueError as e:
            raise _fail(where, preset_path, str(e)) from None
        defaults = {field: getattr(preset, field) for field in fields}

    converted = {k: _convert(fields[k], v, where, _join(path, k), build) for k, v in data.items()}
    if not build:
        return converted
    kwargs = {**defaults, **converted}
    declared = {f.name: f for f in dataclasses.fields(cls)}
    missing = [
        name
        for name in fields
        if name not in kwargs
        and declared[name].default is dataclasses.MISSING
        and declared[name].default_factory is dataclasses.MISSING
    ]
    if missing:
        what = f"section {path!r}" if path else cls.__name__
        raise _fail(where, "", f"{what} is missing required keys: {', '.join(_join(path, m) for m in missing)}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a cross-field rule in __post_init__
        raise _fail(where, path, f"invalid {cls.__name__}: {e}") from None


def from_dict(cls: type[T], data: Any, *, where: str = "config") -> T:
    """Builds the (possibly nested) dataclass ``cls`` from plain data.

    Args:
      cls: a dataclass type, e.g. :class:`Config` or ``ModelConfig``.
      data: a mapping of field names to values; nested dataclass fields take
        mappings (or instances).
      where: the data's source, prepended to error messages (a file name, say).

    Raises:
      ConfigError: unknown keys, wrong types, missing required fields, or a
        ValueError from ``cls.__post_init__``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    return _convert_section(cls, data, where, "", build=True)


# --------------------------------------------------------------- dicts and YAML out


def to_dict(config: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config; ``from_dict`` inverts it."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def to_yaml(config: Any) -> str:
    """The fully resolved config as YAML (every field explicit, no presets or bases),
    so that ``load_yaml`` of the text gives back an equal config."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _merge(base: Mapping, top: Mapping, *, reset_on_preset: bool = False) -> dict:
    """Recursive merge, ``top`` winning. With ``reset_on_preset``, a section of ``top``
    that names a preset replaces the base's section instead of merging into it."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            if reset_on_preset and PRESET_KEY in value:
                out[key] = dict(value)
            else:
                out[key] = _merge(below, value, reset_on_preset=reset_on_preset)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------ files


def _load_raw(cls: type, path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, list[str]]:
    """The merged raw mapping of ``path`` and its ``base:`` chain, each file checked
    on its own; also the file names, innermost base last."""
    where = str(path)
    text = path.read_text(encoding="utf-8")
    data = _parse_yaml(text, where)
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, Mapping):
        raise _fail(where, "", f"expected a mapping of config sections at the top level, got {_value_repr(data)}")
    data = dict(data)
    base = data.pop(BASE_KEY, None)
    _convert_section(cls, data, where, "", build=False)
    if base is None:
        return data, [where]
    if not isinstance(base, str):
        raise _fail(where, BASE_KEY, f"expected str (a YAML file path), got {_value_repr(base)}")
    base_path = path.parent / base
    me = path.resolve()
    if base_path.resolve() in chain + (me,):
        cycle = " -> ".join(str(p) for p in chain + (me, base_path.resolve()))
        raise _fail(where, BASE_KEY, f"inheritance cycle: {cycle}")
    if not base_path.is_file():
        raise _fail(where, BASE_KEY, f"file not found: {base_path}")
    base_data, sources = _load_raw(cls, base_path, chain + (me,))
    return _merge(base_data, data), [where] + sources


def _describe(sources: list[str]) -> str:
    return sources[0] + (f" (inheriting {', '.join(sources[1:])})" if len(sources) > 1 else "")


def load_yaml(path: str | Path) -> Config:
    """Reads a YAML file (and its ``base:`` chain) into a :class:`Config`.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ConfigError: anything wrong inside; the message names the file.
    """
    return load_config(path)


# -------------------------------------------------------------------- overrides


def _overrides_patch(cls: type, overrides: Sequence[str]) -> dict:
    """``["a.b=1", "a.c=x"]`` -> ``{"a": {"b": 1, "c": "x"}}``, each entry checked."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a sequence of 'key=value' strings, got the str {overrides!r}")
    patch: dict = {}
    for text in overrides:
        where = f"override {text!r}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts):
            raise _fail(where, "", "expected KEY=VALUE with a dotted KEY such as model.hidden_size=128")
        if not raw.strip():
            raise _fail(where, key, "empty value; write null for None and '' for an empty string")
        nested: Any = _parse_yaml(raw, where)
        for part in reversed(parts):
            nested = {part: nested}
        _convert_section(cls, nested, where, "", build=False)
        patch = _merge(patch, nested)
    return patch


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """``config`` with ``key=value`` overrides applied.

    Values are parsed as YAML (``128``, ``1e-5``, ``true``, ``null``, ``[1, 2]``,
    ``bfloat16``) and checked like a YAML file. ``section.preset=NAME`` rebuilds
    the section from that preset plus the other overrides of that section in the
    same call (in any order); the section's current values are dropped, because a
    resolved config no longer knows which of them were chosen rather than inherited.
    Later overrides of the same key win.

    Raises:
      ConfigError: a malformed override, an unknown key or a wrong type; the
        message quotes the override.
    """
    patch = _overrides_patch(type(config), overrides)
    if not patch:
        return config
    merged = _merge(to_dict(config), patch, reset_on_preset=True)
    return from_dict(type(config), merged, where=f"config with overrides {list(overrides)}")


# ------------------------------------------------------------------- top level


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a glm-jax run needs, one section per field.

    To add a section, add a field here whose type is a frozen dataclass, with a
    default (``dataclasses.field(default_factory=TrainConfig)``) unless every
    config file must spell it out; loading, overrides and printing pick it up.

    Attributes:
      model: the architecture and numerics (``glm_jax.model.config``).
      train: batch size, microbatches, steps, seed (``glm_jax.train``).
      optimizer: AdamW and the learning-rate schedule (``glm_jax.optim``).
      mesh: the device mesh (``glm_jax.sharding``).
      checkpoint: where and how often to checkpoint (``glm_jax.checkpointing``).
      data: the seqio task, sequence length and packing (``glm_jax.data``).
    """

    model: ModelConfig
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __str__(self) -> str:
        return to_yaml(self)


def config_dirs() -> list[Path]:
    """Where config names are looked up: ``$GLM_JAX_CONFIGS`` (os.pathsep-separated),
    then the ``configs/`` folder of the source tree glm_jax runs from."""
    import os

    dirs = [Path(p) for p in os.environ.get("GLM_JAX_CONFIGS", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parent.parent / "configs"]


def find_config(path_or_name: str | Path) -> Path:
    """A config file by path, or by name relative to :func:`config_dirs`
    (``pretrain_embedded`` finds ``configs/pretrain_embedded.yaml``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    candidates = [path] if path.suffix else [path.with_suffix(".yaml"), path]
    for root in config_dirs():
        for candidate in candidates:
            if (root / candidate).is_file():
                return root / candidate
    raise FileNotFoundError(
        f"config file not found: {path_or_name} (looked in the working directory and "
        f"{', '.join(str(d) for d in config_dirs())})"
    )


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Config:
    """The config a command runs with: a YAML file (or, for None, the
    ``glm_tiny`` preset) plus ``key=value`` overrides.

    Overrides are merged into the file's data before it is resolved, so
    ``model.preset=glm_10b`` keeps the file's other model keys (dtype, remat, ...)
    and swaps only the preset beneath them.

    ``path`` may also be a name under ``configs/`` (see :func:`find_config`).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ConfigError: a problem in the file or an override, named in the message.
    """
    if path is None:
        data, sources = {"model": {PRESET_KEY: DEFAULT_PRESET}}, [f"default config (model.preset={DEFAULT_PRESET})"]
    else:
        data, sources = _load_raw(Config, find_config(path))
    where = _describe(sources)
    if overrides:
        data = _merge(data, _overrides_patch(Config, overrides))
        where += f" with overrides {list(overrides)}"
    return from_dict(Config, data, where=where)


def load_config_as(
    cls: type[T],
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    base: Optional[Mapping[str, Any]] = None,
    base_where: str = "defaults",
) -> T:
    """:func:`load_config` for another top-level config dataclass ``cls`` (e.g.
    ``glm_jax.finetune.FinetuneRunConfig``), on top of optional ``base`` data.

    ``base`` (plain data, e.g. ``{"model": to_dict(checkpoint_model_config)}``) lies
    under the file, which lies under the overrides: later sources win key by key.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ConfigError: a problem in ``base``, the file or an override, named in the message.
    """
    data, sources = _load_raw(cls, find_config(path))
    where = _describe(sources)
    if base:
        _convert_section(cls, base, base_where, "", build=False)
        data = _merge(dict(base), data)
        where += f" over {base_where}"
    if overrides:
        data = _merge(data, _overrides_patch(cls, overrides))
        where += f" with overrides {list(overrides)}"
    return from_dict(cls, data, where=where)
