"""Registering the pretraining tasks for a user's corpus, what they produce, and a
``seqio.Mixture`` of them (corpora mixed with rates)."""

import collections
import json
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # noqa: F401  (registers the embedded tasks)
from glm_jax.data import corpus, pretraining, sources
from glm_jax.data.feature_converter import GLMFeatureConverter
from glm_jax.data.embedded_vocab import EmbeddedVocabulary

OBJECTIVES = ("token", "sentence", "document", "multitask", "doc", "sent")
FEATURES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")
# Two corpora with disjoint words, each word one piece of the embedded vocabulary, so
# every example's window says which corpus it came from.
WORDS_A = "the of and to in is a list".split()
WORDS_B = "return value function data file name object type".split()


def write_corpus(path, words, num_docs: int = 40, seed: int = 0):
    """``num_docs`` lines of 2-5 sentences of 2-6 of ``words``, each ending with '.'."""
    rng = np.random.default_rng(seed)

    def sentence():
        return " ".join(rng.choice(words, rng.integers(2, 7))) + "."

    lines = (" ".join(sentence() for _ in range(rng.integers(2, 6))) for _ in range(num_docs))
    path.write_text("".join(line + "\n" for line in lines))
    return path


def unpad(row, pad_id: int) -> dict:
    """The example in a padded row (``GLMFeatureConverter(pack=False)``); asserts the padding."""
    sep = int(row["sep"])
    n = sep + int(row["loss_mask"].sum())  # Part B is the loss region, right after Part A
    assert (row["tokens"][n:] == pad_id).all()
    for k in FEATURES[1:]:
        assert not row[k][n:].any()
    return {**{k: row[k][:n] for k in FEATURES}, "sep": sep}


def unpack(row, pad_id: int) -> list[dict]:
    """The examples of a packed row; asserts each is contiguous, led by its Part A."""
    seg = row["segment_ids"]
    assert (row["tokens"][seg == 0] == pad_id).all()
    out = []
    for s in range(1, seg.max() + 1):
        where = np.flatnonzero(seg == s)
        assert (np.diff(where) == 1).all()
        part_a = row["part_a"][where]
        sep = int(part_a.sum())
        assert part_a[:sep].all()
        out.append({**{k: row[k][where] for k in FEATURES}, "sep": sep})
    return out


def window_of(example, ct) -> np.ndarray:
    """The window a GLM example was made from, inverting its layout (spec 2.2, 2.3;
    glm_jax/data/example_layout.py) and asserting it on the way. ``example``: unpadded features.

    An example may have no blank (Part A only): the documented case of a window of
    tiny documents whose spans did not fit (glm_jax/data/spans.py)."""
    tokens, targets, loss, pos, block = (np.asarray(example[k]) for k in FEATURES)
    sep, n = int(example["sep"]), len(tokens)
    masks = set(ct.mask_ids())
    # Part A: the text with a mask per span, read in place, no loss.
    assert tokens[0] == ct.cls
    assert (targets[:sep] == tokens[:sep]).all() and (pos[:sep] == np.arange(sep)).all()
    assert not block[:sep].any() and not loss[:sep].any() and loss[sep:].all()
    # Part B: spans opened by [sop], each at its mask's position with block ids 1, 2, ...
    starts = np.flatnonzero(tokens[sep:] == ct.sop) + sep
    assert starts[:1].tolist() == ([sep] if n > sep else [])
    spans = {}
    for a, b in zip(starts, [*starts[1:], n]):
        p = int(pos[a])
        assert (pos[a:b] == p).all() and (block[a:b] == np.arange(1, b - a + 1)).all()
        assert p < sep and tokens[p] in masks and p not in spans
        # Inputs are [sop] + the targets shifted right, up to [dBLOCK] corruption.
        assert ((tokens[a + 1 : b] == targets[a : b - 1]) | (tokens[a + 1 : b] == ct.dblock)).all()
        if targets[b - 1] == ct.eop:
            spans[p] = targets[a : b - 1]
        else:  # suffix generation: one span, after the last Part A token, no [eop]
            assert len(starts) == 1 and p == sep - 1
            spans[p] = targets[a:b]
    assert sorted(spans) == [i for i in range(sep) if tokens[i] in masks]
    window = np.concatenate([spans.get(i, tokens[i : i + 1]) for i in range(sep)])
    commands = {*ct.mask_ids(), ct.sop, ct.eop, ct.dblock, ct.pad} - {ct.cls, ct.eos}  # pad may be eos
    assert not commands & set(window.tolist()), "a command token in the text"
    return window


def test_embedded_tasks_are_registered():
    names = set(seqio.TaskRegistry.names())
    assert {pretraining.task_name(o, "embedded") for o in OBJECTIVES} <= names


@pytest.fixture
def user_tasks(tmp_path, corpus_dir):
    docs = [json.loads(line)["text"] for line in (corpus_dir / "train.jsonl").read_text().splitlines()[:40]]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    names = pretraining.register_pretraining_tasks(
        "mine", sources.JsonLinesSource({"train": str(path)}), EmbeddedVocabulary(corpus_dir)
    )
    yield names
    for name in names:
        seqio.TaskRegistry.remove(name)


def test_one_call_registers_every_objective_for_a_source(user_tasks):
    assert user_tasks == [pretraining.task_name(o, "mine") for o in OBJECTIVES]


@pytest.mark.parametrize("objective", ["token", "multitask"])
def test_user_task_yields_model_features(user_tasks, objective, corpus_dir):
    vocab = EmbeddedVocabulary(corpus_dir)
    task = seqio.get_mixture_or_task(pretraining.task_name(objective, "mine"))
    ds = task.get_dataset({"tokens": 64, "targets": 64}, split="train", shuffle=False, seed=3)
    rows = list(GLMFeatureConverter(command_tokens=vocab.command_tokens)(ds, {"tokens": 64}).take(20).as_numpy_iterator())
    assert len(rows) == 20
    ct = vocab.command_tokens
    for row in rows:
        assert row["tokens"].shape == (64,) and row["loss_mask"].sum() > 0
        assert len(window_of(unpad(row, ct.pad), ct)) <= 62  # windows of T - 2 tokens
    # The same seed gives the same examples.
    again = list(GLMFeatureConverter(command_tokens=vocab.command_tokens)(
        task.get_dataset({"tokens": 64, "targets": 64}, split="train", shuffle=False, seed=3), {"tokens": 64}
    ).take(20).as_numpy_iterator())
    for a, b in zip(rows, again):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_output_features_are_what_the_converter_takes(corpus_dir):
    """Every GLM feature is declared (a seqio.Mixture keeps only declared ones), with the
    dtype and rank GLMFeatureConverter expects, and none gets an eos."""
    vocab = EmbeddedVocabulary(corpus_dir)
    features = pretraining.output_features(vocab)
    expected = GLMFeatureConverter.TASK_FEATURES
    assert set(features) == set(expected)
    for name, feature in features.items():
        assert (feature.dtype, feature.rank) == (expected[name].dtype, expected[name].rank), name
        assert not feature.add_eos and feature.required
    assert features["tokens"].vocabulary == features["targets"].vocabulary == vocab
    with pytest.raises(ValueError, match="shuffle_buffer_size"):
        pretraining.register_pretraining_tasks("bad_buffer", sources.EmbeddedCorpusSource(), shuffle_buffer_size=0)


def test_a_bare_file_pattern_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"\{'train': 'wiki-\*.jsonl'\}"):
        sources.JsonLinesSource("wiki-*.jsonl")


def test_bad_source_name():
    with pytest.raises(ValueError, match="source_name"):
        pretraining.register_pretraining_tasks("my-corpus", sources.EmbeddedCorpusSource())


# --------------------------------------------------------------------- mixtures

MIXTURE = "glm_test_mixture_a1_b3"
T = 32


@pytest.fixture(scope="module")
def mixed_stream(tmp_path_factory, corpus_dir):
    """``MIXTURE``, the GLM-10B objective over corpus A (rate 1) and corpus B (rate 3),
    two text files, read through ``GLMFeatureConverter``: yields the vocabulary, a
    function naming an example's corpus, and the first 400 examples (unpadded).
    Windows of 14 tokens, so that two examples fit a row of T = 32."""
    tmp = tmp_path_factory.mktemp("mixture")
    vocab = EmbeddedVocabulary(corpus_dir)
    ct = vocab.command_tokens
    names = []
    for name, words, seed in (("mix_a", WORDS_A, 1), ("mix_b", WORDS_B, 2)):
        source = sources.TextFileSource({"train": str(write_corpus(tmp / f"{name}.txt", words, seed=seed))})
        names += pretraining.register_pretraining_tasks(
            name, source, vocab, objective_configs={"multitask": pretraining.OBJECTIVES["multitask"]},
            window_length=14, shuffle_buffer_size=64, overwrite=True,
        )
    seqio.MixtureRegistry.add(MIXTURE, [(names[0], 1.0), (names[1], 3.0)])
    try:
        ids = {name: {i for w in words for i in vocab.encode(w)} for name, words in (("A", WORDS_A), ("B", WORDS_B))}
        assert not ids["A"] & ids["B"] and max(map(len, ids.values())) == len(WORDS_A)  # one piece per word
        neutral = {ct.cls, ct.eos, *vocab.encode(".")}

        def corpus_of(example) -> str:
            words = set(window_of(example, ct).tolist()) - neutral
            (name,) = [name for name, known in ids.items() if words and words <= known] or [None]
            assert name is not None, f"a window of neither corpus alone: {sorted(words)}"
            return name

        # What failed before the GLM features were declared: the mixture kept only
        # `targets`, and the converter found no `tokens`.
        rows = seqio.get_dataset(
            MIXTURE, {"tokens": T}, GLMFeatureConverter(command_tokens=ct),
            dataset_split="train", shuffle=True, seed=0, num_epochs=None,
        )
        yield vocab, corpus_of, [unpad(row, ct.pad) for row in rows.take(400).as_numpy_iterator()]
    finally:
        seqio.MixtureRegistry.remove(MIXTURE)
        for name in names:
            seqio.TaskRegistry.remove(name)


def test_mixture_of_two_corpora_follows_its_rates(mixed_stream):
    """Every example is a valid GLM example of one corpus; A's share is 1/4."""
    _, corpus_of, examples = mixed_stream
    n = len(examples)
    counts = collections.Counter(map(corpus_of, examples))
    # The count from A is Binomial(n, 1/4): mean 100, sd 8.7; allow 4 sd (a wrong rate,
    # e.g. 1:1 or 3:1, is 11 sd or more away).
    mean, sd = n / 4, math.sqrt(n * 0.25 * 0.75)
    print(f"mixture 1:3 over {n} examples: {dict(counts)}")
    assert sum(counts.values()) == n and abs(counts["A"] - mean) < 4 * sd
    # Windows of 14 tokens: a few hold tiny documents that no token span fits.
    assert sum(ex["loss_mask"].sum() == 0 for ex in examples) < n / 50


def test_mixture_examples_pack(mixed_stream):
    """Packing a mixed stream keeps every example intact, and rows mix the corpora."""
    vocab, corpus_of, examples = mixed_stream
    examples = examples[:120]
    signature = {**{k: tf.TensorSpec([None], tf.int32) for k in FEATURES}, "sep": tf.TensorSpec([], tf.int32)}
    ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
    converter = GLMFeatureConverter(pack=True, command_tokens=vocab.command_tokens)
    rows = list(converter(ds, {"tokens": T}).as_numpy_iterator())
    packed = [unpack(row, vocab.command_tokens.pad) for row in rows]

    def key(ex):
        return (int(ex["sep"]), *(np.asarray(ex[k]).tobytes() for k in FEATURES))

    assert collections.Counter(key(ex) for row in packed for ex in row) == collections.Counter(map(key, examples))
    origins = [{corpus_of(ex) for ex in row} for row in packed]
    print(f"packing: {len(examples)} mixed examples in {len(rows)} rows, {origins.count({'A', 'B'})} hold both corpora")
    assert len(rows) < 0.7 * len(examples) and origins.count({"A", "B"}) > 0
