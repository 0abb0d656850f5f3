"""The glm-jax run configuration: the :class:`Config` sections, presets and config files.

A run is described by one :class:`Config`, a frozen dataclass with one field per
section: ``model``, ``train``, ``optimizer``, ``mesh``, ``checkpoint`` and ``data``,
each a frozen dataclass defined next to the code it configures. It comes from a
YAML file (:func:`load_config`, which also finds files by name under ``configs/``)
plus ``key=value`` overrides; ``glm-jax finetune`` loads its own top-level
dataclass the same way (:func:`load_config_as`).

The checking (unknown keys, exact types, errors naming the file or override), the
YAML reader and writer, ``base:`` inheritance and overrides are generic and live in
:mod:`glm_jax.typed_config`; this module adds the glm-jax specifics: the ``model``
section accepts ``preset: glm_large`` (:data:`SECTION_PRESETS`; the preset's values
are the defaults and the section's other keys override them), and with no file the
config is the ``glm_tiny`` preset. :func:`from_dict` and :func:`apply_overrides`
here are the generic ones with those presets.

All ConfigErrors are ValueErrors, which the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

from glm_jax import typed_config
from glm_jax.checkpointing import CheckpointConfig
from glm_jax.data.pipeline import DataConfig
from glm_jax.model.config import ModelConfig
from glm_jax.model.presets import get_preset
from glm_jax.optim import OptimizerConfig
from glm_jax.sharding import MeshConfig
from glm_jax.train import TrainConfig
from glm_jax.typed_config import PRESET_KEY, ConfigError, to_dict, to_yaml  # noqa: F401  (part of this API)

T = TypeVar("T")

DEFAULT_PRESET = "glm_tiny"  # what `load_config(None)` builds

# Section types that accept ``preset: NAME``, and how to look NAME up (raising
# ValueError for an unknown name).
SECTION_PRESETS: typed_config.Presets = types.MappingProxyType({ModelConfig: get_preset})


def from_dict(cls: type[T], data: Any, *, where: str = "config") -> T:
    """:func:`glm_jax.typed_config.from_dict` with the glm-jax presets: builds the
    (possibly nested) dataclass ``cls`` (e.g. :class:`Config` or ``ModelConfig``)
    from plain data, ``where`` naming the source in error messages.

    Raises:
      ConfigError: unknown keys, wrong types, missing required fields, or a
        ValueError from ``cls.__post_init__``.
    """
    return typed_config.from_dict(cls, data, where=where, presets=SECTION_PRESETS)


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """:func:`glm_jax.typed_config.apply_overrides` with the glm-jax presets:
    ``config`` with ``key=value`` overrides applied; ``model.preset=NAME`` rebuilds
    the model section from that preset plus the call's other ``model.*`` overrides.

    Raises:
      ConfigError: a malformed override, an unknown key or a wrong type; the
        message quotes the override.
    """
    return typed_config.apply_overrides(config, overrides, presets=SECTION_PRESETS)


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
      data: the seqio task, sequence length and packing (``glm_jax.data.pipeline``).
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
        data, where = {"model": {PRESET_KEY: DEFAULT_PRESET}}, f"default config (model.preset={DEFAULT_PRESET})"
    else:
        data, where = typed_config.read_file(Config, find_config(path), presets=SECTION_PRESETS)
    return _resolve(Config, data, where, overrides)


def load_yaml(path: str | Path) -> Config:
    """Reads a YAML file (and its ``base:`` chain) into a :class:`Config`:
    :func:`load_config` without overrides.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ConfigError: anything wrong inside; the message names the file.
    """
    return load_config(path)


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
    data, where = typed_config.read_file(cls, find_config(path), presets=SECTION_PRESETS)
    if base:
        typed_config.check(cls, base, where=base_where, presets=SECTION_PRESETS)
        data = typed_config.merge(dict(base), data)
        where += f" over {base_where}"
    return _resolve(cls, data, where, overrides)


def _resolve(cls: type[T], data: Mapping[str, Any], where: str, overrides: Sequence[str]) -> T:
    """``cls`` built from raw ``data`` with ``overrides`` merged over it."""
    if overrides:
        data = typed_config.merge(data, typed_config.overrides_patch(cls, overrides, presets=SECTION_PRESETS))
        where += f" with overrides {list(overrides)}"
    return from_dict(cls, data, where=where)
