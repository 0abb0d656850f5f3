"""glm_jax/data/pipeline.py: the training iterator is checkpointable for every kind of source."""

import json

import numpy as np
import pytest

from glm_jax.data import pipeline as data
from glm_jax.checkpointing import SkippingIterator, TfDataIteratorState, as_iterator_state
from glm_jax.data.embedded_vocab import EmbeddedVocabulary


def _rows(iterator, n):
    return [np.asarray(next(iterator)["tokens"]) for _ in range(n)]


def test_embedded_task_keeps_tf_data_state(corpus_dir):
    config = data.DataConfig(task="glm_pretrain_token_embedded", sequence_length=32, shuffle_buffer=16)
    assert isinstance(data.train_batches(config, 2, shard=(0, 1)).inner, TfDataIteratorState)


def test_python_read_source_resumes_by_skipping(tmp_path, corpus_dir):
    """A JSON-lines corpus goes through a Python generator, whose tf.data state cannot be
    saved (it used to fail at the first checkpoint); it must resume exactly by skipping."""
    from glm_jax.data import corpus, pretraining, sources

    path = tmp_path / "docs.jsonl"
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rng.choice(words, 40))}) + "\n")
    pretraining.register_pretraining_tasks(
        "data_test_jsonl", sources.JsonLinesSource({"train": str(path)}),
        EmbeddedVocabulary(corpus_dir), overwrite=True,
    )
    config = data.DataConfig(task="glm_pretrain_token_data_test_jsonl", sequence_length=32, shuffle_buffer=16)

    straight = data.train_batches(config, 2, shard=(0, 1))
    assert isinstance(straight.inner, SkippingIterator)
    expected = _rows(straight, 5)

    first = data.train_batches(config, 2, shard=(0, 1))
    _rows(first, 3)
    state = as_iterator_state(first)
    saved = tmp_path / "state"
    saved.mkdir()
    from etils import epath

    state.save(epath.Path(saved))
    resumed = data.train_batches(config, 2, shard=(0, 1))
    as_iterator_state(resumed).restore(epath.Path(saved))
    for want, got in zip(expected[3:], _rows(resumed, 2)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(AssertionError):  # the stream moves: batch 3 is not batch 0
        np.testing.assert_array_equal(expected[3], expected[0])


@pytest.mark.parametrize("read", ["python", "tf"])
def test_mixture_of_corpora_resumes_exactly(tmp_path, corpus_dir, read):
    """A seqio.Mixture of two corpora through the trainer's iterator: its rows hold the
    GLM features, and a restored iterator continues the stream. Text files are read in
    Python (resume by skipping); in-memory documents stay in tf.data (saved state)."""
    import seqio
    import tensorflow as tf
    from etils import epath
    from test_pretraining import WORDS_A, WORDS_B, write_corpus

    from glm_jax.data import corpus, pretraining, sources

    names = []
    for name, words, seed in (("data_mix_a", WORDS_A, 1), ("data_mix_b", WORDS_B, 2)):
        path = write_corpus(tmp_path / f"{name}.txt", words, seed=seed)
        if read == "python":
            source = sources.TextFileSource({"train": str(path)})
        else:
            docs = path.read_text().splitlines()
            source = seqio.FunctionDataSource(
                lambda split, shuffle_files, seed=None, docs=docs: tf.data.Dataset.from_tensor_slices({"text": docs}),
                splits=["train"],
            )
        names += pretraining.register_pretraining_tasks(
            name, source, EmbeddedVocabulary(corpus_dir),
            objective_configs={"token": pretraining.OBJECTIVES["token"]}, shuffle_buffer_size=32, overwrite=True,
        )
    mixture = f"data_test_mixture_{read}"
    seqio.MixtureRegistry.add(mixture, [(names[0], 1.0), (names[1], 3.0)])
    try:
        config = data.DataConfig(task=mixture, sequence_length=32, pack=True)
        first = data.train_batches(config, 2, shard=(0, 1))
        assert isinstance(first.inner, SkippingIterator if read == "python" else TfDataIteratorState)
        batch = next(first)
        assert set(batch) == {"tokens", "targets", "loss_mask", "position_ids", "block_position_ids",
                              "segment_ids", "part_a"}
        before = [np.asarray(batch["tokens"])] + _rows(first, 2)
        saved = epath.Path(tmp_path / "state")
        saved.mkdir()
        as_iterator_state(first).save(saved)  # after 3 batches
        expected = _rows(first, 3)
        resumed = data.train_batches(config, 2, shard=(0, 1))
        as_iterator_state(resumed).restore(saved)
        for want, got in zip(expected, _rows(resumed, 3)):
            np.testing.assert_array_equal(got, want)
        with pytest.raises(AssertionError):  # a restart from batch 0 would not pass
            np.testing.assert_array_equal(expected[0], before[0])
    finally:
        seqio.MixtureRegistry.remove(mixture)
        for name in names:
            seqio.TaskRegistry.remove(name)


def test_eval_batches_are_one_deterministic_pass(corpus_dir):
    config = data.DataConfig(task="glm_pretrain_token_embedded", sequence_length=32)
    first = [b["tokens"] for b in data.eval_batches(config, 4, shard=(0, 1))]
    second = [b["tokens"] for b in data.eval_batches(config, 4, shard=(0, 1))]
    assert len(first) == len(second) > 1
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_text_length_lets_rows_grow_past_the_text(corpus_dir):
    """data.text_length: windows and Part A hold at most C tokens (positions < C), the
    rows of T > C hold Part B beyond them, as the official rows grow to n + 2k."""
    config = data.DataConfig(task="glm_pretrain_token_embedded", sequence_length=80, text_length=64, shuffle_buffer=16)
    batch = {k: np.asarray(v) for k, v in next(data.train_batches(config, 16, shard=(0, 1))).items()}
    assert batch["tokens"].shape == (16, 80)
    assert batch["position_ids"].max() <= 63
    lengths = (batch["loss_mask"] > 0).sum(1) + batch["sep"]  # Part A + the loss tokens of Part B
    assert (batch["sep"] <= 64).all() and lengths.max() > 64
    assert config.position_range == 64
    with pytest.raises(ValueError, match="data.text_length=96 exceeds data.sequence_length=80"):
        data.DataConfig(sequence_length=80, text_length=96)
