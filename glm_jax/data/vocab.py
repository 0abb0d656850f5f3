"""GLM's vocabulary: a sentencepiece model followed by GLM's command tokens.

Layout (spec section 2.1). With ``N`` sentencepiece pieces, the command tokens take
the fixed ids right after the pieces, and the size is padded up to a multiple of
128 as the official ``prepare_tokenizer`` pads it::

    0 .. N-1   sentencepiece pieces
    N          pad = eos   <|endoftext|>
    N+1        [CLS]
    N+2        [MASK]
    N+3        [sMASK]
    N+4        [gMASK]
    N+5        <|startofpiece|>   (sop)
    N+6        <|endofpiece|>     (eop)
    N+7        [UNK]
    N+8        [dBLOCK]
    N+9 ..     unused padding rows up to a multiple of 128 (decode as [UNK])

Command tokens written literally in text.
  Every command but pad/eos is recognised when written literally ("Paris is the
  [MASK] of France.") and encodes to its single id, in Python and in TF. Text is
  split on the literals first and only the text between them goes through
  sentencepiece, so any sentencepiece model works, whatever its pieces.

  Whitespace: like the official GPT-2 and Chinese tokenizers (their MASK-style
  commands are ``lstrip``), the ASCII spaces touching a literal are dropped; other
  whitespace (newlines, tabs) is kept. Sentencepiece marks every text run with a
  word-start anyway, so "the [MASK] of" and "the[MASK]of" encode alike. Decoding
  puts one space between a command and its neighbour unless the neighbouring text
  already has whitespace there. With a lossless sentencepiece model (the embedded
  one is), ``decode(encode(s)) == s`` whenever literals sit at the ends of ``s``
  or are set off by single spaces or by newlines.

  pad/eos is a control id: the literal ``<|endoftext|>`` in text is plain text, and
  the id decodes to nothing. Reasons: a document cannot forge a document boundary,
  and seqio hands eos-terminated predictions to ``decode``, whose output metrics
  compare as plain text.

Unknown text. Sentencepiece's own ``<unk>`` is mapped to ``[UNK]`` (N+7), so the
model sees one unknown id. The embedded model (``glm_jax/data/corpus.py``) uses byte
fallback and never produces it. Sentencepiece control pieces (the embedded
model's id 0 ``<pad>``, where seqio's zero padding lands) decode to nothing.

Python and TF. ``encode`` uses the sentencepiece Python package, ``encode_tf`` the
copy inside tensorflow-text. Their ids agree except where two segmentations score
exactly the same, which happens in runs of one repeated character (deep
indentation, ``-----`` rules): the two builds break such ties differently. That
touches about 0.5% of the embedded corpus' lines; both segmentations decode to the
same text (tests/test_vocab.py checks all of this). seqio's own
``SentencePieceVocabulary`` has the same property.

The vocabulary is a ``seqio.Vocabulary``: it works in ``seqio.Feature``, pickles
(by model path; the processor reloads lazily) and compares equal by model bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

from glm_jax.command_tokens import CommandTokens

#: (CommandTokens field, literal) in id order, starting at the first id after the
#: sentencepiece pieces. pad shares eos's id and literal.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("eos", "<|endoftext|>"),
    ("cls", "[CLS]"),
    ("mask", "[MASK]"),
    ("smask", "[sMASK]"),
    ("gmask", "[gMASK]"),
    ("sop", "<|startofpiece|>"),
    ("eop", "<|endofpiece|>"),
    ("unk", "[UNK]"),
    ("dblock", "[dBLOCK]"),
)

#: Characters that end a sentence for the sentence-level objective (spec 3.2).
SENTENCE_END_CHARS = frozenset(".?!;:\n。？！；…")

# Literals recognised in text: every command but eos (see module docstring).
_TEXT_LITERALS = tuple(lit for field, lit in COMMANDS if field != "eos")
# The same pattern serves Python's re and TF's RE2: literals only contain
# characters both escape alike.
_LITERAL_PATTERN = "|".join(re.escape(lit) for lit in _TEXT_LITERALS)
_SPLIT_RE = re.compile(f"({_LITERAL_PATTERN})")
# encode_tf fences literals with this byte, which valid UTF-8 never holds.
_FENCE = b"\xff"
# Whitespace for decode's "already has whitespace here" test; explicit so that
# Python and RE2 (whose \s differs) agree.
_WS = " \t\n\r\f\v"
_WS_CLASS = "[ \\t\\n\\r\\f\\v]"
_BYTE_PIECE_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class _Model:
    """What loading the sentencepiece file yields; never pickled."""

    proto: bytes
    processor: spm.SentencePieceProcessor
    num_pieces: int
    sp_unk: int  # sentencepiece's own <unk> id, or -1 if the model has none


class GLMVocabulary(seqio.Vocabulary):
    """A sentencepiece model plus GLM's command tokens (see the module docstring).

    Args:
      sentencepiece_model_file: path of a sentencepiece ``.model`` file (anything
        ``tf.io.gfile`` reads). Loaded lazily, on first use.
      pad_to_multiple_of: the size is padded up to a multiple of this (128, as the
        official code pads it; multiply by the tensor-parallel degree if needed).
    """

    def __init__(
        self,
        sentencepiece_model_file: Union[str, os.PathLike],
        *,
        pad_to_multiple_of: int = 128,
    ):
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self._model_file = os.fspath(sentencepiece_model_file)
        self._pad_to_multiple_of = pad_to_multiple_of
        self._model: Optional[_Model] = None
        self._lock = threading.Lock()
        self._sentence_end: Optional[np.ndarray] = None
        super().__init__(extra_ids=0)

    # ----------------------------------------------------------------- loading

    @property
    def sentencepiece_model_file(self) -> str:
        return self._model_file

    def _read_model_proto(self) -> bytes:
        """The serialized model; subclasses may build the file first."""
        path = self.sentencepiece_model_file
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"sentencepiece model file not found: {path}")
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()

    def _loaded(self) -> _Model:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    proto = self._read_model_proto()
                    processor = spm.SentencePieceProcessor()
                    try:
                        processor.LoadFromSerializedProto(proto)
                    except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
                        raise ValueError(
                            f"not a sentencepiece model: {self.sentencepiece_model_file} ({e})"
                        ) from e
                    self._model = _Model(
                        proto=proto,
                        processor=processor,
                        num_pieces=processor.GetPieceSize(),
                        sp_unk=processor.unk_id(),
                    )
        return self._model

    def __getstate__(self):
        state = self.__dict__.copy()
        # The processor and lock cannot be pickled; the model reloads lazily.
        state["_model"] = None
        state["_sentence_end"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ layout

    @property
    def sp_model(self) -> bytes:
        """The serialized sentencepiece model."""
        return self._loaded().proto

    @property
    def tokenizer(self) -> spm.SentencePieceProcessor:
        """The Python sentencepiece processor (pieces only, no command tokens)."""
        return self._loaded().processor

    @property
    def num_pieces(self) -> int:
        """N: the number of sentencepiece pieces, and the first command id."""
        return self._loaded().num_pieces

    @property
    def command_tokens(self) -> CommandTokens:
        n = self.num_pieces
        ids = {field: n + i for i, (field, _) in enumerate(COMMANDS)}
        return CommandTokens(pad=ids["eos"], **ids)

    @property
    def literal_ids(self) -> Mapping[str, int]:
        """Literal string -> id for every command (``<|endoftext|>`` too, though text
        never encodes to it: see the module docstring)."""
        return {lit: self.num_pieces + i for i, (_, lit) in enumerate(COMMANDS)}

    @property
    def _base_vocab_size(self) -> int:
        return _round_up(self.num_pieces + len(COMMANDS), self._pad_to_multiple_of)

    @property
    def eos_id(self) -> int:
        return self.num_pieces

    @property
    def pad_id(self) -> int:
        # pad == eos in every official GLM vocabulary (the official code asserts it).
        return self.num_pieces

    @property
    def unk_id(self) -> int:
        return self.num_pieces + len(COMMANDS) - 2

    @property
    def bos_id(self) -> Optional[int]:
        # GLM has no BOS: samples start with [CLS], which the objectives add.
        return None

    # ----------------------------------------------------------- Python codec

    def _encode(self, s: str) -> Sequence[int]:
        """Text to ids; literal commands become their ids (module docstring)."""
        if not isinstance(s, str):
            raise TypeError(f"GLMVocabulary.encode takes a str, got {type(s).__name__}: {s!r:.80}")
        model = self._loaded()
        literal_ids = self.literal_ids
        parts = _SPLIT_RE.split(s)  # text, literal, text, literal, ..., text
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(literal_ids[part])
                continue
            if i > 0:
                part = part.lstrip(" ")
            if i < len(parts) - 1:
                part = part.rstrip(" ")
            if part:
                ids.extend(model.processor.EncodeAsIds(part))
        if model.sp_unk >= 0:
            ids = [self.unk_id if i == model.sp_unk else i for i in ids]
        return ids

    def encode_piece(self, piece: str) -> list[int]:
        """A fragment of a longer text (a cloze pattern piece) to ids.

        The official cloze inputs tokenise each pattern piece on its own and
        concatenate the ids (spec 2.4); their leading spaces matter for GPT-2 BPE
        (" Yes" is one token). With sentencepiece's dummy prefix, ``encode`` would
        turn " Yes" into a bare word-boundary piece plus "Yes" (so " Yes" and " No"
        start with the same id) and "?" into " ?". Here one leading space is the
        word boundary the dummy prefix writes anyway, and a piece without one loses
        a bare leading boundary piece, so the pieces join like the whole text.
        """
        if piece.startswith(" "):
            return list(self._encode(piece[1:]))
        ids = list(self._encode(piece))
        if ids and ids[0] == self._boundary_id():
            ids = ids[1:]
        return ids

    def _boundary_id(self) -> Optional[int]:
        """The id of the bare word-boundary piece, if the model has one."""
        processor = self._loaded().processor
        boundary = processor.PieceToId("\u2581")
        return None if boundary == processor.unk_id() else boundary

    def _decode(self, ids: Sequence[int]) -> str:
        """Ids to text. pad/eos and control pieces render as nothing; unused
        padding rows and sentencepiece's <unk> as ``[UNK]``. A negative id is a
        bug upstream: ``ValueError`` naming it (``decode_tf``, which cannot raise
        helpfully, renders it as ``[UNK]``)."""
        model = self._loaded()
        n, size, unk = model.num_pieces, self._base_vocab_size, self.unk_id
        literals = [lit for _, lit in COMMANDS]
        parts: list[str] = []  # decoded text runs and command literals, in order
        run: list[int] = []

        def flush():
            if run:
                parts.append(model.processor.DecodeIds(run))
                run.clear()

        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < size:
                raise ValueError(f"id {i} at position {pos} is outside [0, {size})")
            if i == n:  # pad/eos: a control id, rendered as nothing
                continue
            if i == model.sp_unk or i >= n + len(COMMANDS):
                i = unk
            if i < n:
                run.append(i)
            else:
                flush()
                parts.append(literals[i - n])
        flush()
        return _join_parts(parts)

    # ---------------------------------------------------------------- TF codec

    def _tf_tokenizer(self) -> tf_text.SentencepieceTokenizer:
        # Built per call, as seqio does: inside Dataset.map this runs once per
        # trace, and the op then lives in the dataset's own graph.
        return tf_text.SentencepieceTokenizer(model=self.sp_model, out_type=tf.int32)

    @tf.autograph.experimental.do_not_convert  # plain graph code; saves tracing time
    def _encode_tf(self, s: tf.Tensor) -> Union[tf.Tensor, tf.RaggedTensor]:
        """Encodes a string scalar to ``[length]`` int32, or ``[batch]`` to ragged."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank not in (0, 1):
            raise ValueError(f"encode_tf takes a string scalar or vector, got shape {s.shape}")
        n, sp_unk = self.num_pieces, self._loaded().sp_unk
        # Fence every literal with 0xFF, a byte that valid UTF-8 never holds, and
        # split there. Each row then alternates text, literal, text, ..., text
        # (texts may be empty), as Python's re.split does with a group.
        fenced = tf.strings.regex_replace(
            tf.reshape(s, [-1]), f"({_LITERAL_PATTERN})", _FENCE + rb"\1" + _FENCE
        )
        segments = tf.strings.split(fenced, sep=_FENCE)  # [batch, S]
        flat = segments.flat_values
        lengths = segments.row_lengths()
        index = tf.range(tf.size(flat, out_type=tf.int64))
        index -= tf.repeat(segments.row_starts(), lengths)  # position within its row
        hits = tf.equal(flat[:, None], tf.constant(_TEXT_LITERALS)[None, :])  # [S, literals]
        # Odd positions are literals; the match guards against 0xFF in broken input.
        is_literal = (index % 2 == 1) & tf.reduce_any(hits, axis=1)
        literal_id = tf.cast(tf.argmax(tf.cast(hits, tf.int32), axis=1), tf.int32) + n + 1

        # The lstrip policy: drop the spaces that touch a literal.
        text = tf.where(index > 0, tf.strings.regex_replace(flat, "^ +", ""), flat)
        last = index == tf.repeat(lengths, lengths) - 1
        text = tf.where(last, text, tf.strings.regex_replace(text, " +$", ""))
        text = tf.where(is_literal, tf.constant(""), text)

        pieces = self._tf_tokenizer().tokenize(text)  # [S, None]; literals give []
        if sp_unk >= 0:
            pieces = pieces.with_flat_values(
                tf.where(pieces.flat_values == sp_unk, self.unk_id, pieces.flat_values)
            )
        literal_rows = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(literal_id, is_literal), tf.cast(is_literal, tf.int64), validate=False
        )
        per_segment = tf.concat([pieces, literal_rows], axis=1)  # [S, None]
        ids = tf.RaggedTensor.from_row_splits(
            per_segment, segments.row_splits, validate=False
        ).merge_dims(1, 2)
        return ids[0] if s.shape.rank == 0 else ids

    @tf.autograph.experimental.do_not_convert
    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Decodes ``[length]`` ids to a scalar string, or ``[batch, length]`` to ``[batch]``."""
        return decode_rows_tf(ids, self._decode_tf_1d)

    def _decode_tf_1d(self, ids: tf.Tensor) -> tf.Tensor:
        model = self._loaded()
        n, size = model.num_pieces, self._base_vocab_size
        ids = tf.cast(ids, tf.int32)
        ids = tf.boolean_mask(ids, ids != n)  # pad/eos decode to nothing
        unknown = (ids < 0) | (ids >= size) | (ids >= n + len(COMMANDS)) | (ids == model.sp_unk)
        ids = tf.where(unknown, self.unk_id, ids)

        # Runs: a maximal stretch of piece ids, or a single command id.
        is_command = ids >= n
        starts = is_command | _shift_right(is_command, True)
        run_id = tf.cumsum(tf.cast(starts, tf.int64)) - 1
        runs = tf.RaggedTensor.from_value_rowids(
            ids, run_id, nrows=tf.reduce_sum(tf.cast(starts, tf.int64)), validate=False
        )
        text_ids = tf.ragged.boolean_mask(runs, runs < n)  # command runs become empty
        text = self._tf_tokenizer().detokenize(text_ids)
        literals = tf.constant([lit for _, lit in COMMANDS])
        first = tf.boolean_mask(ids, starts)
        literal = tf.gather(literals, tf.clip_by_value(first - n, 0, len(COMMANDS) - 1))
        parts = tf.where(tf.boolean_mask(is_command, starts), literal, text)

        # One space between neighbouring parts unless whitespace is already there
        # (as _join_parts; text runs never touch, so each joint has a command).
        parts = tf.boolean_mask(parts, tf.strings.length(parts) > 0)
        ends_ws = tf.strings.regex_full_match(parts, f"(?s).*{_WS_CLASS}")
        starts_ws = tf.strings.regex_full_match(parts, f"(?s){_WS_CLASS}.*")
        first_part = _shift_right(tf.zeros_like(starts_ws), True)
        space = ~first_part & ~_shift_right(ends_ws, False) & ~starts_ws
        glue = tf.where(space, tf.constant(" "), tf.constant(""))
        return tf.strings.reduce_join(tf.strings.join([glue, parts]))

    # ------------------------------------------------------------- objectives

    def sentence_end_mask(self) -> np.ndarray:
        """``[vocab_size]`` bool: True for ids that end a sentence (spec 3.2).

        True for eos and for every piece whose text contains one of
        ``. ? ! ; :``, a newline, or ``。 ？ ！ ； …``. Byte-fallback pieces count by
        their byte when it is ASCII (``<0x0A>`` is a newline); a lone byte of a
        multi-byte character cannot be judged and counts as False.
        """
        if self._sentence_end is None:
            model = self._loaded()
            mask = np.zeros(self._base_vocab_size, dtype=bool)
            for i in range(model.num_pieces):
                mask[i] = bool(SENTENCE_END_CHARS.intersection(_piece_text(model.processor, i)))
            mask[self.eos_id] = True
            self._sentence_end = mask
        return self._sentence_end.copy()

    # ------------------------------------------------------------------ misc

    def __eq__(self, other) -> bool:
        if not isinstance(other, GLMVocabulary):
            return False
        return (
            self._pad_to_multiple_of == other._pad_to_multiple_of
            and self.sp_model == other.sp_model
        )

    def __hash__(self) -> int:
        # Cheap and consistent with __eq__ (equal vocabularies share this), so
        # hashing a seqio.Feature never has to load the model.
        return hash(("GLMVocabulary", self._pad_to_multiple_of))

    def __str__(self) -> str:
        if self._model is None:
            return f"{type(self).__name__}(file={self.sentencepiece_model_file}, not loaded)"
        return (
            f"{type(self).__name__}(file={self.sentencepiece_model_file}, "
            f"pieces={self.num_pieces}, "
            f"size={self.vocab_size}, spm_md5={hashlib.md5(self.sp_model).hexdigest()})"
        )

    __repr__ = __str__


def _piece_text(processor: spm.SentencePieceProcessor, i: int) -> str:
    """The surface text of piece ``i`` ('' for control and unknown pieces)."""
    if processor.IsControl(i) or processor.IsUnknown(i):
        return ""
    piece = processor.IdToPiece(i)
    if processor.IsByte(i):
        byte = int(_BYTE_PIECE_RE.fullmatch(piece).group(1), 16)
        return chr(byte) if byte < 0x80 else ""
    return piece.replace("\u2581", " ")


def _join_parts(parts: Sequence[str]) -> str:
    """Joins decoded text runs and command literals (spacing: module docstring).

    Text runs never touch each other, so every joint has a command on one side.
    """
    out = ""
    for part in parts:
        if out and part and out[-1] not in _WS and part[0] not in _WS:
            out += " "
        out += part
    return out


def _shift_right(x: tf.Tensor, fill) -> tf.Tensor:
    """``[fill, x[0], ..., x[-2]]``; empty for an empty ``x``."""
    return tf.concat([tf.fill([1], tf.constant(fill, x.dtype)), x], axis=0)[:-1]


def decode_rows_tf(ids: tf.Tensor, decode_1d) -> tf.Tensor:
    """Apply ``decode_1d`` (``[length]`` ids -> scalar string) to ``[length]`` or
    ``[batch, length]`` ids; the rank rule of ``seqio.Vocabulary.decode_tf``."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 1:
        return decode_1d(ids)
    if ids.shape.rank == 2:
        return tf.map_fn(decode_1d, ids, fn_output_signature=tf.TensorSpec([], tf.string))
    raise ValueError(f"decode_tf takes ids of rank 1 or 2, got shape {ids.shape}")
