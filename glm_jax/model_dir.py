"""The glm-jax model directory: what ``glm-jax convert`` writes and generation/eval read.

Layout::

    <dir>/config.yaml     the ModelConfig fields, plain YAML (one ``key: value`` per field)
    <dir>/params/         an orbax checkpoint of the Flax params tree (StandardCheckpointer)
    <dir>/tokenizer.yaml  optional: the tokenizer the model was trained with (TokenizerConfig)
    <dir>/vocab.model, vocab.txt, vocab.json + merges.txt, cog-pretrain.model
                          that tokenizer's files, copied in

Both :func:`save_model_dir` and :func:`load_model_dir` check the params against
the tree that ``GLM(config).init`` would build (every path, shape and dtype), so a
directory whose config and params disagree is rejected with the offending path
named, at save time rather than at the first forward pass.

The tokenizer. ``tokenizer.yaml`` names its kind (``sentencepiece``: glm-jax's own
``glm_jax.data.vocab.GLMVocabulary``; ``bert``, ``gpt2``, ``roberta``, ``chinese``: the
official GLM tokenizers of ``glm_jax.data.official_vocabs``), its files (relative to the
directory), the options that change command-token ids (``task_mask``,
``decoder_mask``, ``fix_command_token``, ``pad_to_multiple_of``) and the
``input_style`` (official or hf, glm_jax/decoding/prompt_layout.py). :func:`load_vocabulary`
rebuilds the seqio vocabulary from it, so that ``glm-jax generate`` and ``glm-jax
eval`` need nothing but the directory. A directory written before tokenizer.yaml
existed, with only ``vocab.model``, loads as ``sentencepiece``.

The vocabulary must fit the model: an official tokenizer's padded size must equal
the embedding's ``vocab_size`` (the official code sizes the embedding from the
tokenizer, so a mismatch means the wrong tokenizer or options); a sentencepiece
one may be smaller. Saving and loading both check it.
"""

from __future__ import annotations

import dataclasses
import os
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
from glm_jax.data.tokenizers import (
    STORED_NAMES, VOCAB_FILE, TokenizerConfig, build_vocabulary, check_vocabulary_fits, sentencepiece_vocabulary,
)
from glm_jax.model import GLM, ModelConfig

PathLike = Union[str, Path]

CONFIG_FILE = "config.yaml"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.yaml"


def save_model_dir(
    path: PathLike,
    config: ModelConfig,
    params: Mapping[str, Any],
    *,
    vocab_file: Optional[PathLike] = None,
    tokenizer: Optional[TokenizerConfig] = None,
) -> Path:
    """Write ``config`` and ``params`` as a glm-jax model directory; returns its path.

    Args:
      path: a directory that does not exist yet or is empty. A non-empty one is
        refused, so nothing saved earlier is ever overwritten.
      config: the model's config; ``config.scan_layers`` must match the params
        layout (``layers`` stacked vs ``layers_{i}``).
      params: the Flax params tree (numpy or jax arrays, ``config.param_dtype``).
      vocab_file: a sentencepiece model (glm-jax's own vocabulary) to store beside
        the weights; short for ``tokenizer=TokenizerConfig("sentencepiece", vocab_file)``.
      tokenizer: the tokenizer to record, its file paths as they are now; the files
        are copied in and ``tokenizer.yaml`` names the copies. Either this or
        ``vocab_file``, not both.

    Raises:
      ValueError: ``path`` is non-empty or not a directory, ``params`` do not
        match ``config`` (each wrong path named), or the tokenizer does not fit
        ``config.vocab_size`` (both sizes named).
      FileNotFoundError: a tokenizer file is missing.
    """
    if vocab_file is not None:
        if tokenizer is not None:
            raise ValueError("pass vocab_file or tokenizer, not both")
        tokenizer = TokenizerConfig(kind="sentencepiece", vocab_file=str(vocab_file))
    path = ensure_empty_dir(path)
    check_params(params, config, what="params to save")
    if tokenizer is not None:
        # Fail before writing anything: the files must load and fit the model.
        check_vocabulary_fits(build_vocabulary(tokenizer), tokenizer, config.vocab_size, where=f"tokenizer for {path}")
    path.mkdir(parents=True, exist_ok=True)
    # Host arrays written by this process alone: in a multi-process run only process 0
    # exports, and orbax's default barrier across all processes would wait forever.
    this_process = jax.process_index()
    local_only = ocp.options.MultiprocessingOptions(primary_host=this_process, active_processes={this_process})
    with ocp.StandardCheckpointer(multiprocessing_options=local_only) as checkpointer:
        # orbax wants an absolute path; save() is async, so wait before declaring success.
        checkpointer.save(path.resolve() / PARAMS_DIR, nn.unbox(dict(params)))
        checkpointer.wait_until_finished()
    if tokenizer is not None:
        write_tokenizer(path, tokenizer)
    # The config goes last: a directory without it is visibly incomplete.
    write_config(path / CONFIG_FILE, config)
    return path


def replace_model_dir(
    path: PathLike,
    config: ModelConfig,
    params: Mapping[str, Any],
    *,
    tokenizer: Optional[TokenizerConfig] = None,
    extra_files: Optional[Mapping[str, str]] = None,
) -> Path:
    """:func:`save_model_dir` at ``path``, replacing an older directory there only once
    the new one is complete (written beside it, then renamed), so an interrupted export
    never leaves a half-written model where a good one was.

    Args:
      params: host (numpy) arrays: this writes from the calling process alone.
      extra_files: ``{file name: text}`` written into the directory too.
    """
    final = Path(path)
    remove_stale_exports(final)
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    save_model_dir(staging, config, params, tokenizer=tokenizer)
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)
    return final


def vocab_file(path: PathLike) -> Optional[Path]:
    """The model directory's ``vocab.model``, or None if it has none."""
    candidate = Path(path) / VOCAB_FILE
    return candidate if candidate.is_file() else None


def missing_parts(path: PathLike) -> list[str]:
    """What ``path`` lacks to be a model directory (empty: it is one)."""
    path = Path(path)
    if not path.exists():
        return [f"{path} does not exist"]
    if not path.is_dir():
        return [f"{path} is a file, not a directory"]
    return [name for name in (CONFIG_FILE, PARAMS_DIR + "/") if not (path / name.rstrip("/")).exists()]


def is_model_dir(path: PathLike) -> bool:
    return not missing_parts(path)


def check_model_dir(path: PathLike, option: str = "--checkpoint") -> Path:
    """``path`` as a Path if it is a model directory; else FileNotFoundError saying
    what is missing, and where the model is when ``path`` is a run directory."""
    path = Path(path)
    missing = missing_parts(path)
    if not missing:
        return path
    hint = ""
    for candidate in ("model", "best"):  # glm-jax train / glm-jax finetune exports
        if is_model_dir(path / candidate):
            hint = f"; it is a run directory: use {option} {path / candidate}"
            break
    else:
        if path.is_dir():
            hint = "; make one with `glm-jax train`, `glm-jax finetune` or `glm-jax convert`"
    what = missing[0] if len(missing) == 1 and " " in missing[0] else f"missing {', '.join(missing)}"
    raise FileNotFoundError(f"{option} {path} is not a glm-jax model directory: {what}{hint}")


def remove_stale_exports(path: PathLike) -> None:
    """Cleans up after an export that was killed: restores ``<name>.old-<pid>`` if the
    final directory is missing (the kill came between the two renames), then removes
    every other ``<name>.tmp-<pid>`` and ``<name>.old-<pid>`` beside ``path``."""
    final = Path(path)
    if not final.parent.is_dir():
        return
    leftovers = sorted(final.parent.glob(f"{final.name}.tmp-*")) + sorted(final.parent.glob(f"{final.name}.old-*"))
    for old in [p for p in leftovers if ".old-" in p.name]:
        if not final.exists() and is_model_dir(old):
            old.rename(final)
    for leftover in leftovers:
        if leftover.exists() and leftover.name != f"{final.name}.tmp-{os.getpid()}":
            shutil.rmtree(leftover, ignore_errors=True)


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
    path = check_model_dir(path, option="model directory")
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


# ----------------------------------------------------------------------------- tokenizer.yaml

def write_tokenizer(path: PathLike, tokenizer: TokenizerConfig) -> TokenizerConfig:
    """Copy ``tokenizer``'s files into the model directory ``path`` under their
    standard names (STORED_NAMES) and write ``tokenizer.yaml``; returns the stored record."""
    path = Path(path)
    sources = tokenizer.files()
    vocab_name, merges_name = STORED_NAMES[tokenizer.kind]
    shutil.copyfile(sources["vocab_file"], path / vocab_name)
    if merges_name is not None:
        shutil.copyfile(sources["merges_file"], path / merges_name)
    stored = dataclasses.replace(tokenizer, vocab_file=vocab_name, merges_file=merges_name)
    header = "# glm-jax tokenizer: glm_jax.data.tokenizers.TokenizerConfig (file paths relative to this directory)\n"
    (path / TOKENIZER_FILE).write_text(header + config_lib.to_yaml(stored))
    return stored


def read_tokenizer(path: PathLike) -> Optional[TokenizerConfig]:
    """The model directory's tokenizer record: ``tokenizer.yaml``, else a bare
    ``vocab.model`` as ``sentencepiece`` (directories from before tokenizer.yaml),
    else None.

    Raises:
      ValueError: tokenizer.yaml is malformed (the file and key named).
    """
    path = Path(path)
    record = path / TOKENIZER_FILE
    if record.is_file():
        try:
            data = yaml.safe_load(record.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{record}: invalid YAML: {e}") from None
        return config_lib.from_dict(TokenizerConfig, data, where=str(record))
    if (path / VOCAB_FILE).is_file():
        return TokenizerConfig(kind="sentencepiece", vocab_file=VOCAB_FILE)
    return None


def load_vocabulary(path: PathLike) -> Any:
    """The vocabulary of the model directory ``path``, checked against its config.

    Returns a seqio vocabulary with ``encode``/``decode`` and ``.command_tokens``:
    ``glm_jax.data.vocab.GLMVocabulary`` or one of ``glm_jax.data.official_vocabs``.

    Raises:
      ValueError: the directory records no tokenizer, its record is malformed, or
        the vocabulary does not fit the model's vocab_size (both named).
      FileNotFoundError: config.yaml or a tokenizer file is missing.
    """
    path = check_model_dir(path, option="model directory")
    tokenizer = read_tokenizer(path)
    if tokenizer is None:
        raise ValueError(
            f"{path} records no tokenizer (no {TOKENIZER_FILE} or {VOCAB_FILE}); convert the checkpoint with "
            "`glm-jax convert SRC OUT --tokenizer KIND --vocab-file FILE`"
        )
    config = read_config(path / CONFIG_FILE)
    vocab = build_vocabulary(tokenizer, base=path)
    check_vocabulary_fits(vocab, tokenizer, config.vocab_size, where=str(path), base=path)
    return vocab


def vocabulary_for(model: PathLike, sentencepiece_model: Optional[PathLike] = None) -> tuple[Any, str, str]:
    """``(vocabulary, tokenizer kind, input style)`` for the model directory ``model``:
    the sentencepiece model at ``sentencepiece_model`` (``--vocab``) if given, else the
    directory's recorded tokenizer.

    Raises:
      ValueError: neither is there (both ways to fix it named).
    """
    if sentencepiece_model is not None:
        return sentencepiece_vocabulary(sentencepiece_model), "sentencepiece", "official"
    tokenizer = read_tokenizer(model)
    if tokenizer is None:
        raise ValueError(
            f"{model} records no tokenizer: pass --vocab SPM_MODEL, or convert the checkpoint "
            "with `glm-jax convert SRC OUT --tokenizer KIND --vocab-file FILE`"
        )
    return load_vocabulary(model), tokenizer.kind, tokenizer.input_style


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
