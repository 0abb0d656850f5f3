"""GPT-2 byte-level BPE vocabularies: plain GPT-2 (GLM-2B, GLM-10B) and RoBERTa's
(GLM-RoBERTa)."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

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
    decode_utf8,
    read_bytes,
)


class _ByteLevelBPECodec(TextCodec):
    """GPT-2's byte-level BPE via ``tokenizers`` (GPT-2 regex, no prefix space)."""

    def __init__(self, vocab_path: str, merges_path: str):
        try:
            vocab = json.loads(read_bytes(vocab_path, "BPE vocab.json"))
        except json.JSONDecodeError as e:
            raise ValueError(f"BPE vocab.json {vocab_path} is not valid JSON ({e})") from None
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError(f"BPE vocab.json {vocab_path} is not a token -> id object")
        merges: list[tuple[str, str]] = []
        text = decode_utf8(read_bytes(merges_path, "BPE merges.txt"), merges_path)
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#version"):
                continue
            pair = line.split()
            if len(pair) != 2:
                raise ValueError(
                    f"BPE merges.txt {merges_path}:{lineno}: expected 2 tokens: {line!r}"
                )
            merges.append((pair[0], pair[1]))
        self.vocab: dict[str, int] = vocab
        # The official code counts the entries (len(encoder)), not the largest id.
        self.size = len(vocab)
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def token_texts(self) -> list[str]:
        texts = [""] * (max(self.vocab.values()) + 1)
        for token, index in self.vocab.items():
            texts[index] = token
        return texts

    def id_of(self, token: str, path: str) -> int:
        if token not in self.vocab:
            raise ValueError(f"BPE vocab.json {path} has no {token!r} entry")
        return self.vocab[token]


class _ByteLevelBPEVocabulary(OfficialVocabulary):
    """Shared by the GPT-2 and RoBERTa vocabularies."""

    def __init__(self, vocab_file: PathLike, merges_file: PathLike, **kwargs: Any):
        self._vocab_file = os.fspath(vocab_file)
        self._merges_file = os.fspath(merges_file)
        super().__init__(**kwargs)

    @property
    def files(self) -> tuple[str, ...]:
        return (self._vocab_file, self._merges_file)

    def _load_codec(self) -> _ByteLevelBPECodec:
        return _ByteLevelBPECodec(self._vocab_file, self._merges_file)

    def _space_between(self, prev: Part, nxt: Part) -> bool:
        # Byte-level BPE text is exact; only an lstrip literal lost its whitespace.
        return nxt.command is not None and nxt.command.lstrip and not prev.text[-1].isspace()


class GPT2Vocabulary(_ByteLevelBPEVocabulary):
    """The GPT-2 BPE vocabulary (GLM-2B, GLM-10B).

    Args:
      vocab_file, merges_file: GPT-2's ``vocab.json`` (50257 entries) and ``merges.txt``.
      **kwargs: ``task_mask``, ``decoder_mask``, ``pad_to_multiple_of``.
    """

    kind = "gpt2"

    def _layout(self, codec: TextCodec) -> list[Command]:
        assert isinstance(codec, _ByteLevelBPECodec)
        n, path = codec.size, self._vocab_file
        commands = [
            Command(("pad", "eos"), EOS_LITERAL, codec.id_of(EOS_LITERAL, path), control=True),
            Command(("sop",), SOP_LITERAL, n),
            Command(("eop",), EOP_LITERAL, n + 1),
            Command(("cls",), CLS_LITERAL, n + 2),
            Command(("mask",), MASK_LITERAL, n + 3, lstrip=True),
            Command(("sep",), SEP_LITERAL, n + 4),
            Command(("unk",), UNK_LITERAL, n + 5),
        ]
        if self._task_mask:
            commands += [
                Command(("gmask",), GMASK_LITERAL, n + 6, lstrip=True),
                Command(("smask",), SMASK_LITERAL, n + 7, lstrip=True),
            ]
        if self._decoder_mask:
            commands.append(Command(("dblock",), DBLOCK_LITERAL, n + (8 if self._task_mask else 6)))
        return commands


class RobertaVocabulary(_ByteLevelBPEVocabulary):
    """GPT-2 BPE with the RoBERTa vocabulary (GLM-RoBERTa).

    Args:
      vocab_file, merges_file: ``roberta-large``'s ``vocab.json`` (50265 entries,
        ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 50264) and ``merges.txt``.
      **kwargs: ``task_mask``, ``decoder_mask``, ``pad_to_multiple_of``.
    """

    kind = "roberta"

    def _layout(self, codec: TextCodec) -> list[Command]:
        assert isinstance(codec, _ByteLevelBPECodec)
        n, path = codec.size, self._vocab_file
        eos = codec.id_of("</s>", path)
        commands = [
            Command(("pad", "eos"), EOS_LITERAL, eos, control=True),
            Command(("sep",), SEP_LITERAL, eos),
            Command(("cls",), CLS_LITERAL, codec.id_of("<s>", path)),
            Command(("mask",), MASK_LITERAL, codec.id_of("<mask>", path), lstrip=True),
            Command(("unk",), UNK_LITERAL, codec.id_of("<unk>", path)),
            Command(("sop",), SOP_LITERAL, n),
            Command(("eop",), EOP_LITERAL, n + 1),
        ]
        if self._task_mask:
            commands += [
                Command(("gmask",), GMASK_LITERAL, n + 2, lstrip=True),
                Command(("smask",), SMASK_LITERAL, n + 3, lstrip=True),
            ]
        if self._decoder_mask:
            commands.append(Command(("dblock",), DBLOCK_LITERAL, n + (4 if self._task_mask else 2)))
        return commands
