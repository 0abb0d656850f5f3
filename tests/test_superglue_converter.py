"""Every registered cloze task end to end through ``cloze_batches``: shapes, dtypes,
rows equal to ``encode_example``'s, padding, shuffling and per-host sharding."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from glm_jax.data import corpus
from glm_jax.data.superglue import patterns, readers, registry
from glm_jax.data.superglue.converter import ClozeFeatureConverter, cloze_batches
from glm_jax.data.superglue.inputs import encode_example
from glm_jax.data.embedded_vocab import EmbeddedVocabulary
from test_superglue_inputs import DATA, write
from test_superglue_sources import fake_as_dataset

PREFIX = "convtest"
VARIANTS = [(t, None) for t in patterns.TASK_PATTERNS] + [
    (t, p) for t, spec in patterns.TASK_PATTERNS.items() for p in spec.pattern_ids]
MULTI_KEYS = ("tokens", "position_ids", "block_position_ids", "targets", "loss_mask")


@pytest.fixture(scope="module")
def vocab(corpus_dir):
    return EmbeddedVocabulary(corpus_dir)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, vocab) -> Iterator[list[str]]:
    root = tmp_path_factory.mktemp("superglue")
    for task, records in DATA.items():
        for split in readers.SPLIT_FILES:
            write(root, task, split, records)
    # RTE with 7 training examples, for batching, shuffling and sharding.
    write(root, "RTE", "train", [{**DATA["RTE"][0], "idx": i, "premise": f"It rained {i} times."} for i in range(7)])
    names = registry.register_superglue_tasks(vocabulary=vocab, data_dir=str(root), prefix=PREFIX)
    yield names
    registry.unregister(names)


def _name(task: str, pattern_id) -> str:
    return registry.task_name(task, pattern_id, PREFIX)


def _check_batches(name: str, split: str, batches: list[dict[str, np.ndarray]], vocab, batch_size: int,
                   num_choices=None) -> None:
    """Rows equal encode_example's, in order; padding rows and candidates as documented."""
    info = registry.task_info(name)
    examples = info.examples(split)
    assert len(batches) == -(-len(examples) // batch_size)
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    pad = vocab.command_tokens.pad
    L = info.max_seq_length
    for b in batches:
        assert all(v.dtype == np.int32 and v.shape[0] == batch_size for v in b.values())
    for i in range(len(rows["example_id"])):
        row = {k: v[i] for k, v in rows.items()}
        if i >= len(examples):  # padding row
            assert row["example_id"] == -1 and row["label"] == -1
            assert (row["tokens"] == pad).all() and not row["position_ids"].any()
            if info.multi_token:
                assert not row["choice_mask"].any() and not row["loss_mask"].any()
            else:
                np.testing.assert_array_equal(row["choice_ids"], info.verbalizer_ids())
            continue
        ex = examples[i]
        want = encode_example(info.task, ex, vocab, pattern_id=info.pattern_id, max_seq_length=L)
        assert row["example_id"] == i and row["label"] == registry.batch_label(info.task, ex)
        if not info.multi_token:
            assert set(row) == {"tokens", "position_ids", "block_position_ids", "sep", "mask_position",
                                "choice_ids", "label", "example_id"}
            for key in ("tokens", "position_ids", "block_position_ids", "sep", "mask_position", "choice_ids"):
                np.testing.assert_array_equal(row[key], want[key], err_msg=f"{name} {ex.guid} {key}")
            continue
        c = len(ex.candidates)
        total = num_choices or info.max_candidates(split)
        assert row["tokens"].shape == (total, L) and row["choice_mask"].tolist() == [1] * c + [0] * (total - c)
        for key in (*MULTI_KEYS, "sep", "mask_position", "answer_lengths"):
            np.testing.assert_array_equal(row[key][:c], want[key], err_msg=f"{name} {ex.guid} {key}")
            fill = pad if key == "tokens" else 0
            assert (row[key][c:] == fill).all(), (name, key)


@pytest.mark.parametrize("task,pattern_id", VARIANTS)
def test_every_registered_task_end_to_end(registered, vocab, task: str, pattern_id):
    name = _name(task, pattern_id)
    assert name in registered
    batches = list(cloze_batches(name, "validation", batch_size=2, shuffle=False))
    _check_batches(name, "validation", batches, vocab, 2)


@pytest.mark.parametrize("task", ["COPA", "WSC", "ReCoRD", "RTE"])
def test_train_split(registered, vocab, task: str):
    # COPA train is mirrored (2 examples), WSC keeps positives (label 0: candidate 0),
    # ReCoRD has one example per gold answer (label 0).
    name = _name(task, None)
    batches = list(cloze_batches(name, "train", batch_size=3, shuffle=False))
    _check_batches(name, "train", batches, vocab, 3)
    labels = np.concatenate([b["label"] for b in batches])
    expect = {"COPA": [0, 1, -1], "WSC": [0, -1, -1], "ReCoRD": [0, -1, -1], "RTE": [0] * 7 + [-1, -1]}[task]
    assert labels.tolist() == expect


def test_padding_candidates(registered, vocab):
    name = _name("COPA", None)
    (batch,) = cloze_batches(name, "validation", batch_size=1, shuffle=False, num_choices=3)
    assert batch["tokens"].shape == (1, 3, 256) and batch["choice_mask"].tolist() == [[1, 1, 0]]
    assert batch["sep"][0, 2] == 0 and batch["answer_lengths"][0].tolist()[2] == 0
    _check_batches(name, "validation", [batch], vocab, 1, num_choices=3)
    with pytest.raises(ValueError, match=r"convtest_copa validation: example validation-0 has 2 candidates, "
                                         r"more than num_choices=1"):
        next(cloze_batches(name, "validation", batch_size=1, shuffle=False, num_choices=1))


def test_converter_checks_candidates_in_tf(registered):
    # The converter alone (as seqio.Evaluator runs it) guards C too.
    name = _name("COPA", None)
    converter = ClozeFeatureConverter(registry.task_info(name), num_choices=1)
    ds = seqio.get_mixture_or_task(name).get_dataset(split="validation", shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)convtest_copa: example.*validation-0.*has.*2"):
        list(converter(ds, converter.task_feature_lengths()).as_numpy_iterator())
    with pytest.raises(ValueError, match="multi-token tasks need num_choices >= 1"):
        ClozeFeatureConverter(registry.task_info(name))


def _ids(batches) -> list[list[int]]:
    return [b["example_id"].tolist() for b in batches]


def test_shuffle_is_seeded_per_call(registered):
    name = _name("RTE", None)
    first = _ids(cloze_batches(name, "train", batch_size=3, shuffle=True, seed=5))
    assert first == _ids(cloze_batches(name, "train", batch_size=3, shuffle=True, seed=5))
    assert first != _ids(cloze_batches(name, "train", batch_size=3, shuffle=True, seed=6))
    flat = [i for ids in first for i in ids]
    assert sorted(flat) == [-1, -1] + list(range(7)) and flat[-2:] == [-1, -1]
    dropped = _ids(cloze_batches(name, "train", batch_size=3, shuffle=True, seed=5, drop_remainder=True))
    assert dropped == first[:2]


@pytest.mark.parametrize("drop_remainder,per_host", [(False, 2), (True, 1)])
def test_shards_are_disjoint_and_equal_in_batches(registered, drop_remainder: bool, per_host: int):
    # 7 examples over 3 hosts (3, 2, 2 each), batches of 2: every host yields the same
    # number of batches, ceil(ceil(7/3)/2) = 2 (padded) or floor(floor(7/3)/2) = 1.
    name = _name("RTE", None)
    hosts = [_ids(cloze_batches(name, "train", batch_size=2, shuffle=True, seed=1, drop_remainder=drop_remainder,
                                shard=seqio.ShardInfo(i, 3))) for i in range(3)]
    assert [len(h) for h in hosts] == [per_host] * 3
    real = [i for h in hosts for ids in h for i in ids if i >= 0]
    assert len(real) == len(set(real))
    if not drop_remainder:
        assert sorted(real) == list(range(7))
        assert hosts[1][1] == [-1, -1]  # host 1 has 2 examples: its 2nd batch is padding only


def test_encoding_errors_name_the_example(tmp_path: Path, vocab):
    write(tmp_path, "MultiRC", "validation", DATA["MultiRC"])
    names = registry.register_superglue_tasks(vocabulary=vocab, data_dir=str(tmp_path), prefix="convshort",
                                              tasks=["MultiRC"], pattern_ids=[], max_seq_length=6)
    try:
        # One plain line (the pipeline released first): no TensorFlow wrapping around the reason.
        with pytest.raises(ValueError, match=r"^MultiRC example validation-0-q0-a0: .* exceed max_seq_length 6"):
            list(cloze_batches(names[0], "validation", batch_size=2, shuffle=False))
    finally:
        registry.unregister(names)


def test_tfds_source_end_to_end(tmp_path: Path, vocab):
    names = registry.register_superglue_tasks(vocabulary=vocab, tfds_data_dir=str(tmp_path), prefix="convtfds",
                                              tasks=["RTE", "ReCoRD"], pattern_ids=[])
    try:
        with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
            for name in names:
                batches = list(cloze_batches(name, "validation", batch_size=2, shuffle=False))
                _check_batches(name, "validation", batches, vocab, 2)
        assert batches[0]["label"].tolist() == [0, -1]  # ReCoRD: "Obama" is candidate 0
    finally:
        registry.unregister(names)
