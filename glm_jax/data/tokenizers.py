"""Which tokenizer a model uses: the record a model directory stores, and the
vocabulary built from it.

glm-jax reads two families of vocabularies: its own sentencepiece GLM vocabulary
(:class:`glm_jax.data.vocab.GLMVocabulary`) and the official GLM tokenizers
(BERT wordpiece, GPT-2 / RoBERTa BPE, the Chinese sentencepiece;
:mod:`glm_jax.data.official_vocabs`). A :class:`TokenizerConfig` names one of
them with its files and the options that move command-token ids; it is
``tokenizer.yaml`` in a model directory (glm_jax/model_dir.py), and
:func:`build_vocabulary` turns it back into a seqio vocabulary. This module is
the one place that knows how the kinds map to classes and files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional, Union

from glm_jax.data.official_vocabs import official_vocabulary
from glm_jax.data.official_vocabs.base import OfficialVocabulary
from glm_jax.data.vocab import GLMVocabulary

PathLike = Union[str, Path]

VOCAB_FILE = "vocab.model"  # a sentencepiece model's name inside a model directory

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
      kind: ``sentencepiece`` (glm_jax.data.vocab.GLMVocabulary) or an official GLM
        tokenizer: ``bert``, ``gpt2``, ``roberta``, ``chinese`` (glm_jax.data.official_vocabs).
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
        inputs (glm_jax.decoding.prompt_layout.input_style).
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
        vocab = GLMVocabulary(files["vocab_file"], pad_to_multiple_of=tokenizer.pad_to_multiple_of)
    else:
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


def sentencepiece_vocabulary(path: PathLike, option: str = "--vocab") -> GLMVocabulary:
    """The GLM vocabulary over the sentencepiece model at ``path`` (named by ``option`` if missing)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{option} {path} does not exist")
    return GLMVocabulary(str(path))


def check_command_ids_fit(vocab: Any, vocab_size: int, where: str, model: str) -> None:
    """Every id the vocabulary can produce (its size, its command tokens) must have an
    embedding row in ``model``'s ``vocab_size``; ValueError naming both otherwise."""
    ct = vocab.command_tokens
    ids = (ct.pad, ct.eos, ct.cls, ct.mask, ct.sop, ct.eop, ct.unk, ct.smask, ct.gmask, ct.sep)
    largest = max(i for i in ids if i is not None)
    size = getattr(vocab, "vocab_size", None)
    if largest >= vocab_size or (size is not None and size > vocab_size):
        raise ValueError(
            f"the vocabulary {where} (vocab_size={size}, command ids up to {largest}) does not fit the model "
            f"at {model}, which has vocab_size={vocab_size}"
        )
