"""The glm-jax model directory: what ``glm-jax convert`` writes and generation/eval read.

Layout::

    <dir>/config.yaml    the ModelConfig fields, plain YAML (one ``key: value`` per field)
    <dir>/params/        an orbax checkpoint of the Flax params tree (StandardCheckpointer)
    <dir>/vocab.model    optional: the sentencepiece model of the GLM vocabulary the
                         model was trained with (tasks.vocab.GLMVocabulary)

Both :func:`save_model_dir` and :func:`load_model_dir` check the params against
the tree that ``GLM(config).init`` would build (every path, shape and dtype), so a
directory whose config and params disagree is rejected with the offending path
named, at save time rather than at the first forward pass.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import yaml

from glm_jax import config as config_lib
from glm_jax.model import GLM, ModelConfig

PathLike = Union[str, Path]

CONFIG_FILE = "config.yaml"
PARAMS_DIR = "params"
VOCAB_FILE = "vocab.model"


def save_model_dir(
    path: PathLike, config: ModelConfig, params: Mapping[str, Any], *, vocab_file: Optional[PathLike] = None
) -> Path:
    """Write ``config`` and ``params`` as a glm-jax model directory; returns its path.

    Args:
      path: a directory that does not exist yet or is empty. A non-empty one is
        refused, so nothing saved earlier is ever overwritten.
      config: the model's config; ``config.scan_layers`` must match the params
        layout (``layers`` stacked vs ``layers_{i}``).
      params: the Flax params tree (numpy or jax arrays, ``config.param_dtype``).
      vocab_file: a sentencepiece model to store beside the weights, so that
        ``glm-jax generate --checkpoint DIR`` needs nothing else.

    Raises:
      ValueError: ``path`` is non-empty or not a directory, or ``params`` do not
        match ``config`` (each wrong path named).
    """
    path = ensure_empty_dir(path)
    check_params(params, config, what="params to save")
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        # orbax wants an absolute path; save() is async, so wait before declaring success.
        checkpointer.save(path.resolve() / PARAMS_DIR, nn.unbox(dict(params)))
        checkpointer.wait_until_finished()
    if vocab_file is not None:
        shutil.copyfile(vocab_file, path / VOCAB_FILE)
    # The config goes last: a directory without it is visibly incomplete.
    write_config(path / CONFIG_FILE, config)
    return path


def vocab_file(path: PathLike) -> Optional[Path]:
    """The model directory's ``vocab.model``, or None if it has none."""
    candidate = Path(path) / VOCAB_FILE
    return candidate if candidate.is_file() else None


def load_model_dir(path: PathLike, *, shardings: Optional[Any] = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a glm-jax model directory.

    Args:
      path: the directory :func:`save_model_dir` wrote.
      shardings: optional pytree of ``jax.sharding.Sharding`` matching the params;
        given, the params come back as jax Arrays laid out that way (each host reads
        only its shards); else as host numpy arrays.

    Returns:
      ``(config, params)``.

    Raises:
      FileNotFoundError: ``config.yaml`` or ``params/`` is missing.
      ValueError: config.yaml is malformed (the bad key named), or the stored params
        do not match it (the bad path named).
    """
    path = Path(path)
    config = read_config(path / CONFIG_FILE)
    params_dir = (path / PARAMS_DIR).resolve()
    if not params_dir.is_dir():
        raise FileNotFoundError(f"{path} is not a glm-jax model directory: {params_dir} is missing")
    expected = abstract_params(config)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(params_dir).item_metadata
        stored = getattr(stored, "tree", stored)
        _compare(_shapes(stored), _shapes(expected), what=f"the params stored in {params_dir}", config=config)
        if shardings is None:
            # np.empty only reserves address space; orbax fills fresh numpy arrays.
            target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), expected)
        else:
            target = jax.tree.map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), expected, shardings
            )
        params = checkpointer.restore(params_dir, target)
    return config, params


def ensure_empty_dir(path: PathLike) -> Path:
    """``path`` as a Path, if it does not exist or is an empty directory; else ValueError naming it."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"output path {path} exists and is not a directory")
        if any(path.iterdir()):
            raise ValueError(f"output directory {path} is not empty; refusing to overwrite it (choose a new path)")
    return path


# ----------------------------------------------------------------------------- config.yaml


def write_config(path: PathLike, config: ModelConfig) -> None:
    """Write every ModelConfig field as plain YAML (glm_jax.config's dumper)."""
    header = "# glm-jax model config: the glm_jax.model.ModelConfig fields\n"
    Path(path).write_text(header + config_lib.to_yaml(config))


def read_config(path: PathLike) -> ModelConfig:
    """Parse a config.yaml into a ModelConfig.

    Checking is glm_jax.config's: unknown keys, missing required fields and values
    of the wrong type raise a ValueError naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a glm-jax model directory: {path} is missing")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    return config_lib.from_dict(ModelConfig, data, where=str(path))


# ----------------------------------------------------------------------------- params checks


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """The params tree ``GLM(config).init`` builds, as ``jax.ShapeDtypeStruct`` leaves (no compute)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.eval_shape(
        lambda: GLM(config).init(jax.random.key(0), tokens, tokens, tokens, sep=jnp.zeros((1,), jnp.int32))
    )
    return nn.unbox(variables["params"])


def check_params(params: Mapping[str, Any], config: ModelConfig, what: str = "params") -> None:
    """Require ``params`` to have exactly the paths, shapes and dtypes of ``GLM(config)``."""
    _compare(_shapes(nn.unbox(dict(params))), _shapes(abstract_params(config)), what=what, config=config)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in keys): (tuple(leaf.shape), np.dtype(leaf.dtype))
        for keys, leaf in leaves
    }


def _compare(actual: dict, expected: dict, *, what: str, config: ModelConfig) -> None:
    problems = [f"missing {p} (expected shape {list(s)})" for p, (s, _) in expected.items() if p not in actual]
    problems += [f"unexpected {p} (shape {list(s)})" for p, (s, _) in actual.items() if p not in expected]
    for p, (shape, dtype) in expected.items():
        if p in actual and actual[p] != (shape, dtype):
            got_shape, got_dtype = actual[p]
            problems.append(f"{p}: expected {dtype}{list(shape)}, got {got_dtype}{list(got_shape)}")
    if problems:
        layout = "stacked 'layers' (scan_layers=True)" if config.scan_layers else "'layers_{i}' (scan_layers=False)"
        raise ValueError(
            f"{what} do not match the config (L={config.num_layers} h={config.hidden_size} "
            f"vocab={config.vocab_size}, {layout}, param_dtype={config.param_dtype}):\n  " + "\n  ".join(problems)
        )
