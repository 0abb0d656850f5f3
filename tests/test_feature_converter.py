"""GLMFeatureConverter (glm_jax/data/feature_converter.py): padding, packing, seqio wiring.

The packing test runs a tiny random GLM on each packed row and on each example
alone: the logits must agree, which holds only if packing kept every example's
position ids, block ids and Part A / Part B pattern.
"""

from __future__ import annotations

import collections
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from glm_jax.command_tokens import CommandTokens
from glm_jax.model import GLM, ModelConfig
from glm_jax.data import objectives, windows
from glm_jax.data.feature_converter import GLMFeatureConverter

CT = CommandTokens(pad=0, eos=1, cls=2, mask=3, sop=4, eop=5, unk=6, smask=7, gmask=8, dblock=9)
VOCAB = 1000
SENTENCE_END = np.isin(np.arange(VOCAB), np.arange(10, VOCAB, 17))
FEATURES = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")
T = 64


def glm_examples(num: int, seed: int = 0, max_len: int = 62) -> list[dict[str, np.ndarray]]:
    """GLM-10B-mixture examples from windows of random length 2..max_len."""
    rng = np.random.default_rng(seed)
    texts = [np.r_[CT.cls, rng.integers(10, VOCAB, rng.integers(1, max_len))].astype(np.int32) for _ in range(num)]
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(texts), [len(t) for t in texts])
    ds = tf.data.Dataset.from_tensor_slices({"targets": ragged})
    with seqio.map_seed_manager(seed):
        ds = objectives.blank_infilling(
            ds, {"tokens": T}, command_tokens=CT, config=objectives.GLM_10B, sentence_end=SENTENCE_END
        )
    return list(ds.as_numpy_iterator())


def as_dataset(examples: list[dict[str, np.ndarray]]) -> tf.data.Dataset:
    signature = {k: tf.TensorSpec([None], tf.int32) for k in FEATURES}
    signature["sep"] = tf.TensorSpec([], tf.int32)
    return tf.data.Dataset.from_generator(
        lambda: ({k: np.array(v) for k, v in ex.items()} for ex in examples), output_signature=signature
    )


@pytest.fixture(scope="module")
def examples():
    return glm_examples(200)


@pytest.fixture(scope="module")
def packed_rows(examples):
    ds = GLMFeatureConverter(pack=True, command_tokens=CT)(as_dataset(examples), {"tokens": T})
    return list(ds.as_numpy_iterator())


def test_unpacked_rows_are_the_examples_padded(examples):
    pad_ct = CommandTokens(**{**CT.__dict__, "pad": 9})  # a non-zero pad id shows up
    ds = GLMFeatureConverter(pack=False, command_tokens=pad_ct)(as_dataset(examples), {"tokens": T})
    rows = list(ds.as_numpy_iterator())
    assert len(rows) == len(examples) and set(rows[0]) == {*FEATURES, "sep"}
    for ex, row in zip(examples, rows):
        n = len(ex["tokens"])
        assert row["sep"] == ex["sep"]
        for k in FEATURES:
            assert row[k].shape == (T,) and row[k].dtype == np.int32
            np.testing.assert_array_equal(row[k][:n], ex[k])
            np.testing.assert_array_equal(row[k][n:], 9 if k == "tokens" else 0)


def test_overlong_examples_are_truncated():
    n, cut = 12, 8
    ex = {k: np.arange(1, n + 1, dtype=np.int32) for k in FEATURES}
    ds = as_dataset([{**ex, "sep": np.int32(10)}])
    row = next(GLMFeatureConverter(pack=False, apply_length_check=False)(ds, {"tokens": cut}).as_numpy_iterator())
    assert row["sep"] == cut
    for k in FEATURES:
        np.testing.assert_array_equal(row[k], np.arange(1, cut + 1))
    (packed,) = GLMFeatureConverter(pack=True, apply_length_check=False)(ds, {"tokens": cut}).as_numpy_iterator()
    assert packed["part_a"].all() and (packed["segment_ids"] == 1).all()


def test_missing_glm_features_name_the_mixture_cause():
    """What a seqio.Mixture of tasks declaring only ``targets`` hands the converter."""
    ds = tf.data.Dataset.from_tensors({"targets": tf.constant([CT.cls, 11, 12], tf.int32)})
    with pytest.raises(ValueError, match=r"lacks the GLM features \['tokens', 'loss_mask', 'position_ids', "
                       r"'block_position_ids', 'sep'\].*seqio.Mixture keeps only"):
        GLMFeatureConverter(command_tokens=CT)(ds, {"tokens": T})


def test_feature_lengths_are_one_number():
    converter = GLMFeatureConverter(pack=True)
    expected = {k: T for k in (*FEATURES, "segment_ids", "part_a")}
    assert converter.get_model_feature_lengths({"tokens": T}) == expected
    with pytest.raises(ValueError, match="length of 'tokens'"):
        converter.get_model_feature_lengths({"tokens": T, "targets": T + 1})
    with pytest.raises(ValueError, match="unknown task feature"):
        converter.get_model_feature_lengths({"tokens": T, "inputs": T})


def _key(example: dict[str, np.ndarray]) -> tuple:
    return (int(example["sep"]), *(example[k].tobytes() for k in FEATURES))


def _segments(row: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The examples of a packed row, asserting that Part A leads each segment."""
    out = []
    for s in range(1, row["segment_ids"].max() + 1):
        where = row["segment_ids"] == s
        part_a = row["part_a"][where]
        sep = int(part_a.sum())
        assert part_a[:sep].all()
        out.append({**{k: row[k][where] for k in FEATURES}, "sep": sep})
    return out


def test_packing_keeps_every_example(examples, packed_rows):
    assert set(packed_rows[0]) == {*FEATURES, "segment_ids", "part_a"}
    unpacked = []
    for row in packed_rows:
        seg = row["segment_ids"]
        used = int((seg > 0).sum())
        assert row["tokens"].shape == (T,) and row["part_a"].dtype == bool
        assert (seg[:used] > 0).all() and not seg[used:].any()  # padding only at the end
        assert seg[0] == 1 and np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
        for k in (*FEATURES, "part_a"):
            assert not row[k][used:].any()
        unpacked += _segments(row)
    assert collections.Counter(map(_key, unpacked)) == collections.Counter(map(_key, examples))
    total = sum(len(ex["tokens"]) for ex in examples)
    fill = total / (len(packed_rows) * T)
    print(f"packing: {len(examples)} examples, {total} tokens, in {len(packed_rows)} rows of {T}: {fill:.1%} full")
    assert fill > 0.9


def test_sequential_packing_is_next_fit(examples):
    converter = GLMFeatureConverter(pack=True, pack_bins=1)
    rows = list(converter(as_dataset(examples), {"tokens": T}).as_numpy_iterator())
    in_order = [ex for row in rows for ex in _segments(row)]
    assert [_key(ex) for ex in in_order] == [_key(ex) for ex in examples]
    for row, following in zip(rows, rows[1:]):  # the next row's first example did not fit
        assert (row["segment_ids"] > 0).sum() + (following["segment_ids"] == 1).sum() > T


def test_packed_logits_equal_each_example_alone(examples, packed_rows):
    config = ModelConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=T,
        embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
    )
    rows = packed_rows[:16]
    packed = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    model = GLM(config)
    # The examples of these rows, as the objective made them (not as read back from
    # the rows, so that a wrong part_a or segment_ids cannot cancel out).
    by_content = {tuple(ex[k].tobytes() for k in FEATURES): ex for ex in examples}
    alone = [
        by_content[tuple(r[k][r["segment_ids"] == s].tobytes() for k in FEATURES)]
        for r in rows
        for s in range(1, r["segment_ids"].max() + 1)
    ]
    # Each example alone, right-padded to T (padding is causal, so it changes nothing).
    single = {k: np.stack([np.pad(a[k], (0, T - len(a[k]))) for a in alone]) for k in FEATURES}
    single["sep"] = np.array([a["sep"] for a in alone], np.int32)
    # Random parameters from numpy: compiling the model's own initialiser costs seconds.
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), **single)["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0.0, 0.2, x.shape).astype(np.float32), shapes)
    apply = jax.jit(functools.partial(model.apply, {"params": params}))
    packed_logits = np.asarray(apply(**packed))
    single_logits = np.asarray(apply(**single))
    i = 0
    worst = 0.0
    for r, row_logits in zip(rows, packed_logits):
        for s in range(1, r["segment_ids"].max() + 1):
            where = r["segment_ids"] == s
            diff = np.abs(row_logits[where] - single_logits[i, : where.sum()]).max()
            worst = max(worst, float(diff))
            i += 1
    print(f"packed vs alone: {i} examples, max |logit difference| {worst:.2e}")
    assert i == len(alone) and worst < 1e-5
    assert np.abs(single_logits).max() > 1e-3  # the comparison is not vacuous


def test_seqio_task_end_to_end():
    name = "glm_test_feature_converter_task"
    rng = np.random.default_rng(3)
    docs = [rng.integers(10, VOCAB, rng.integers(5, 90)).astype(np.int32) for _ in range(60)]

    def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
        ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(docs), [len(d) for d in docs])
        return tf.data.Dataset.from_tensor_slices({"targets": ragged})

    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[
            functools.partial(windows.document_windows, command_tokens=CT),
            functools.partial(
                objectives.blank_infilling, command_tokens=CT, config=objectives.GLM_DOC
            ),
        ],
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(VOCAB), add_eos=False)},
    )
    try:
        def get(seed: int) -> list[dict[str, np.ndarray]]:
            ds = seqio.get_dataset(
                name, {"tokens": T}, GLMFeatureConverter(pack=True, command_tokens=CT),
                dataset_split="train", shuffle=False, num_epochs=1, seed=seed,
            )
            return list(ds.as_numpy_iterator())

        a, b = get(1), get(1)
    finally:
        seqio.TaskRegistry.remove(name)
    assert len(a) > 10 and all(r["tokens"].shape == (T,) and r["segment_ids"].max() >= 1 for r in a)
    for x, y in zip(a, b):  # the same seed gives the same batches
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # Windows of T - 2 tokens: the document objective fills rows to T - 1 or T.
    assert max((r["segment_ids"] > 0).sum() for r in a) >= T - 1
