"""Tiny tokenizer files of each official kind, written without any network.

The real files (BERT's ``vocab.txt``, GPT-2's and RoBERTa's ``vocab.json`` +
``merges.txt``, ``cog-pretrain.model``) cannot be fetched here, so tests and demos
build stand-ins with the same layout: the special entries where the official
tokenizers look for them, plus text tokens learnt from a few built-in sentences
(``tokenizers`` for the BPE, ``sentencepiece`` for the Chinese model). A tiny file
only covers the characters of those sentences: BPE drops any other character, and
wordpiece maps unknown words to ``[UNK]``.

``num_tokens`` is N, the number of entries in the file (the official
``num_text_tokens``); the command tokens are numbered from it (spec 2.1), so
``write_tiny_files("bert", d, num_tokens=100)`` gives ``sop`` 100 and a padded
vocabulary of 128, the size of the official test fixture's embedding.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Union

ENGLISH = (
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello again!",
    "An unknown word ends here; another one starts.",
    "GLM fills blanks: spans, sentences and documents.",
)
CHINESE = ("中国的首都是北京。", "你好，世界！", "今天天气很好。", "模型生成文本。")

# The special entries of the real BERT vocab.txt (the real one has them at 0 and 100-103).
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_tiny_files(kind: str, directory: Union[str, Path], *, num_tokens: int = 100) -> dict[str, Path]:
    """Write a tiny tokenizer of ``kind`` into ``directory`` (created if missing).

    Args:
      kind: ``'bert'``, ``'gpt2'``, ``'roberta'`` or ``'chinese'``.
      directory: where the files go, under their official names.
      num_tokens: entries in the file (N). BERT, GPT-2 and RoBERTa files have
        exactly N (padded with never-produced dummy entries); the sentencepiece
        model has at most N pieces (what training on the built-in sentences yields).

    Returns:
      ``{"vocab_file": path}``, plus ``"merges_file"`` for the BPE kinds: the
      arguments of ``glm_jax.data.official_vocabs.official_vocabulary``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        return {"vocab_file": _write_bert(directory / "vocab.txt", num_tokens)}
    if kind in ("gpt2", "roberta"):
        return _write_bpe(directory, kind, num_tokens)
    if kind == "chinese":
        return {"vocab_file": _write_sentencepiece(directory / "cog-pretrain.model", num_tokens)}
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bert', 'gpt2', 'roberta' or 'chinese'")


def _words() -> list[str]:
    text = " ".join(ENGLISH).lower()
    for p in ".,;:!":
        text = text.replace(p, f" {p} ")
    return list(dict.fromkeys(text.split()))  # distinct, in order


def _pad(entries: list[str], n: int, what: str) -> list[str]:
    if len(entries) > n:
        raise ValueError(f"a tiny {what} needs at least {len(entries)} entries; num_tokens={n}")
    return entries + [f"[unused{i}]" for i in range(n - len(entries))]


def _write_bert(path: Path, n: int) -> Path:
    lines = _pad([*_BERT_SPECIALS, *_words(), "##s"], n, "BERT vocab.txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_bpe(directory: Path, kind: str, n: int) -> dict[str, Path]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>"] if kind == "roberta" else []
    # The last entry is <|endoftext|> (GPT-2, id 50256 in the real file) or <mask> (RoBERTa, 50264).
    budget = n - len(specials) - 1
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=budget, show_progress=False)
    tokenizer.train_from_iterator(list(ENGLISH) * 4, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    learnt = sorted(state["vocab"], key=state["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    entries = _pad(specials + learnt, n - 1, f"{kind} vocab.json")
    entries.append("<mask>" if kind == "roberta" else "<|endoftext|>")
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(entries)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return {"vocab_file": vocab_file, "merges_file": merges_file}


def _write_sentencepiece(path: Path, n: int) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((list(ENGLISH) + list(CHINESE)) * 8),
        model_writer=buf,
        vocab_size=n,
        hard_vocab_limit=False,  # at most n: the sentences may not support more pieces
        character_coverage=1.0,
        model_type="unigram",
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path
