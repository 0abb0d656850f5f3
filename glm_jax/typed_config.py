"""Typed configs: frozen dataclasses from YAML files and ``key=value`` overrides.

The generic machinery behind ``glm_jax.config`` (which holds the glm-jax sections);
it knows nothing of glm-jax, so any module may import it. Everything that enters is
checked against the dataclass annotations:

* an unknown key is an error naming its full dotted path and the valid keys
  (silently ignored typos are the classic config bug);
* a wrong type is an error naming the key, the expected type and the value. There
  is no coercion except int -> float; in particular 1/0 and "true" are not bools;
* the error names its source: the YAML file (each file of an inheritance chain is
  checked on its own, so the error points at the file with the bad line) or the
  override string;
* cross-field rules live in each dataclass's ``__post_init__`` (the ``require_*``
  helpers below word the common ones); their ValueErrors are re-raised with the
  source prepended.

``base: other.yaml`` (top level, relative to the file) inherits another file, the
inheriting file winning in a recursive merge. A section type listed in ``presets``
(``{ModelConfig: get_preset}`` in ``glm_jax.config``) may say ``preset: NAME``: the
preset's values become the defaults. ConfigErrors are ValueErrors (one CLI line).
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
from typing import Any, Callable, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

PRESET_KEY = "preset"
BASE_KEY = "base"

# Section types that accept ``preset: NAME`` -> its lookup (ValueError if unknown).
Presets = Mapping[type, Callable[[str], Any]]
NO_PRESETS: Presets = types.MappingProxyType({})


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


def parse_yaml(text: str, where: str) -> Any:
    """``text`` read with this module's YAML 1.2 loader (duplicate keys are errors).

    Raises:
      ConfigError: invalid YAML, one line naming ``where`` and the position.
    """
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


def _convert(tp: Any, value: Any, where: str, path: str, build: bool, presets: Presets) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it in canonical form
    (int -> float where a float is expected, lists -> tuples for tuple fields).

    With ``build=False`` dataclass sections are only checked (keys, types, preset
    names), not constructed, so that a partial config (one file of an inheritance
    chain, one override) can be validated on its own. ``presets`` maps the section
    types that accept ``preset: NAME`` to their lookup.
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
            return _convert(members[0], value, where, path, build, presets)
        for member in members:
            try:
                return _convert(member, value, where, path, build, presets)
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
            items = [_convert(args[0], v, where, f"{path}[{i}]", build, presets) for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _fail(where, path, f"expected {_type_name(tp)} ({len(args)} items), got {_value_repr(value)}")
            items = [
                _convert(a, v, where, f"{path}[{i}]", build, presets) for i, (a, v) in enumerate(zip(args, value))
            ]
        return list(items) if (origin or tp) is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise mismatch()
        key_tp, value_tp = args or (Any, Any)
        return {
            _convert(key_tp, k, where, path, build, presets): _convert(
                value_tp, v, where, _join(path, str(k)), build, presets
            )
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _convert_section(tp, value, where, path, build, presets)
    raise TypeError(f"config field {path or '<root>'} has unsupported annotation {tp!r}")


def _convert_section(cls: type, value: Any, where: str, path: str, build: bool, presets: Presets) -> Any:
    """A dataclass section from a mapping (or an existing instance, as is)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise _fail(where, path, f"expected {_type_name(cls)}, got {_value_repr(value)}")
    fields = _field_types(cls)
    lookup_preset = presets.get(cls)
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

    converted = {k: _convert(fields[k], v, where, _join(path, k), build, presets) for k, v in data.items()}
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


def from_dict(cls: type[T], data: Any, *, where: str = "config", presets: Presets = NO_PRESETS) -> T:
    """Builds the (possibly nested) dataclass ``cls`` from plain data.

    Args:
      cls: a dataclass type, e.g. ``glm_jax.config.Config`` or ``ModelConfig``.
      data: a mapping of field names to values; nested dataclass fields take
        mappings (or instances).
      where: the data's source, prepended to error messages (a file name, say).
      presets: the section types that accept ``preset: NAME``, and their lookup.

    Raises:
      ConfigError: unknown keys, wrong types, missing required fields, or a
        ValueError from ``cls.__post_init__``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    return _convert_section(cls, data, where, "", build=True, presets=presets)


def check(cls: type, data: Any, *, where: str, presets: Presets = NO_PRESETS) -> None:
    """Checks partial data for ``cls`` (keys, types, preset names) without building it:
    required fields may be missing and ``__post_init__`` does not run.

    Raises:
      ConfigError: unknown keys or wrong types.
    """
    _convert_section(cls, data, where, "", build=False, presets=presets)


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
    so that ``from_dict`` of the text's :func:`parse_yaml` gives back an equal config."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def merge(base: Mapping, top: Mapping, *, reset_on_preset: bool = False) -> dict:
    """Recursive merge, ``top`` winning. With ``reset_on_preset``, a section of ``top``
    that names a preset replaces the base's section instead of merging into it."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            if reset_on_preset and PRESET_KEY in value:
                out[key] = dict(value)
            else:
                out[key] = merge(below, value, reset_on_preset=reset_on_preset)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------ files


def read_file(cls: type, path: Path, *, presets: Presets = NO_PRESETS) -> tuple[dict, str]:
    """The raw data of the YAML file ``path`` merged over its ``base:`` chain, each
    file checked on its own against ``cls`` (see :func:`check`), not built; and the
    sources as one string for error messages ("a.yaml (inheriting b.yaml)").

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ConfigError: anything wrong inside; the message names the file.
    """
    data, sources = _read_chain(cls, Path(path), (), presets)
    return data, sources[0] + (f" (inheriting {', '.join(sources[1:])})" if len(sources) > 1 else "")


def _read_chain(cls: type, path: Path, chain: tuple[Path, ...], presets: Presets) -> tuple[dict, list[str]]:
    """:func:`read_file` with the file names, innermost base last; ``chain`` holds
    the inheriting files, to detect cycles."""
    where = str(path)
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, where)
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, Mapping):
        raise _fail(where, "", f"expected a mapping of config sections at the top level, got {_value_repr(data)}")
    data = dict(data)
    base = data.pop(BASE_KEY, None)
    check(cls, data, where=where, presets=presets)
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
    base_data, sources = _read_chain(cls, base_path, chain + (me,), presets)
    return merge(base_data, data), [where] + sources


# -------------------------------------------------------------------- overrides


def overrides_patch(cls: type, overrides: Sequence[str], *, presets: Presets = NO_PRESETS) -> dict:
    """``["a.b=1", "a.c=x"]`` -> ``{"a": {"b": 1, "c": "x"}}``, each entry checked
    against ``cls`` (see :func:`check`); merge it over a file's data with :func:`merge`.

    Raises:
      ConfigError: a malformed override, an unknown key or a wrong type; the
        message quotes the override.
    """
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
        nested: Any = parse_yaml(raw, where)
        for part in reversed(parts):
            nested = {part: nested}
        check(cls, nested, where=where, presets=presets)
        patch = merge(patch, nested)
    return patch


def apply_overrides(config: T, overrides: Sequence[str], *, presets: Presets = NO_PRESETS) -> T:
    """``config`` with ``key=value`` overrides applied.

    Values are parsed as YAML (``128``, ``1e-5``, ``true``, ``null``, ``[1, 2]``,
    ``bfloat16``) and checked like a YAML file. ``section.preset=NAME`` (a section
    type in ``presets``) rebuilds the section from that preset plus the other
    overrides of that section in the same call (in any order); the section's current
    values are dropped, because a resolved config no longer knows which of them were
    chosen rather than inherited.
    Later overrides of the same key win.

    Raises:
      ConfigError: a malformed override, an unknown key or a wrong type; the
        message quotes the override.
    """
    patch = overrides_patch(type(config), overrides, presets=presets)
    if not patch:
        return config
    merged = merge(to_dict(config), patch, reset_on_preset=True)
    return from_dict(type(config), merged, where=f"config with overrides {list(overrides)}", presets=presets)


# ------------------------------------------------------------------ field checks
# For ``__post_init__``: each raises ValueError("<section>.<field> ...") for the
# first offending field, in the order given.


def require_positive(section: str, config: Any, *names: str, or_null: bool = False) -> None:
    """Each field in ``names`` of ``config`` is > 0, else ValueError
    ``"{section}.{name} must be positive, got {value}"``. With ``or_null``, None
    passes and the message says ``must be positive or null``."""
    for name in names:
        value = getattr(config, name)
        if or_null and value is None:
            continue
        if value <= 0:
            raise ValueError(f"{section}.{name} must be positive{' or null' if or_null else ''}, got {value}")


def require_at_least(section: str, config: Any, minimum: Any, *names: str, or_null: bool = False) -> None:
    """Each field in ``names`` of ``config`` is >= ``minimum``, else ValueError
    ``"{section}.{name} must be >= {minimum}, got {value}"``. With ``or_null``, None
    passes and the message says ``must be >= {minimum} or null``."""
    for name in names:
        value = getattr(config, name)
        if or_null and value is None:
            continue
        if value < minimum:
            raise ValueError(f"{section}.{name} must be >= {minimum}{' or null' if or_null else ''}, got {value}")


def require_divisible(section: str, config: Any, name: str, divisor: str) -> None:
    """Field ``name`` of ``config`` is a multiple of field ``divisor``, else ValueError
    ``"{section}.{name} ({value}) must be divisible by {section}.{divisor} ({divisor's value})"``."""
    value, by = getattr(config, name), getattr(config, divisor)
    if value % by:
        raise ValueError(f"{section}.{name} ({value}) must be divisible by {section}.{divisor} ({by})")
