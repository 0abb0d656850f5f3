"""The GLM attention patterns against a brute-force statement of the rule."""

import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax.model import masks


def brute_force(sep: int, t: int) -> np.ndarray:
    """m[q, k] = k < sep or k <= q (spec 2.2)."""
    return np.array([[k < sep or k <= q for k in range(t)] for q in range(t)])


def test_sep_mask_matches_rule():
    seps = np.array([0, 1, 5, 9, 12])
    got = np.asarray(masks.sep_mask(jnp.asarray(seps), 12))
    assert got.shape == (5, 1, 12, 12)
    for b, sep in enumerate(seps):
        np.testing.assert_array_equal(got[b, 0], brute_force(sep, 12))


def test_part_a_never_sees_part_b_and_part_b_sees_all_of_a():
    m = np.asarray(masks.sep_mask(jnp.array([4]), 8))[0, 0]
    assert not m[:4, 4:].any()  # Part A rows, Part B columns
    assert m[4:, :4].all()  # Part B rows see every Part A key
    assert m[:4, :4].all()  # Part A is bidirectional


def test_queries_after_a_cached_prefix_are_the_last_rows():
    full = np.asarray(masks.sep_mask(jnp.array([3, 6]), 10))
    tail = np.asarray(masks.sep_mask(jnp.array([3, 6]), 4, kv_len=10))
    np.testing.assert_array_equal(tail, full[:, :, 6:, :])


def test_segment_mask_is_block_diagonal_of_per_example_masks():
    # Two examples (lengths 5 and 4, seps 2 and 3) packed in a row of 11, 2 pads.
    segment_ids = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
    part_a = jnp.array([[1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]], bool)
    got = np.asarray(masks.segment_mask(segment_ids, part_a))[0, 0]
    want = np.zeros((11, 11), bool)
    want[:5, :5] = brute_force(2, 5)
    want[5:9, 5:9] = brute_force(3, 4)
    want[9:, 9:] = np.tril(np.ones((2, 2), bool))  # padding only sees padding
    np.testing.assert_array_equal(got, want)


def test_part_a_from_segment_sep():
    segment_ids = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]])
    segment_sep = jnp.array([[2, 3], [3, 1]])
    got = np.asarray(masks.part_a_from_segment_sep(segment_ids, segment_sep))
    want = np.array(
        [[1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], bool
    )
    np.testing.assert_array_equal(got, want)


def test_dense_mask_forms_are_normalised():
    m = np.tril(np.ones((2, 6, 6)))
    got = masks.build(6, attention_mask=jnp.asarray(m))
    assert got.shape == (2, 1, 6, 6) and got.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got)[:, 0], m.astype(bool))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"sep": jnp.array([1]), "attention_mask": jnp.ones((1, 4, 4))}, "exactly one"),
        ({"segment_ids": jnp.ones((1, 4), jnp.int32)}, "part_a"),
        ({"attention_mask": jnp.ones((1, 3, 3))}, r"\[batch, 1, 4, 4\]"),
    ],
)
def test_bad_pattern_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        masks.build(4, **kwargs)
