"""The shared machinery of the official GLM vocabularies: the command-token
records and ``OfficialVocabulary``, which adds GLM's command tokens to a text
tokenizer (a ``TextCodec``). The semantics are described in the package docstring
(``glm_jax/data/official_vocabs/__init__.py``)."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
import re
import threading
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.command_tokens import CommandTokens
from glm_jax.data.vocab import SENTENCE_END_CHARS, decode_rows_tf

PathLike = Union[str, os.PathLike]

#: The official literals (``data_utils/tokenization.py``).
EOS_LITERAL = "<|endoftext|>"
CLS_LITERAL = "[CLS]"
SEP_LITERAL = "[SEP]"
MASK_LITERAL = "[MASK]"
UNK_LITERAL = "[UNK]"
SOP_LITERAL = "<|startofpiece|>"
EOP_LITERAL = "<|endofpiece|>"
GMASK_LITERAL = "[gMASK]"
SMASK_LITERAL = "[sMASK]"
DBLOCK_LITERAL = "[dBLOCK]"



@dataclasses.dataclass(frozen=True)
class Command:
    """One command token of a layout.

    Attributes:
      fields: the ``CommandTokens`` fields this id fills (``("pad", "eos")`` for the
        shared pad/eos id).
      literal: the official string; in text it encodes to ``id`` unless ``control``.
      id: the token id.
      lstrip: whether the whitespace before the literal is dropped when encoding.
      control: pad/eos: never recognised in text, decodes to nothing.
    """

    fields: tuple[str, ...]
    literal: str
    id: int
    lstrip: bool = False
    control: bool = False


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """What loading the files yields; rebuilt after unpickling, never pickled."""

    codec: "TextCodec"
    commands: tuple[Command, ...]
    command_tokens: CommandTokens
    by_literal: Mapping[str, Command]  # the commands recognised in text
    by_id: Mapping[int, Command]  # what each command id decodes as
    split_re: "re.Pattern[str]"  # splits text on the literals, keeping them


@dataclasses.dataclass(frozen=True)
class Part:
    """A decoded text run (``command`` None) or one command's literal."""

    text: str
    command: Optional[Command] = None


class TextCodec(abc.ABC):
    """The underlying text tokenizer: plain text to text-token ids and back."""

    size: int  # the number of text tokens, N

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def token_texts(self) -> list[str]:
        """Each text token's string as the tokenizer's files list it (the official
        ``IdToToken``): BERT ``##ing``, GPT-2's byte-level ``Ġthe``; "" for an id
        the files leave unused."""


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def read_bytes(path: str, what: str) -> bytes:
    """Reads a user-supplied file, with an error naming it and its role."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def decode_utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from None


class OfficialVocabulary(seqio.Vocabulary, abc.ABC):
    """Base class: an official text tokenizer plus GLM's command tokens.

    Subclasses give the files (``files``), load the text tokenizer
    (``_load_codec``), list the commands (``_layout``) and choose where decoding
    puts spaces (``_space_between``). See the package docstring for the semantics.

    Args:
      task_mask: include ``[gMASK]``/``[sMASK]`` (the official ``--task-mask``).
      decoder_mask: include ``[dBLOCK]`` (the official ``--block-mask-prob > 0``).
      pad_to_multiple_of: ``vocab_size`` is a multiple of this (128 officially;
        times the tensor-parallel degree where that applies).
    """

    #: The factory's name for this kind.
    kind: str = ""

    def __init__(
        self,
        *,
        task_mask: bool = True,
        decoder_mask: bool = False,
        pad_to_multiple_of: int = 128,
    ):
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self._task_mask = bool(task_mask)
        self._decoder_mask = bool(decoder_mask)
        self._pad_to_multiple_of = pad_to_multiple_of
        self._state: Optional[_Loaded] = None
        self._digest: Optional[str] = None
        self._lock = threading.Lock()
        super().__init__(extra_ids=0)

    # ------------------------------------------------------------ subclass API

    @property
    @abc.abstractmethod
    def files(self) -> tuple[str, ...]:
        """The paths of the tokenizer files, as given."""

    @abc.abstractmethod
    def _load_codec(self) -> TextCodec:
        """Reads the files and builds the text tokenizer."""

    @abc.abstractmethod
    def _layout(self, codec: TextCodec) -> list[Command]:
        """The commands, pad/eos first, then in the official order (see
        ``_build`` for why the order matters)."""

    @abc.abstractmethod
    def _space_between(self, prev: Part, nxt: Part) -> bool:
        """Whether decoding puts a space between two parts (one is a command)."""

    def _options(self) -> tuple[Any, ...]:
        """Everything besides the files that changes ids (for ``==`` and hash)."""
        return (self._task_mask, self._decoder_mask, self._pad_to_multiple_of)

    # ----------------------------------------------------------------- loading

    def _loaded(self) -> _Loaded:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = self._build()
        return self._state

    def _build(self) -> _Loaded:
        codec = self._load_codec()
        commands = tuple(self._layout(codec))
        fields: dict[str, int] = {}
        by_id: dict[int, Command] = {}
        for command in commands:
            for field in command.fields:
                fields.setdefault(field, command.id)
            # The first command with an id wins: pad/eos comes first in every
            # layout, so a shared eos id (RoBERTa's sep) decodes to nothing, and the
            # Chinese 10B collision N+7 decodes as eop, its role in generated text.
            by_id.setdefault(command.id, command)
        by_literal = {c.literal: c for c in commands if not c.control}
        # Longest first, so that no literal can shadow a longer one containing it.
        literals = sorted(by_literal, key=len, reverse=True)
        split_re = re.compile("(" + "|".join(re.escape(lit) for lit in literals) + ")")
        return _Loaded(
            codec=codec,
            commands=commands,
            command_tokens=CommandTokens(**fields),
            by_literal=by_literal,
            by_id=by_id,
            split_re=split_re,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Tokenizers and locks do not pickle; the files reload lazily, and the
        # digest is recomputed from the files where the copy is used.
        state["_state"] = None
        state["_digest"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ layout

    @property
    def commands(self) -> tuple[Command, ...]:
        """Every command of this layout."""
        return self._loaded().commands

    @property
    def num_text_tokens(self) -> int:
        """N: the number of tokens in the supplied files."""
        return self._loaded().codec.size

    @property
    def command_tokens(self) -> CommandTokens:
        """The command-token ids (spec 2.1; the package docstring)."""
        return self._loaded().command_tokens

    @property
    def literal_ids(self) -> Mapping[str, int]:
        """Literal -> id for every command recognised in text."""
        return {lit: c.id for lit, c in self._loaded().by_literal.items()}

    @property
    def _num_tokens(self) -> int:
        return max(self.num_text_tokens, 1 + max(c.id for c in self.commands))

    @property
    def _base_vocab_size(self) -> int:
        return round_up(self._num_tokens, self._pad_to_multiple_of)

    def sentence_end_mask(self) -> np.ndarray:
        """``[vocab_size]`` bool: the tokens that end a sentence, for the sentence
        objective (spec 3.2), decided from the token's text as the official
        ``blocklm_utils.contains_sentence_end`` does: it contains one of
        ``. ? ! ; :`` or a newline (and, as for our sentencepiece vocabulary,
        ``。 ？ ！ ； …``; whether the official code counts those is not checked).
        The text is the files' own token string, so a GPT-2 newline (``Ċ``) is
        not an end, as in the official code. eos is an end."""
        texts = self._loaded().codec.token_texts()
        mask = np.zeros(self._base_vocab_size, dtype=bool)
        for i, text in enumerate(texts):
            mask[i] = bool(SENTENCE_END_CHARS.intersection(text))
        mask[self.eos_id] = True
        return mask

    @property
    def eos_id(self) -> int:
        return self.command_tokens.eos

    @property
    def pad_id(self) -> int:
        return self.command_tokens.pad

    @property
    def unk_id(self) -> int:
        return self.command_tokens.unk

    @property
    def bos_id(self) -> Optional[int]:
        # GLM has no BOS: samples start with ENC ([CLS]), which the objectives add.
        return None

    # ----------------------------------------------------------- Python codec

    def _encode(self, s: str) -> Sequence[int]:
        if not isinstance(s, str):
            raise TypeError(
                f"{type(self).__name__}.encode takes a str, got {type(s).__name__}: {s!r:.80}"
            )
        loaded = self._loaded()
        codec, by_literal = loaded.codec, loaded.by_literal
        parts = loaded.split_re.split(s)  # text, literal, text, ..., text
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(by_literal[part].id)
                continue
            if i + 1 < len(parts) and by_literal[parts[i + 1]].lstrip:
                part = part.rstrip()  # the official lstrip: str.rstrip(), all whitespace
            if part:
                ids.extend(codec.encode(part))
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        """Ids to text; pad/eos render as nothing, unassigned padding rows as the
        unk literal. An id outside ``[0, vocab_size)`` raises ``ValueError``."""
        loaded = self._loaded()
        codec, by_id = loaded.codec, loaded.by_id
        size = self._base_vocab_size
        unk = by_id[loaded.command_tokens.unk]
        parts: list[Part] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                parts.append(Part(codec.decode(run)))
                run.clear()

        for pos, raw in enumerate(ids):
            i = int(raw)
            if not 0 <= i < size:
                raise ValueError(f"id {i} at position {pos} is outside [0, {size})")
            command = by_id.get(i)
            if command is None and i >= codec.size:
                command = unk  # a padding row: no token of its own
            if command is None:
                run.append(i)
                continue
            flush()
            if not command.control:
                parts.append(Part(command.literal, command))
        flush()

        out: list[str] = []
        prev: Optional[Part] = None
        for part in parts:
            if not part.text:
                continue
            if prev is not None and self._space_between(prev, part):
                out.append(" ")
            out.append(part.text)
            prev = part
        return "".join(out)

    # ---------------------------------------------------------------- TF codec

    def _encode_tf(self, s: tf.Tensor) -> Union[tf.Tensor, tf.RaggedTensor]:
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            return self._encode_tf_scalar(s)
        if s.shape.rank == 1:
            return tf.map_fn(
                self._encode_tf_scalar,
                s,
                fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
            )
        raise ValueError(f"encode_tf takes a string scalar or vector, got shape {s.shape}")

    def _encode_tf_scalar(self, s: tf.Tensor) -> tf.Tensor:
        def encode(b: Union[bytes, np.ndarray]) -> np.ndarray:
            data = b.item() if isinstance(b, np.ndarray) else b  # a 0-d object array
            return np.asarray(self._encode(data.decode("utf-8")), dtype=np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return decode_rows_tf(ids, self._decode_tf_1d)

    def _decode_tf_1d(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(a: np.ndarray) -> bytes:
            return self._decode(a.tolist()).encode("utf-8")

        text = tf.numpy_function(decode, [tf.cast(ids, tf.int64)], tf.string, stateful=False)
        text.set_shape([])
        return text

    # ------------------------------------------------------------------- misc

    def _files_digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for path in self.files:
                h.update(hashlib.sha256(read_bytes(path, "tokenizer file")).digest())
            self._digest = h.hexdigest()
        return self._digest

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        assert isinstance(other, OfficialVocabulary)
        return self._options() == other._options() and self._files_digest() == other._files_digest()

    def __hash__(self) -> int:
        # Consistent with __eq__ without reading the files.
        return hash((type(self).__name__, self._options()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(files={self.files}, options={self._options()})"

    __str__ = __repr__
