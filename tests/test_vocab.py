"""GLMVocabulary: id layout, literal command tokens (Python and TF), seqio use."""

from __future__ import annotations

import io
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf

from glm_jax.data import corpus
from glm_jax.data.embedded_vocab import EmbeddedVocabulary
from glm_jax.data.vocab import COMMANDS, GLMVocabulary

SENTENCES = [
    "Paris is the [MASK] of France.",
    "[CLS] The [sMASK] ends here. [gMASK]",
    "<|startofpiece|> capital <|endofpiece|>",
    "An [UNK] word and a [dBLOCK] block.",
    "a\n[MASK]\nb",
    "",
    "no command at all",
]



@pytest.fixture(scope="session")
def vocab(corpus_dir) -> GLMVocabulary:
    return EmbeddedVocabulary(corpus_dir)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A model with sentencepiece's defaults (unk 0, bos 1, eos 2, no byte fallback)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 20),
        model_writer=buf,
        vocab_size=30,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("plain") / "plain.model"
    path.write_bytes(buf.getvalue())
    return path


def tf_encode(vocab: GLMVocabulary, texts: list[str]) -> list[list[int]]:
    """encode_tf in graph mode, inside Dataset.map as seqio runs it."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string)).map(vocab.encode_tf)
    return [ids.tolist() for ids in ds.as_numpy_iterator()]


def test_embedded_layout(vocab):
    assert vocab.num_pieces == 8000
    assert vocab.vocab_size == 8064  # 8000 + 9 commands, padded up to 63 * 128
    ct = vocab.command_tokens
    assert (ct.pad, ct.eos, ct.cls, ct.mask) == (8000, 8000, 8001, 8002)
    assert (ct.smask, ct.gmask) == (8003, 8004)
    assert (ct.sop, ct.eop, ct.unk, ct.dblock, ct.sep) == (8005, 8006, 8007, 8008, None)
    assert ct.mask_ids() == (8002, 8003, 8004)
    assert (vocab.eos_id, vocab.pad_id, vocab.unk_id, vocab.bos_id) == (8000, 8000, 8007, None)
    assert vocab.literal_ids == {lit: 8000 + i for i, (_, lit) in enumerate(COMMANDS)}


@pytest.mark.parametrize("multiple, size", [(1, 8009), (64, 8064), (128, 8064), (4096, 8192)])
def test_padded_size(corpus_dir, multiple, size):
    vocab = EmbeddedVocabulary(corpus_dir, pad_to_multiple_of=multiple)
    assert vocab.vocab_size == size
    assert vocab.decode([size - 1]) == ("[dBLOCK]" if size == 8009 else "[UNK]")


def test_bad_pad_multiple():
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1, got 0"):
        GLMVocabulary("x.model", pad_to_multiple_of=0)


def test_literal_commands_are_single_ids_in_python_and_tf(vocab):
    ids = vocab.encode("Paris is the [MASK] of France.")
    assert ids.count(8002) == 1 and max(i for i in ids if i != 8002) < 8000
    assert ids[:ids.index(8002)] == vocab.encode("Paris is the")  # no trailing-space piece
    assert ids[ids.index(8002) + 1:] == vocab.encode("of France.")
    for field, literal in COMMANDS[1:]:
        assert vocab.encode(literal) == [getattr(vocab.command_tokens, field)], literal
        assert vocab.encode(f"x {literal} y")[1:-1] == [getattr(vocab.command_tokens, field)]
    python = [vocab.encode(s) for s in SENTENCES]
    assert tf_encode(vocab, SENTENCES) == python
    batched = vocab.encode_tf(tf.constant(SENTENCES)).to_list()  # [batch] -> ragged
    assert batched == python
    for text, ids in zip(SENTENCES, python, strict=True):
        assert vocab.decode(ids) == text
        assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == text


def test_whitespace_around_literals(vocab):
    same = ["the [MASK] of", "the[MASK]of", "the   [MASK]   of"]
    kept = ["a\n[MASK]\nb", "a\t[MASK]", "x  [gMASK]\n\n  y"]  # newlines, tabs stay
    assert tf_encode(vocab, same + kept) == [vocab.encode(s) for s in same + kept]
    assert len({tuple(vocab.encode(s)) for s in same}) == 1
    assert vocab.decode(vocab.encode("the[MASK]of")) == "the [MASK] of"
    assert vocab.decode(vocab.encode("[MASK][MASK]")) == "[MASK] [MASK]"
    assert vocab.decode(vocab.encode("a\n[MASK]\nb")) == "a\n[MASK]\nb"
    assert vocab.decode(vocab.encode("x  [gMASK]\n\n  y")) == "x [gMASK]\n\n  y"


def test_endoftext_is_a_control_id(vocab):
    ids = vocab.encode("<|endoftext|>")
    assert vocab.eos_id not in ids and len(ids) > 1  # plain text, not the eos id
    assert vocab.decode(ids) == "<|endoftext|>"
    a, b = vocab.encode("one"), vocab.encode("two")
    assert vocab.decode(a + [vocab.eos_id] + b) == "one"  # seqio: up through the first eos
    assert vocab.decode_tf(tf.constant(a + [vocab.eos_id] + b)).numpy() == b"one"


def test_special_ids_decode(vocab):
    the = vocab.encode("the")
    assert vocab.decode(the + [0, 0]) == "the"  # id 0: the <pad> control, seqio's padding
    assert vocab.decode([8030]) == "[UNK]"  # an unused padding row
    assert vocab.decode([9000]) == "[UNK]"  # past the end: seqio maps it to unk
    with pytest.raises(ValueError, match="id -1 at position 1"):
        vocab.decode([the[0], -1])
    batch = tf.constant([the + [0, 0], [8002] + the + [8030]], tf.int32)
    got = [s.decode() for s in vocab.decode_tf(batch).numpy()]
    assert got == ["the", "[MASK] the [UNK]"]
    assert vocab.decode(batch[1].numpy().tolist()) == "[MASK] the [UNK]"


def test_corpus_roundtrip_and_python_tf_agreement(vocab, corpus_dir):
    built = corpus.embedded_corpus(corpus_dir)
    docs = built.documents("validation")
    for doc in docs:  # lossless: identity normalization, byte fallback
        assert vocab.decode(vocab.encode(doc.text)) == doc.text, doc.id
    lines = sorted({ln for d in docs + built.documents("train")[::4] for ln in d.text.split("\n")})
    python = [vocab.encode(ln) for ln in lines]
    tf_ids = vocab.encode_tf(tf.constant(lines)).to_list()
    differ = [(p, t) for p, t in zip(python, tf_ids, strict=True) if p != t]
    assert len(differ) / len(lines) < 0.01
    for p, t in differ:  # only exact ties between equally scored segmentations
        assert vocab.decode(p) == vocab.decode(t)
        score = lambda ids: sum(vocab.tokenizer.GetScore(i) for i in ids)  # noqa: E731
        assert score(p) == pytest.approx(score(t), abs=1e-3)


def test_sp_unknown_maps_to_unk_command(plain_model):
    vocab = GLMVocabulary(plain_model)
    n = vocab.num_pieces
    assert vocab.vocab_size == 128 and vocab.unk_id == n + 7
    ids = vocab.encode("the Zebra [MASK]")
    assert 0 not in ids and vocab.unk_id in ids and ids[-1] == n + 2
    assert tf_encode(vocab, ["the Zebra [MASK]"]) == [ids]
    assert "[UNK]" in vocab.decode(ids)


def test_pickle_and_equality(vocab, corpus_dir, plain_model):
    vocab.encode("load it")  # pickles must not carry the loaded processor
    blob = pickle.dumps(vocab)
    assert len(blob) < 2000
    restored = pickle.loads(blob)
    assert restored == vocab and hash(restored) == hash(vocab)
    assert restored.encode(SENTENCES[0]) == vocab.encode(SENTENCES[0])
    by_path = GLMVocabulary(Path(corpus_dir) / "spm.model")
    assert by_path == vocab and hash(by_path) == hash(vocab)
    assert pickle.loads(pickle.dumps(by_path)).encode("[MASK]") == [8002]
    assert GLMVocabulary(plain_model) != vocab
    assert EmbeddedVocabulary(corpus_dir, pad_to_multiple_of=64) != vocab


def test_inside_a_seqio_task(vocab):
    name = f"test_glm_vocab_{uuid.uuid4().hex}"
    texts = SENTENCES[:5]

    def dataset_fn(split, shuffle_files):
        del split, shuffle_files
        return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts)})

    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"text": seqio.Feature(vocabulary=vocab, add_eos=True)},
    )
    try:
        ds = seqio.get_mixture_or_task(name).get_dataset(None, shuffle=False)
        got = [ex["text"].tolist() for ex in ds.as_numpy_iterator()]
    finally:
        seqio.TaskRegistry.remove(name)
    assert got == [vocab.encode(t) + [8000] for t in texts]
    assert name not in seqio.TaskRegistry.names()


def test_sentence_end_mask(vocab):
    mask = vocab.sentence_end_mask()
    assert mask.shape == (8064,) and mask.dtype == np.bool_
    sp = vocab.tokenizer
    ends = [".", "<0x0A>", "<0x3F>", ":", "。", "？", "…"]
    assert all(mask[sp.PieceToId(p)] for p in ends), [p for p in ends if not mask[sp.PieceToId(p)]]
    others = ["▁the", "<0xE3>", "<0x20>", "<pad>", "<unk>", "▁"]
    assert not any(mask[sp.PieceToId(p)] for p in others)
    assert mask[8000] and not mask[8001:].any()  # eos yes; other commands and padding no
    pieces_with_end = [i for i in range(8000) if set(".?!;:") & set(sp.IdToPiece(i))]
    assert mask[pieces_with_end].all() and len(pieces_with_end) > 40


def test_missing_or_bad_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        GLMVocabulary(tmp_path / "nope.model").encode("x")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        GLMVocabulary(bad).encode("x")


def test_encode_piece_joins_like_the_whole_text(vocab):
    """Cloze pattern pieces are tokenised one by one (spec 2.4). One leading space is
    the word boundary sentencepiece's dummy prefix writes; without it there is none."""
    assert vocab.encode_piece(" No") == vocab.encode("No")
    assert vocab.encode_piece(" No")[0] != vocab.encode_piece(" Yes")[0]
    assert vocab.decode(vocab.encode_piece("?")) == "?"
    assert vocab.encode_piece("?") == vocab.encode("a?")[-len(vocab.encode_piece("?")):]
    pieces = ["The answer", " is", "?", " No", "."]
    joined = [i for p in pieces for i in vocab.encode_piece(p)]
    assert vocab.decode(joined) == "The answer is? No."
