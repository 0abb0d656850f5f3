"""seqio vocabularies for the official GLM tokenizers (THUDM/GLM
``data_utils/tokenization.py``).

The released GLM checkpoints were trained with one of four tokenizers. Each class
here reads the files the user supplies and reproduces the official token ids,
command-token ids and padded vocabulary size (spec section 2.1):

=================  ============================  ==========================================
kind               files                         checkpoints
=================  ============================  ==========================================
``'bert'``         ``vocab.txt`` (uncased)       GLM-Base/Large/Doc, GLM-410M/515M
``'gpt2'``         ``vocab.json`` + merges.txt   GLM-2B, GLM-10B
``'roberta'``      roberta ``vocab.json`` + ...  GLM-RoBERTa
``'chinese'``      ``cog-pretrain.model``        GLM-Large-Chinese, GLM-10B-Chinese
=================  ============================  ==========================================

Text is tokenized by Hugging Face ``tokenizers`` (WordPiece with the BERT
normalizer and pre-tokenizer; byte-level BPE) or by ``sentencepiece``; this module
only adds GLM's command tokens around them.

Command-token ids (N = the number of text tokens in the supplied files):

* BERT: pad = eos ``[PAD]``, ENC ``[CLS]``, sep ``[SEP]``, MASK ``[MASK]``, unk
  ``[UNK]`` at their ids in ``vocab.txt`` (0, 101, 102, 103, 100 in the real one);
  sop N, eop N+1, then with ``task_mask`` gMASK, sMASK; then with ``decoder_mask``
  dBLOCK at the next free id.
* GPT-2: pad = eos ``<|endoftext|>`` at its id in ``vocab.json`` (50256); sop N,
  eop N+1, ENC N+2, MASK N+3, sep N+4, unk N+5; then gMASK, sMASK; then dBLOCK.
* RoBERTa: pad = eos = sep ``</s>`` (2), ENC ``<s>`` (0), MASK ``<mask>`` (50264),
  unk ``<unk>`` (3) at their ids in ``vocab.json``; sop N, eop N+1; then gMASK,
  sMASK; then dBLOCK.
* Chinese: pad = eos N, sep N+1, ENC N+2, MASK N+3, unk N+4 (N+5 unused), sop N+6,
  eop N+7. The task masks depend on the official ``--fix-command-token`` flag:
  with it (GLM-Large-Chinese) sMASK N+8, gMASK N+9, dBLOCK N+10; without it
  (GLM-10B-Chinese as pretrained in the repo) **gMASK N+7, the same id as eop**,
  sMASK N+8, dBLOCK N+9. The Hugging Face ``glm-10b-chinese`` was converted with
  embedding row 50007 copied to 50009 so that its tokenizer's gMASK (50009)
  works: use ``fix_command_token=True`` with it, ``False`` with the repo's
  GLM-10B-Chinese checkpoint. The official code numbers these from the model's
  piece count, so a smaller test model gets the same offsets; the real 50000-piece
  model gives the spec's 50000..50009.

``vocab_size`` is the number of tokens (text plus commands) rounded up to a
multiple of 128, as ``configure_data.prepare_tokenizer`` pads it: 30592, 50304,
50304 and 50048 for the real files.

Command tokens written literally in text. Every command except pad/eos encodes to
its single id when its official literal appears in text (``[MASK]``, ``[sMASK]``,
``[gMASK]``, ``<|startofpiece|>``, ``<|endofpiece|>``, ``[CLS]``, ``[SEP]``,
``[UNK]``, ``[dBLOCK]``; for RoBERTa too the literals are these bracket forms, as
in the official code, not ``<mask>``). As in the official ``EncodeAsIds``, text is
split on the literals and each stretch between them is tokenized on its own. The
MASK-style commands of the GPT-2, RoBERTa and Chinese tokenizers are ``lstrip``:
the whitespace right before them is dropped (Python ``str.rstrip``), while the
whitespace after them stays with the next word (``"the [MASK] of"`` gives
``the``, ``[MASK]``, ``Ġof``). BERT's whitespace is insignificant anyway.

Deliberate differences from the official code:

* pad/eos is a control id, as in ``glm_jax/data/vocab.py``: its literal in text is plain
  text and the id decodes to nothing (a document cannot forge a boundary, and
  seqio decodes eos-terminated predictions). The official GPT-2/Chinese
  tokenizers split on ``<|endoftext|>`` and BERT's on ``[PAD]``.
* BERT recognises every literal wherever it occurs; the official BERT tokenizer
  only keeps its five ``never_split`` tokens whole, and only between spaces.
* Where two commands share an id, decoding shows the first in this order: pad/eos
  (so RoBERTa's sep decodes to nothing), then the table order above (so the
  Chinese 10B id N+7 decodes as ``<|endofpiece|>``, not ``[gMASK]``).

Decoding. Text runs are decoded by the underlying tokenizer and command ids become
their literals. At a joint between a literal and text a space is put where the
tokenizer lost it: always for BERT (unless whitespace is already there); before an
lstrip literal for GPT-2 and RoBERTa (unless whitespace is already there); and for
Chinese the same, but only next to ASCII letters and digits, since Chinese text has
no spaces and sentencepiece drops a run's leading space. ``decode(encode(s)) == s``
for text the underlying tokenizer reproduces (BERT: lowercased, single-spaced text)
whose lstrip literals follow a single space or start the text. Sentencepiece
decodes the text its model normalized (NFKC by default: a full-width ``，`` comes
back as ``,``).

TF. ``encode_tf``/``decode_tf`` call the Python codec through
``tf.numpy_function``: they work in eager mode and in ``tf.data`` pipelines, but a
graph holding them cannot be serialized (no SavedModel export) and they hold the
GIL. ``encode_tf`` takes a string scalar (ids ``[length]``) or vector (ragged
``[batch, None]``); ``decode_tf`` takes ``[length]`` or ``[batch, length]`` ids.

Pickling carries the file paths and options (files reload lazily); equality compares
the kind, the options and the files' bytes.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import tensorflow as tf

from glm_jax.data.official_vocabs.base import Command, OfficialVocabulary, PathLike
from glm_jax.data.official_vocabs.bert import BertVocabulary
from glm_jax.data.official_vocabs.bpe import GPT2Vocabulary, RobertaVocabulary
from glm_jax.data.official_vocabs.chinese import ChineseVocabulary

__all__ = [
    "BertVocabulary",
    "ChineseVocabulary",
    "Command",
    "GPT2Vocabulary",
    "KINDS",
    "OfficialVocabulary",
    "RobertaVocabulary",
    "official_vocabulary",
]

#: What ``official_vocabulary`` looks for when given a directory.
BERT_VOCAB_FILE = "vocab.txt"
BPE_VOCAB_FILE = "vocab.json"
BPE_MERGES_FILE = "merges.txt"
CHINESE_MODEL_FILE = "cog-pretrain.model"

KINDS = ("bert", "gpt2", "roberta", "chinese")


def _in_dir(path: str, name: str) -> str:
    return os.path.join(path, name) if tf.io.gfile.isdir(path) else path


def official_vocabulary(
    kind: str,
    path: PathLike,
    *,
    task_mask: bool = True,
    decoder_mask: bool = False,
    fix_command_token: Optional[bool] = None,
    merges_file: Optional[PathLike] = None,
    pad_to_multiple_of: int = 128,
) -> OfficialVocabulary:
    """Builds the vocabulary of an official GLM tokenizer.

    Args:
      kind: ``'bert'``, ``'gpt2'``, ``'roberta'`` or ``'chinese'``.
      path: ``'bert'``: ``vocab.txt`` or its directory; ``'gpt2'``/``'roberta'``:
        ``vocab.json`` or a directory holding ``vocab.json`` and ``merges.txt``;
        ``'chinese'``: ``cog-pretrain.model`` or its directory.
      task_mask: include ``[gMASK]``/``[sMASK]`` (official ``--task-mask``).
      decoder_mask: include ``[dBLOCK]``.
      fix_command_token: ``'chinese'`` only, and required there (see
        ``ChineseVocabulary``): True for GLM-Large-Chinese and the Hugging Face
        glm-10b-chinese, False for the repo's GLM-10B-Chinese.
      merges_file: ``'gpt2'``/``'roberta'``: ``merges.txt`` when ``path`` is a file
        (default: ``merges.txt`` beside it).
      pad_to_multiple_of: ``vocab_size`` is a multiple of this.
    """
    path = os.fspath(path)
    common = dict(
        task_mask=task_mask, decoder_mask=decoder_mask, pad_to_multiple_of=pad_to_multiple_of
    )
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    if kind != "chinese" and fix_command_token is not None:
        raise ValueError(f"fix_command_token applies only to kind 'chinese', not {kind!r}")
    if kind not in ("gpt2", "roberta") and merges_file is not None:
        raise ValueError(f"merges_file applies only to 'gpt2' and 'roberta', not {kind!r}")
    if kind == "bert":
        return BertVocabulary(_in_dir(path, BERT_VOCAB_FILE), **common)
    if kind == "chinese":
        if fix_command_token is None:
            raise ValueError(
                "official_vocabulary('chinese', ...) needs fix_command_token: True for "
                "GLM-Large-Chinese and the Hugging Face glm-10b-chinese (gMASK N+9), "
                "False for the repo's GLM-10B-Chinese checkpoint (gMASK N+7, = eop)"
            )
        return ChineseVocabulary(
            _in_dir(path, CHINESE_MODEL_FILE), fix_command_token=fix_command_token, **common
        )
    vocab_file = _in_dir(path, BPE_VOCAB_FILE)
    if merges_file is None:
        merges_file = os.path.join(os.path.dirname(vocab_file), BPE_MERGES_FILE)
    cls: Callable[..., OfficialVocabulary] = GPT2Vocabulary if kind == "gpt2" else RobertaVocabulary
    return cls(vocab_file, merges_file, **common)
