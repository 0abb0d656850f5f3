"""The Chinese sentencepiece vocabulary (GLM-Large-Chinese, GLM-10B-Chinese)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import sentencepiece as spm

from glm_jax.data.official_vocabs.base import (
    CLS_LITERAL,
    DBLOCK_LITERAL,
    EOP_LITERAL,
    EOS_LITERAL,
    GMASK_LITERAL,
    MASK_LITERAL,
    SEP_LITERAL,
    SMASK_LITERAL,
    SOP_LITERAL,
    UNK_LITERAL,
    Command,
    OfficialVocabulary,
    Part,
    PathLike,
    TextCodec,
    read_bytes,
)


class _SentencePieceCodec(TextCodec):
    def __init__(self, path: str):
        proto = read_bytes(path, "Chinese sentencepiece model")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
            raise ValueError(f"not a sentencepiece model: {path} ({e})") from e
        self._processor = processor
        self.size = processor.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        # No unk remapping: the checkpoints saw sentencepiece's own <unk> id.
        return list(self._processor.EncodeAsIds(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.DecodeIds(list(ids))

    def token_texts(self) -> list[str]:
        return [self._processor.IdToPiece(i) for i in range(self.size)]


def _ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


class ChineseVocabulary(OfficialVocabulary):
    """The Chinese sentencepiece vocabulary (GLM-Large-Chinese, GLM-10B-Chinese).

    Args:
      model_file: ``cog-pretrain.model`` (50000 pieces).
      fix_command_token: the official ``--fix-command-token``. True: sMASK N+8,
        gMASK N+9 (GLM-Large-Chinese, and the Hugging Face ``glm-10b-chinese``,
        whose converter copied row 50007 to 50009). False: gMASK N+7 (= eop),
        sMASK N+8, dBLOCK N+9 (the repo's GLM-10B-Chinese checkpoint).
      **kwargs: ``task_mask``, ``decoder_mask``, ``pad_to_multiple_of``.
    """

    kind = "chinese"

    def __init__(self, model_file: PathLike, *, fix_command_token: bool, **kwargs: Any):
        self._model_file = os.fspath(model_file)
        self._fix_command_token = bool(fix_command_token)
        super().__init__(**kwargs)

    @property
    def files(self) -> tuple[str, ...]:
        return (self._model_file,)

    @property
    def fix_command_token(self) -> bool:
        return self._fix_command_token

    def _options(self) -> tuple[Any, ...]:
        return super()._options() + (self._fix_command_token,)

    def _load_codec(self) -> _SentencePieceCodec:
        return _SentencePieceCodec(self._model_file)

    def _layout(self, codec: TextCodec) -> list[Command]:
        n = codec.size
        commands = [
            Command(("pad", "eos"), EOS_LITERAL, n, control=True),
            Command(("sep",), SEP_LITERAL, n + 1),
            Command(("cls",), CLS_LITERAL, n + 2),
            Command(("mask",), MASK_LITERAL, n + 3, lstrip=True),
            Command(("unk",), UNK_LITERAL, n + 4),
            # N+5 is unused: the official code skips it.
            Command(("sop",), SOP_LITERAL, n + 6),
            Command(("eop",), EOP_LITERAL, n + 7),
        ]
        if self._fix_command_token:
            smask, gmask, dblock = n + 8, n + 9, n + 10
        else:
            # The official numbering without --fix-command-token reuses eop's id.
            gmask, smask, dblock = n + 7, n + 8, n + 9
        if self._task_mask:
            commands += [
                Command(("gmask",), GMASK_LITERAL, gmask, lstrip=True),
                Command(("smask",), SMASK_LITERAL, smask, lstrip=True),
            ]
        else:
            dblock -= 2
        if self._decoder_mask:
            commands.append(Command(("dblock",), DBLOCK_LITERAL, dblock))
        return commands

    def _space_between(self, prev: Part, nxt: Part) -> bool:
        # Chinese has no spaces between words, so a space goes back only between
        # ASCII letters/digits and a literal: before an lstrip literal (which
        # dropped it), or after a literal (sentencepiece drops a run's leading space).
        if prev.text[-1].isspace() or nxt.text[0].isspace():
            return False
        if nxt.command is not None and nxt.command.lstrip:
            return prev.command is not None or _ascii_alnum(prev.text[-1])
        if prev.command is not None and nxt.command is None:
            return _ascii_alnum(nxt.text[0])
        return False
