"""The uncased BERT wordpiece vocabulary (GLM-Base/Large/Doc/410M/515M)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from glm_jax.data.official_vocabs.base import (
    CLS_LITERAL,
    DBLOCK_LITERAL,
    EOP_LITERAL,
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


class _WordPieceCodec(TextCodec):
    """Uncased BERT wordpiece via ``tokenizers``, as ``BertTokenizer(do_lower_case=True)``."""

    def __init__(self, path: str):
        text = decode_utf8(read_bytes(path, "BERT vocab.txt"), path)
        # As the official load_vocab: one token per line, stripped; a repeated
        # token keeps its last line.
        self.vocab: dict[str, int] = {}
        for index, line in enumerate(text.splitlines()):
            self.vocab[line.strip()] = index
        if not self.vocab:
            raise ValueError(f"BERT vocab.txt is empty: {path}")
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in self.vocab]
        if missing:
            raise ValueError(f"BERT vocab.txt {path} lacks the special tokens {missing}")
        # The official num_text_tokens is len(vocab), the distinct tokens.
        self.size = len(self.vocab)
        tokenizer = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
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


class BertVocabulary(OfficialVocabulary):
    """The uncased BERT wordpiece vocabulary (GLM-Base/Large/Doc/410M/515M).

    Args:
      vocab_file: the BERT ``vocab.txt`` (``bert-base-uncased``'s, 30522 lines).
      **kwargs: ``task_mask``, ``decoder_mask``, ``pad_to_multiple_of``.
    """

    kind = "bert"

    def __init__(self, vocab_file: PathLike, **kwargs: Any):
        self._vocab_file = os.fspath(vocab_file)
        super().__init__(**kwargs)

    @property
    def files(self) -> tuple[str, ...]:
        return (self._vocab_file,)

    def _load_codec(self) -> _WordPieceCodec:
        return _WordPieceCodec(self._vocab_file)

    def _layout(self, codec: TextCodec) -> list[Command]:
        assert isinstance(codec, _WordPieceCodec)
        v, n = codec.vocab, codec.size
        commands = [
            Command(("pad", "eos"), "[PAD]", v["[PAD]"], control=True),
            Command(("cls",), CLS_LITERAL, v["[CLS]"]),
            Command(("sep",), SEP_LITERAL, v["[SEP]"]),
            Command(("mask",), MASK_LITERAL, v["[MASK]"]),
            Command(("unk",), UNK_LITERAL, v["[UNK]"]),
            Command(("sop",), SOP_LITERAL, n),
            Command(("eop",), EOP_LITERAL, n + 1),
        ]
        if self._task_mask:
            commands += [
                Command(("gmask",), GMASK_LITERAL, n + 2),
                Command(("smask",), SMASK_LITERAL, n + 3),
            ]
        if self._decoder_mask:
            commands.append(Command(("dblock",), DBLOCK_LITERAL, n + (4 if self._task_mask else 2)))
        return commands

    def _space_between(self, prev: Part, nxt: Part) -> bool:
        # Wordpiece output separates words by spaces; keep literals separate too.
        return not (prev.text[-1].isspace() or nxt.text[0].isspace())
