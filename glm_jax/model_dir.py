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
``tasks.vocab.GLMVocabulary``; ``bert``, ``gpt2``, ``roberta``, ``chinese``: the
official GLM tokenizers of ``tasks.official_vocabs``), its files (relative to the
directory), the options that change command-token ids (``task_mask``,
``decoder_mask``, ``fix_command_token``, ``pad_to_multiple_of``) and the
``input_style`` (official or hf, glm_jax/decoding/layout.py). :func:`load_vocabulary`
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
from typing import Any, Literal, Mapping, Optional, Union

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

TokenizerKind = Literal["sentencepiece", "bert", "gpt2", "roberta", "chinese"]
TOKENIZER_KINDS = ("sentencepiece", "bert", "gpt2", "roberta", "chinese")
INPUT_STYLES = ("official", "hf")

#: The names a kind's files get inside a model directory: (vocab_file, merges_file).
STORED_NAMES: dict[str, tuple[str, Optional[str]]] = {
    "sentencepiece": (VOCAB_FILE, None),
    "bert": ("vocab.txt", None),
    "gpt2": ("vocab.json", "merges.txt"),
    "roberta": ("vocab.json", "merges.txt"),
    "chinese": ("cog-pretrain.model", None),
}

#: task_mask when not given: as the released checkpoints' configs have it (spec 1.1).
#: GLM-RoBERTa was pretrained with task masks but its finetune config (and the
#: Hugging Face tokenizer) has none; the padded size is the same either way.
DEFAULT_TASK_MASK = {"bert": False, "roberta": False, "gpt2": True, "chinese": True}


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """``tokenizer.yaml``: which vocabulary a model uses, and how its inputs are built.

    Attributes:
      kind: ``sentencepiece`` (tasks.vocab.GLMVocabulary) or an official GLM
        tokenizer: ``bert``, ``gpt2``, ``roberta``, ``chinese`` (tasks.official_vocabs).
      vocab_file: the sentencepiece model, ``vocab.txt``, ``vocab.json`` or
        ``cog-pretrain.model``; relative paths are relative to the model directory.
      merges_file: ``gpt2``/``roberta``: ``merges.txt`` (default: beside vocab_file).
      task_mask: official kinds: the vocabulary has ``[gMASK]``/``[sMASK]`` (the
        official ``--task-mask``); default per kind (DEFAULT_TASK_MASK).
        sentencepiece: always has them (null or true).
      decoder_mask: official kinds: the vocabulary has ``[dBLOCK]``. sentencepiece:
        always has it (null or true).
      fix_command_token: ``chinese`` only, and required there: True for
        GLM-Large-Chinese and the Hugging Face glm-10b-chinese, False for the repo's
        GLM-10B-Chinese (gMASK = eop).
      pad_to_multiple_of: the vocabulary size is padded to a multiple of this (128
        in every released checkpoint).
      input_style: ``official`` or ``hf``: how generation and scoring build their
        inputs (glm_jax.decoding.layout.input_style).
    """

    kind: TokenizerKind
    vocab_file: str
    merges_file: Optional[str] = None
    task_mask: Optional[bool] = None
    decoder_mask: Optional[bool] = None
    fix_command_token: Optional[bool] = None
    pad_to_multiple_of: int = 128
    input_style: Literal["official", "hf"] = "official"

    def __post_init__(self):
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {self.kind!r}")
        if self.input_style not in INPUT_STYLES:
            raise ValueError(f"input_style must be one of {INPUT_STYLES}, got {self.input_style!r}")
        if self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.merges_file is not None and self.kind not in ("gpt2", "roberta"):
            raise ValueError(f"merges_file applies to kinds gpt2 and roberta, not {self.kind!r}")
        if self.kind == "chinese" and self.fix_command_token is None:
            raise ValueError(
                "kind 'chinese' needs fix_command_token: true for GLM-Large-Chinese and the Hugging Face "
                "glm-10b-chinese (gMASK 50009), false for the repo's GLM-10B-Chinese (gMASK 50007 = eop)"
            )
        if self.kind != "chinese" and self.fix_command_token is not None:
            raise ValueError(f"fix_command_token applies to kind 'chinese' only, not {self.kind!r}")
        if self.kind == "sentencepiece":
            for name in ("task_mask", "decoder_mask"):
                if getattr(self, name) is False:
                    raise ValueError(f"the sentencepiece vocabulary always has its task and decoder masks; {name} cannot be false")
        else:
            # Resolve the defaults, so that tokenizer.yaml states every choice.
            if self.task_mask is None:
                object.__setattr__(self, "task_mask", DEFAULT_TASK_MASK[self.kind])
            if self.decoder_mask is None:
                object.__setattr__(self, "decoder_mask", False)

    def files(self, base: Optional[PathLike] = None) -> dict[str, Path]:
        """``{"vocab_file": path}`` (+ ``"merges_file"`` for BPE), relative paths
        joined to ``base``."""
        root = Path(base) if base is not None else Path()
        out = {"vocab_file": root / self.vocab_file}
        if self.kind in ("gpt2", "roberta"):
            merges = Path(self.merges_file) if self.merges_file is not None else Path(self.vocab_file).parent / "merges.txt"
            out["merges_file"] = root / merges
        return out


def tokenizer_of(vocab: Any) -> TokenizerConfig:
    """The record of a vocabulary object (ours or an official one), to save beside a model.

    Raises:
      ValueError: a vocabulary type this format cannot describe (named).
    """
    from tasks.official_vocabs.base import OfficialVocabulary
    from tasks.vocab import GLMVocabulary

    if isinstance(vocab, GLMVocabulary):
        return TokenizerConfig(kind="sentencepiece", vocab_file=vocab.sentencepiece_model_file,
                               pad_to_multiple_of=vocab._pad_to_multiple_of)
    if isinstance(vocab, OfficialVocabulary):
        files = vocab.files
        return TokenizerConfig(
            kind=vocab.kind, vocab_file=files[0], merges_file=files[1] if len(files) > 1 else None,
            task_mask=vocab._task_mask, decoder_mask=vocab._decoder_mask,
            fix_command_token=vocab.fix_command_token if vocab.kind == "chinese" else None,
            pad_to_multiple_of=vocab._pad_to_multiple_of,
        )
    raise ValueError(f"cannot record a vocabulary of type {type(vocab).__name__} in a model directory")


def build_vocabulary(tokenizer: TokenizerConfig, base: Optional[PathLike] = None) -> Any:
    """The seqio vocabulary (with ``.command_tokens``) that ``tokenizer`` describes.

    Args:
      tokenizer: the tokenizer record.
      base: the directory its relative file paths are relative to (a model
        directory); None: as given.

    Raises:
      FileNotFoundError: a file is missing (named); ValueError: a file is malformed.
    """
    files = tokenizer.files(base)
    for role, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{tokenizer.kind} tokenizer: {role} {path} does not exist")
    if tokenizer.kind == "sentencepiece":
        from tasks.vocab import GLMVocabulary

        vocab = GLMVocabulary(files["vocab_file"], pad_to_multiple_of=tokenizer.pad_to_multiple_of)
    else:
        from tasks.official_vocabs import official_vocabulary

        vocab = official_vocabulary(
            tokenizer.kind,
            files["vocab_file"],
            merges_file=files.get("merges_file"),
            task_mask=bool(tokenizer.task_mask),
            decoder_mask=bool(tokenizer.decoder_mask),
            fix_command_token=tokenizer.fix_command_token,
            pad_to_multiple_of=tokenizer.pad_to_multiple_of,
        )
    _ = vocab.command_tokens  # load now: a bad file fails here, naming itself
    return vocab


def check_vocabulary_fits(
    vocab: Any, tokenizer: TokenizerConfig, vocab_size: int, *, where: str, base: Optional[PathLike] = None
) -> None:
    """Require ``vocab`` to fit a model with ``vocab_size`` embedding rows.

    Official kinds must match exactly (the official code sizes the embedding from
    its tokenizer); sentencepiece may be smaller. Raises ValueError naming both.
    """
    size = int(vocab.vocab_size)
    official = tokenizer.kind != "sentencepiece"
    if size == vocab_size or (not official and size < vocab_size):
        return
    files = ", ".join(str(p) for p in tokenizer.files(base).values())
    hint = (
        " The official GLM tokenizers give 30592 (bert), 50304 (gpt2, roberta) and 50048 (chinese) with the "
        "real files; check the tokenizer kind and files match the checkpoint "
        f"(sizes are padded to a multiple of pad_to_multiple_of={tokenizer.pad_to_multiple_of})."
        if official
        else ""
    )
    raise ValueError(
        f"{where}: the {tokenizer.kind} vocabulary ({files}) has vocab_size={size}, but the model has "
        f"vocab_size={vocab_size}{' (they must be equal)' if official else ''}.{hint}"
    )


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
    header = "# glm-jax tokenizer: glm_jax.model_dir.TokenizerConfig (file paths relative to this directory)\n"
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
    ``tasks.vocab.GLMVocabulary`` or one of ``tasks.official_vocabs``.

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
