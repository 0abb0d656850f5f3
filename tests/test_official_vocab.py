"""Official GLM tokenizers (glm_jax/data/official_vocabs/): command-token ids of spec 2.1,
padded sizes, literal command tokens, round trips, TF, pickling, the factory.

The tokenizer files are tiny ones built here: trained on a few sentences, then padded
with dummy entries to the real vocabularies' sizes (30522, 50257, 50265), so that
the command-token ids are the real checkpoints' ids.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from glm_jax.command_tokens import CommandTokens
from glm_jax.data.official_vocabs import (
    BertVocabulary,
    ChineseVocabulary,
    GPT2Vocabulary,
    OfficialVocabulary,
    RobertaVocabulary,
    official_vocabulary,
)

WORDS = "paris is the capital of france hello world unknown known a b an word ends here".split()
ENGLISH = [
    "Paris is the capital of France.",
    "Hello world, hello again!",
    "The quick brown fox jumps over the lazy dog.",
    "An unknown word ends here; another one starts.",
    "GLM fills blanks: spans, sentences and documents.",
]
CHINESE = ["中国的首都是北京。", "你好，世界！", "今天天气很好。", "模型生成文本。"]


def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE trained on ENGLISH by `tokenizers` (ids 0..n-1) and its merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(ENGLISH * 4, trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


def _write_bpe(directory: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def bpe_trained() -> tuple[dict[str, int], list[str]]:
    return _bpe_vocab_and_merges()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, bpe_trained) -> Path:
    """GPT-2 layout: 50257 entries, <|endoftext|> last (50256)."""
    trained, merges = bpe_trained
    vocab = dict(trained)
    for i in range(len(vocab), 50256):
        vocab[f"dummy{i}"] = i  # never produced: no merge reaches them
    vocab["<|endoftext|>"] = 50256
    return _write_bpe(tmp_path_factory.mktemp("gpt2") / "files", vocab, merges)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory, bpe_trained) -> Path:
    """RoBERTa layout: <s> 0, <pad> 1, </s> 2, <unk> 3, BPE tokens, <mask> 50264."""
    trained, merges = bpe_trained
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: i + 4 for token, i in trained.items()})
    for i in range(len(vocab), 50264):
        vocab[f"dummy{i}"] = i
    vocab["<mask>"] = 50264
    return _write_bpe(tmp_path_factory.mktemp("roberta") / "files", vocab, merges)


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory) -> Path:
    """BERT layout: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
    then a few words, padded with dummies to 30522 lines."""
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    lines += list("!,.;?") + WORDS + ["##s", "un", "##known", "glm"]
    lines += [f"dummy{i}" for i in range(len(lines), 30522)]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chinese_file(tmp_path_factory) -> Path:
    """A small sentencepiece model over English and Chinese sentences."""
    rng = random.Random(0)
    words = " ".join(ENGLISH).lower().replace(".", " ").replace(",", " ").split()
    hanzi = "".join(CHINESE)
    sentences = [
        " ".join(rng.choices(words, k=8)) + " " + "".join(rng.choices(hanzi, k=10)) + "。"
        for _ in range(400)
    ] + ENGLISH + CHINESE
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        vocab_size=200,
        character_coverage=1.0,
        model_type="unigram",
    )
    path = tmp_path_factory.mktemp("chinese") / "cog-pretrain.model"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def gpt2(gpt2_dir) -> GPT2Vocabulary:
    return official_vocabulary("gpt2", gpt2_dir)


@pytest.fixture(scope="module")
def roberta(roberta_dir) -> RobertaVocabulary:
    return official_vocabulary("roberta", roberta_dir)


@pytest.fixture(scope="module")
def bert(bert_file) -> BertVocabulary:
    return official_vocabulary("bert", bert_file.parent)


@pytest.fixture(scope="module")
def chinese(chinese_file) -> ChineseVocabulary:
    return official_vocabulary("chinese", chinese_file, fix_command_token=True)


# ----------------------------------------------------------- command-token ids


def test_bert_ids(bert_file):
    v = official_vocabulary("bert", bert_file, decoder_mask=True)
    assert v.num_text_tokens == 30522
    assert v.command_tokens == CommandTokens(
        pad=0, eos=0, cls=101, sep=102, mask=103, unk=100,
        sop=30522, eop=30523, gmask=30524, smask=30525, dblock=30526,
    )  # fmt: skip
    assert v.vocab_size == 30592
    plain = official_vocabulary("bert", bert_file, task_mask=False)
    assert (plain.command_tokens.gmask, plain.command_tokens.smask) == (None, None)
    assert plain.command_tokens.eop == 30523 and plain.vocab_size == 30592


def test_gpt2_ids(gpt2_dir):
    v = official_vocabulary("gpt2", gpt2_dir, decoder_mask=True)
    assert v.num_text_tokens == 50257
    assert v.command_tokens == CommandTokens(
        pad=50256, eos=50256, sop=50257, eop=50258, cls=50259, mask=50260, sep=50261,
        unk=50262, gmask=50263, smask=50264, dblock=50265,
    )  # fmt: skip
    assert v.vocab_size == 50304
    no_task = official_vocabulary("gpt2", gpt2_dir, task_mask=False, decoder_mask=True)
    assert no_task.command_tokens.gmask is None and no_task.command_tokens.dblock == 50263


def test_roberta_ids(roberta_dir):
    v = official_vocabulary("roberta", roberta_dir)
    assert v.num_text_tokens == 50265
    assert v.command_tokens == CommandTokens(
        pad=2, eos=2, sep=2, cls=0, mask=50264, unk=3,
        sop=50265, eop=50266, gmask=50267, smask=50268,
    )  # fmt: skip
    assert v.vocab_size == 50304


def test_chinese_ids_follow_the_piece_count(chinese_file):
    fixed = official_vocabulary("chinese", chinese_file, fix_command_token=True, decoder_mask=True)
    n = fixed.num_text_tokens
    assert n == 200
    assert fixed.command_tokens == CommandTokens(
        pad=n, eos=n, sep=n + 1, cls=n + 2, mask=n + 3, unk=n + 4,
        sop=n + 6, eop=n + 7, smask=n + 8, gmask=n + 9, dblock=n + 10,
    )  # fmt: skip
    assert fixed.vocab_size == 256
    tenb = official_vocabulary("chinese", chinese_file, fix_command_token=False, decoder_mask=True)
    ct = tenb.command_tokens
    assert (ct.sop, ct.eop, ct.gmask, ct.smask, ct.dblock) == (n + 6, n + 7, n + 7, n + 8, n + 9)


class _FullSizeChinese(ChineseVocabulary):
    """The layout over a stand-in for the real 50000-piece model."""

    def _load_codec(self):
        class Codec:
            size = 50000

        return Codec()


@pytest.mark.parametrize(
    "fix, expected",
    [
        (True, dict(sop=50006, eop=50007, smask=50008, gmask=50009, dblock=None)),
        (False, dict(sop=50006, eop=50007, gmask=50007, smask=50008, dblock=None)),
    ],
)
def test_chinese_real_size_ids(fix, expected):
    v = _FullSizeChinese("unused.model", fix_command_token=fix)
    assert v.command_tokens == CommandTokens(
        pad=50000, eos=50000, sep=50001, cls=50002, mask=50003, unk=50004, **expected
    )
    assert v.vocab_size == 50048
    ten_b = _FullSizeChinese("x", fix_command_token=False, decoder_mask=True)
    assert ten_b.command_tokens.dblock == 50009


# ------------------------------------------------------------------ encoding


def test_bert_encode(bert, bert_file):
    index = {w: i for i, w in enumerate(bert_file.read_text(encoding="utf-8").splitlines())}
    ids = bert.encode("Paris is the [MASK] of France.")
    words = [index[w] for w in ("paris", "is", "the", "of", "france", ".")]
    assert ids == words[:3] + [103] + words[3:]
    # Greedy longest-match wordpiece.
    assert bert.encode("unknowns words [gMASK][sMASK]") == [
        index["unknown"], index["##s"], index["word"], index["##s"], 30524, 30525,
    ]  # fmt: skip
    # Uppercase, accents, and an unknown word ([UNK] 100).
    assert bert.encode("HÉLLO zzqx") == [index["hello"], 100]
    # The pad/eos literal is plain text, not the id 0.
    assert 0 not in bert.encode("[PAD]")


def test_gpt2_literals_and_lstrip(gpt2, gpt2_dir, bpe_trained):
    trained, _ = bpe_trained
    # The reference: the files read by tokenizers' own loader, GPT-2 pre-tokenization.
    hf = Tokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)

    def enc(text: str) -> list[int]:
        return hf.encode(text).ids

    ids = gpt2.encode("Paris is the [MASK] of France.")
    # The space before the lstrip [MASK] is dropped; the one after stays with "of".
    assert ids == enc("Paris is the") + [50260] + enc(" of France.")
    assert trained["Ġof"] in ids
    assert gpt2.encode("x  \n[gMASK]") == enc("x") + [50263]
    assert gpt2.encode("[sMASK]") == [50264]
    # Non-lstrip literals keep their surrounding whitespace.
    ids = gpt2.encode("a <|startofpiece|> b<|endofpiece|>")
    assert ids == enc("a ") + [50257] + enc(" b") + [50258]
    assert gpt2.encode("[CLS][SEP][UNK]") == [50259, 50261, 50262]
    # <|endoftext|> is text, never the eos id.
    assert 50256 not in gpt2.encode("<|endoftext|>")


def test_roberta_literals(roberta, bpe_trained):
    trained, _ = bpe_trained
    ids = roberta.encode("Paris is the [MASK] of France. [gMASK]")
    assert ids[ids.index(50264) + 1] == trained["Ġof"] + 4
    assert ids[-1] == 50267
    assert roberta.encode("[CLS]x[SEP]") == [0, trained["x"] + 4, 2]


def test_chinese_literals(chinese):
    n = chinese.num_text_tokens
    sp = spm.SentencePieceProcessor(model_file=chinese.files[0])
    ids = chinese.encode("中国的首都是 [MASK]。")
    assert ids == sp.encode("中国的首都是") + [n + 3] + sp.encode("。")
    assert chinese.encode("[gMASK]<|startofpiece|>") == [n + 9, n + 6]


def test_chinese_10b_gmask_is_eop(chinese_file):
    v = official_vocabulary("chinese", chinese_file, fix_command_token=False)
    n = v.num_text_tokens
    assert v.encode("[gMASK]") == v.encode("<|endofpiece|>") == [n + 7]
    assert v.decode([n + 7]) == "<|endofpiece|>"  # the id decodes as eop


# ---------------------------------------------------------------- round trips

GPT2_TEXTS = [
    "Paris is the [MASK] of France.",
    "[CLS] The [sMASK] ends here. [gMASK]",
    "<|startofpiece|> capital<|endofpiece|>",
    "An [UNK] word and\na [MASK] block.",
    "",
    "no command at all, ünïcödé 中国",
]


@pytest.mark.parametrize("text", GPT2_TEXTS)
def test_bpe_round_trip(gpt2, roberta, text):
    assert gpt2.decode(gpt2.encode(text)) == text
    if "[SEP]" not in text:  # RoBERTa's sep is its eos id
        assert roberta.decode(roberta.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["paris is the [MASK] of france.", "[CLS] hello world [SEP] [gMASK] <|startofpiece|> glm"],
)
def test_bert_round_trip(bert, text):
    assert bert.decode(bert.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["Paris is the [MASK] of France.", "中国的首都是[MASK]。", "[gMASK]你好。世界<|startofpiece|>"],
)
def test_chinese_round_trip(chinese, text):
    assert chinese.decode(chinese.encode(text)) == text


def test_decode_control_and_padding_rows(gpt2, bert):
    hello = gpt2.encode("Hello")
    assert gpt2.decode(hello + [50256] + hello) == "Hello"  # seqio stops at eos
    assert gpt2._decode(hello + [50256] + hello) == "HelloHello"  # eos itself is nothing
    assert gpt2.decode([50300]) == "[UNK]"  # an unassigned padding row
    assert bert.decode([30591]) == "[UNK]"
    with pytest.raises(ValueError, match="id -1 at position 0"):
        gpt2.decode([-1])


# ------------------------------------------------------------------------ TF


def test_tf_matches_python(gpt2, bert, chinese):
    cases = [
        (gpt2, GPT2_TEXTS),
        (bert, ["paris is the [MASK] of france."]),
        (chinese, ["中国的首都是[MASK]。"]),
    ]
    for v, texts in cases:
        for text in texts:
            ids = v.encode_tf(tf.constant(text))
            assert ids.dtype == tf.int32 and ids.numpy().tolist() == v.encode(text)
            assert v.decode_tf(ids).numpy().decode() == v.decode(v.encode(text))
    batch = gpt2.encode_tf(tf.constant(GPT2_TEXTS[:2]))
    assert isinstance(batch, tf.RaggedTensor)
    assert batch.to_list() == [gpt2.encode(t) for t in GPT2_TEXTS[:2]]
    padded = batch.to_tensor(default_value=50256)
    assert [s.decode() for s in gpt2.decode_tf(padded).numpy()] == GPT2_TEXTS[:2]


def test_tf_dataset_map(gpt2):
    ds = tf.data.Dataset.from_tensor_slices(GPT2_TEXTS[:3]).map(gpt2.encode_tf)
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [gpt2.encode(t) for t in GPT2_TEXTS[:3]]


# ------------------------------------------------------ pickling and equality


def test_pickle_and_equality(gpt2, gpt2_dir, chinese_file, tmp_path):
    clone = pickle.loads(pickle.dumps(gpt2))
    assert clone == gpt2 and hash(clone) == hash(gpt2)
    assert clone.encode("the [MASK] of") == gpt2.encode("the [MASK] of")
    copy = shutil.copytree(gpt2_dir, tmp_path / "copy")
    assert official_vocabulary("gpt2", copy) == gpt2  # equal by content, not path
    assert official_vocabulary("gpt2", gpt2_dir, task_mask=False) != gpt2
    assert official_vocabulary("roberta", gpt2_dir) != gpt2
    ten_b = official_vocabulary("chinese", chinese_file, fix_command_token=False)
    assert ten_b != official_vocabulary("chinese", chinese_file, fix_command_token=True)
    assert pickle.loads(pickle.dumps(ten_b)).command_tokens == ten_b.command_tokens


def test_seqio_feature(bert):
    feature = seqio.Feature(vocabulary=bert)
    assert isinstance(feature.vocabulary, OfficialVocabulary)
    assert feature.vocabulary.eos_id == 0 and feature.vocabulary.vocab_size == 30592


# -------------------------------------------------------------------- errors


def test_factory_errors(chinese_file, tmp_path):
    with pytest.raises(ValueError, match="needs fix_command_token"):
        official_vocabulary("chinese", chinese_file)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        official_vocabulary("t5", chinese_file)
    with pytest.raises(ValueError, match="only to kind 'chinese'"):
        official_vocabulary("bert", chinese_file, fix_command_token=True)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        official_vocabulary("bert", tmp_path).encode("x")
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt .* lacks .*\[UNK\]"):
        official_vocabulary("bert", bad).command_tokens
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="has no '<\\|endoftext\\|>' entry"):
        official_vocabulary("gpt2", tmp_path).command_tokens
    with pytest.raises(ValueError, match="not a sentencepiece model: .*vocab.json"):
        official_vocabulary("chinese", tmp_path / "vocab.json", fix_command_token=True).encode("x")


# ------------------------------------------------------------- tiny files


@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "chinese"])
def test_tiny_files_follow_the_official_layout(tmp_path, kind):
    """glm_jax/data/official_vocabs/tiny.py: N entries, the specials where the official
    tokenizers look for them, commands numbered from N, padded to 128."""
    from glm_jax.data.official_vocabs.tiny import write_tiny_files

    files = write_tiny_files(kind, tmp_path, num_tokens=100)
    v = official_vocabulary(
        kind, files["vocab_file"], merges_file=files.get("merges_file"),
        **({"fix_command_token": True} if kind == "chinese" else {}),
    )
    n = v.num_text_tokens
    assert n == 100 if kind != "chinese" else 50 <= n <= 100
    assert v.vocab_size == 128
    ct = v.command_tokens
    expected_sop = {"bert": n, "gpt2": n, "roberta": n, "chinese": n + 6}[kind]
    assert ct.sop == expected_sop and ct.eop == expected_sop + 1
    if kind == "gpt2":
        assert ct.eos == n - 1  # <|endoftext|> is the last entry, as 50256 in the real file
    if kind == "roberta":
        assert (ct.cls, ct.eos, ct.unk, ct.mask) == (0, 2, 3, n - 1)  # <s>, </s>, <unk>, <mask> last
    text = "paris is the [MASK] of france." if kind == "bert" else "Paris is the [MASK] of France."
    ids = v.encode(text)
    assert ct.mask in ids and ct.unk not in ids and v.decode(ids) == text
    with pytest.raises(ValueError, match="needs at least"):
        write_tiny_files(kind if kind != "chinese" else "bert", tmp_path / "small", num_tokens=10)


# ------------------------------------------------ the real files (../shared/vocab)

SHARED_VOCAB = Path(__file__).resolve().parents[2] / "shared" / "vocab"
REAL_FILES = {"bert": "bert_base_uncased", "gpt2": "gpt2"}


@pytest.mark.skipif(not SHARED_VOCAB.is_dir(), reason=f"the real tokenizer files are not at {SHARED_VOCAB}")
@pytest.mark.parametrize("kind", sorted(REAL_FILES))
def test_sentence_objective_runs_on_the_real_official_vocabularies(tmp_path, kind):
    """GLM-Sent / GLM-10B pretrain with these tokenizers: sentence ends come from the
    token text (official contains_sentence_end)."""
    import numpy as np

    from glm_jax.data import pretraining, sources
    from glm_jax.data.feature_converter import GLMFeatureConverter

    vocab = official_vocabulary(kind, SHARED_VOCAB / REAL_FILES[kind])
    mask = vocab.sentence_end_mask()
    assert mask.shape == (vocab.vocab_size,) and mask[vocab.eos_id]
    ids = vocab.encode("The loop ends here. Does it? Yes!")
    ends = [vocab.decode([i]).strip() for i in ids if mask[i]]
    assert ends == [".", "?", "!"], ends
    assert 5 < mask.sum() < 0.05 * mask.size  # punctuation-bearing tokens only (BERT: ~20, GPT-2: more)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(
        f"Document {d} starts here. It says {d} things; the first is short. The last one ends the document!"
        for d in range(20)) + "\n")
    name = f"realvocab_{kind}"
    pretraining.register_pretraining_tasks(name, sources.TextFileSource({"train": str(corpus)}), vocabulary=vocab,
                                        objective_configs={"sentence": pretraining.OBJECTIVES["sentence"]},
                                        overwrite=True)
    task = seqio.get_mixture_or_task(pretraining.task_name("sentence", name))
    ds = GLMFeatureConverter(pack=False, command_tokens=vocab.command_tokens)(
        task.get_dataset({"tokens": 64, "targets": 64}, split="train", shuffle=False, seed=0), {"tokens": 64})
    rows = list(ds.take(4).as_numpy_iterator())
    ct = vocab.command_tokens
    for row in rows:
        tokens, targets, loss = row["tokens"], row["targets"], row["loss_mask"]
        assert (tokens == ct.smask).sum() >= 1  # sentences blanked with [sMASK]
        # Every Part B span (the targets under the loss) ends at a sentence end or with [eop].
        span_last = [targets[i] for i in range(len(loss) - 1) if loss[i] and not loss[i + 1]]
        assert all(mask[t] or t == ct.eop for t in span_last), span_last
    assert np.mean([row["loss_mask"].sum() for row in rows]) > 3


@pytest.mark.skipif(not SHARED_VOCAB.is_dir(), reason=f"the real tokenizer files are not at {SHARED_VOCAB}")
def test_real_vocabularies_equal_the_reference_tokenizers_on_real_text():
    """Issue 15: on 3,000 lines of real English (the embedded corpus' docstrings),
    glm-jax's BERT and GPT-2 encodings equal those of the `tokenizers` library's
    reference implementations built from the same files (BERT: lower-casing, accent
    stripping, wordpiece; GPT-2: byte-level BPE and its pre-tokenisation), and
    decoding gives their text back."""
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

    from glm_jax.data import corpus

    lines = [line.strip() for doc in corpus.extract_documents() for line in doc.text.splitlines() if line.strip()]
    lines = lines[:3000]
    assert len(lines) == 3000

    bert = official_vocabulary("bert", SHARED_VOCAB / "bert_base_uncased")
    bert_ref = BertWordPieceTokenizer(str(SHARED_VOCAB / "bert_base_uncased" / "vocab.txt"), lowercase=True)
    gpt2 = official_vocabulary("gpt2", SHARED_VOCAB / "gpt2")
    gpt2_ref = ByteLevelBPETokenizer(str(SHARED_VOCAB / "gpt2" / "vocab.json"), str(SHARED_VOCAB / "gpt2" / "merges.txt"))
    for line in lines:
        ids = bert.encode(line)
        assert ids == bert_ref.encode(line, add_special_tokens=False).ids, line
        # [UNK] decodes to its text, as the official DecodeIds (the reference skips it by default).
        assert bert.decode(ids) == bert_ref.decode(ids, skip_special_tokens=False), line
        ids = gpt2.encode(line)
        assert ids == gpt2_ref.encode(line).ids, line
        assert gpt2.decode(ids) == line
    # Command tokens written in the text are their ids, between ordinary words.
    ct = bert.command_tokens
    assert bert.encode("[CLS] a [MASK] b") == [ct.cls, *bert.encode("a"), ct.mask, *bert.encode("b")]
    assert bert.encode("[CLS] a [MASK] b") == bert_ref.encode("[CLS] a [MASK] b", add_special_tokens=False).ids
