"""Attention backends against the dense reference, and the tile skipping.

The reference is ``attention.xla_attention`` on the mask of glm_jax/model/masks.py
(itself checked against a brute-force rule in tests/test_masks.py and against the
official PyTorch GLM in tests/test_convert.py). Kernel-level checks run on one
compiled function per (backend, dtype) that returns the output and the q/k/v
gradients for a fixed cotangent; sep rows and packed rows share its shapes.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import sharding
from glm_jax.model import GLM, ModelConfig, attention, masks
from glm_jax.model import glm as glm_module
from glm_jax.model.kernels import blocks, blockwise, pallas_gpu, pallas_tpu

B, T, H, D = 4, 40, 2, 8  # T = 40 is not a multiple of the tiles: the kernels pad
BLOCK_Q, BLOCK_KV = 8, 16
SEPS = np.array([0, 1, 17, 40], np.int32)  # pure causal, one token, mid-tile, all Part A
# Packed rows: (segment lengths, Part A lengths); the rest of the row is padding (id 0).
PACKED = [((15, 20), (6, 0)), ((40,), (40,)), ((8, 8, 21), (8, 3, 10)), ((39,), (0,))]


@functools.lru_cache(maxsize=None)
def sep_inputs():
    seg, part_a = blocks.sep_metadata(jnp.asarray(SEPS), T)
    return seg, part_a, masks.sep_mask(jnp.asarray(SEPS), T)


@functools.lru_cache(maxsize=None)
def packed_inputs():
    seg = np.zeros((B, T), np.int32)
    seg_sep = np.zeros((B, 3), np.int32)
    for b, (lengths, seps) in enumerate(PACKED):
        seg[b, :sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
        seg_sep[b, :len(seps)] = seps
    part_a = masks.part_a_from_segment_sep(jnp.asarray(seg), jnp.asarray(seg_sep))
    return jnp.asarray(seg), part_a, masks.segment_mask(jnp.asarray(seg), part_a)


PATTERNS = {"sep": sep_inputs, "packed": packed_inputs}


def qkv(dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, cot = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(4))
    k = k / np.sqrt(D)  # the model hands the backends K already scaled
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v, cot))


def with_grads(fn):
    """jit(q, k, v, cot, *pattern) -> (out, dq, dk, dv)."""

    def run(q, k, v, cot, *pattern):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, *pattern), q, k, v)
        return (out, *vjp(cot))

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def compiled(backend: str):
    if backend == "xla":
        return with_grads(lambda q, k, v, seg, pa, mask: attention.xla_attention(q, k, v, mask))
    if backend == "dot_product_attention":
        return with_grads(lambda q, k, v, seg, pa, mask: attention.dot_product_attention(q, k, v, mask))
    if backend == "blockwise":
        return with_grads(lambda q, k, v, seg, pa, mask: blockwise.blockwise_attention(
            q, k, v, seg, pa, block_q=BLOCK_Q, block_kv=BLOCK_KV))
    if backend == "pallas_tpu":  # the Mosaic kernel in the interpreter, small tiles allowed there
        return with_grads(lambda q, k, v, seg, pa, mask: pallas_tpu.pallas_tpu_attention(
            q, k, v, seg, pa, block_q=BLOCK_Q, block_kv=BLOCK_KV, interpret=True))
    # The Triton kernel compiled for real on a GPU (benchmarks/gpu_check.sh), interpreted elsewhere.
    on_gpu = jax.default_backend() == "gpu"
    return with_grads(lambda q, k, v, seg, pa, mask: pallas_gpu.pallas_attention(
        q, k, v, seg, pa, block_q=BLOCK_Q, block_kv=BLOCK_KV, interpret=not on_gpu))


TOLERANCE = {jnp.float32: dict(atol=2e-5, rtol=1e-5), jnp.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pattern", ["sep", "packed"])
@pytest.mark.parametrize("backend", ["dot_product_attention", "blockwise", "pallas", "pallas_tpu"])
def test_backend_equals_reference_with_gradients(backend, pattern, dtype):
    q, k, v, cot = qkv(dtype)
    seg, pa, mask = PATTERNS[pattern]()
    want = compiled("xla")(q, k, v, cot, seg, pa, mask)
    got = compiled(backend)(q, k, v, cot, seg, pa, mask)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and g.shape == (B, T, H, D), name
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   err_msg=f"{backend} {pattern} {name}", **TOLERANCE[dtype])
    assert np.abs(np.asarray(want[1], np.float32)).max() > 0.1  # the gradients are not trivially zero


def test_dot_product_attention_takes_a_dense_mask():
    q, k, v, cot = qkv(jnp.float32, seed=1)
    rng = np.random.default_rng(1)
    mask = rng.random((B, 1, T, T)) < 0.3
    mask |= np.eye(T, dtype=bool)  # every query sees something
    got = compiled("dot_product_attention")(q, k, v, cot, None, None, jnp.asarray(mask))
    want = compiled("xla")(q, k, v, cot, None, None, jnp.asarray(mask))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["blockwise", "pallas"])
def test_block_backends_refuse_a_dense_mask(backend):
    with pytest.raises(ValueError, match=f"attention_backend='{backend}'.*attention_mask"):
        attention.make_pattern(backend, 8, attention_mask=jnp.ones((1, 8, 8)))
    with pytest.raises(ValueError, match="exactly one"):
        attention.make_pattern(backend, 8, sep=jnp.array([1]), segment_ids=jnp.ones((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="part_a"):
        attention.make_pattern(backend, 8, segment_ids=jnp.ones((1, 8), jnp.int32))


# --- tile classification and skipping -------------------------------------------------

def random_packed(rng, batch, length):
    """Random packed rows: 1-4 contiguous segments with random Part A lengths, then
    padding (id 0). Returns segment_ids, part_a and the brute-force dense mask."""
    seg = np.zeros((batch, length), np.int32)
    part_a = np.zeros((batch, length), bool)
    for b in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), rng.integers(0, 4), replace=False))
        end = rng.integers(cuts[-1] + 1 if len(cuts) else 1, length + 1)
        bounds = [0, *cuts, end]
        for s in range(len(bounds) - 1):
            seg[b, bounds[s]:bounds[s + 1]] = s + 1
            part_a[b, bounds[s]:bounds[s] + rng.integers(0, bounds[s + 1] - bounds[s] + 1)] = True
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    dense = (seg[:, :, None] == seg[:, None, :]) & ((j <= i)[None] | part_a[:, None, :])
    return seg, part_a, dense


def test_classification_is_sound_for_packed_rows():
    rng = np.random.default_rng(0)
    seg, part_a, dense = random_packed(rng, 64, 64)
    classify = jax.jit(blocks.classify, static_argnums=(2, 3))
    for bq, bk in [(8, 8), (16, 8), (8, 32)]:
        got = np.asarray(classify(jnp.asarray(seg), jnp.asarray(part_a), bq, bk))
        exact = blocks.classify_dense(dense, bq, bk)
        # A tile called MASKED or FULL really is; PARTIAL is always safe.
        np.testing.assert_array_equal(exact[got == blocks.MASKED], blocks.MASKED)
        np.testing.assert_array_equal(exact[got == blocks.FULL], blocks.FULL)
        # and the summaries miss few skippable tiles (padding renumbered: none here).
        assert (got == blocks.MASKED).sum() >= 0.95 * (exact == blocks.MASKED).sum()
        assert (exact == blocks.MASKED).sum() > 0


def test_classification_is_exact_for_sep_rows():
    seps = np.arange(0, 65, 3)
    seg, part_a = np.ones((len(seps), 64), np.int32), np.arange(64)[None] < seps[:, None]
    i, j = np.arange(64)[:, None], np.arange(64)[None, :]
    dense = (j <= i)[None] | (j < seps[:, None, None])  # spec 2.2
    classify = jax.jit(blocks.classify, static_argnums=(2, 3))
    for bq, bk in [(8, 8), (16, 8), (8, 32)]:
        np.testing.assert_array_equal(classify(seg, part_a, bq, bk), blocks.classify_dense(dense, bq, bk))


def test_blockwise_visits_only_unmasked_tiles():
    # T = 64 in 16-tiles: causal (sep 0) needs 10 of 16 tiles, sep 24 needs 11 (key
    # tiles 0-1 for every query tile, then the causal staircase), sep 64 all 16.
    q, k, v, _ = (x[:3, :32] for x in qkv(jnp.float32))
    q, k, v = (jnp.concatenate([x, x], axis=1) for x in (q, k, v))  # [3, 64, H, D]
    seg, part_a = blocks.sep_metadata(jnp.array([0, 24, 64]), 64)
    out, stats = jax.jit(functools.partial(blockwise.blockwise_attention_with_stats, block_q=16, block_kv=16))(
        q, k, v, seg, part_a)
    assert int(stats["visited"]) == 10 + 11 + 16 and stats["total"] == 3 * 16
    counts = (np.asarray(stats["classes"]) != blocks.MASKED).sum(axis=(1, 2))
    np.testing.assert_array_equal(counts, [10, 11, 16])
    np.testing.assert_allclose(out, attention.xla_attention(q, k, v, masks.sep_mask(jnp.array([0, 24, 64]), 64)),
                               atol=2e-5)


def test_kv_ranges_cover_every_visible_tile():
    seg, part_a, _ = random_packed(np.random.default_rng(1), 16, 48)
    classes = jax.jit(blocks.classify, static_argnums=(2, 3))(jnp.asarray(seg), jnp.asarray(part_a), 8, 8)
    lo, hi = blocks.kv_ranges(classes)
    idx = np.arange(classes.shape[-1])
    inside = (idx >= np.asarray(lo)[..., None]) & (idx < np.asarray(hi)[..., None])
    assert not np.any((np.asarray(classes) != blocks.MASKED) & ~inside)
    assert np.any(~inside)  # and the ranges do leave tiles out


# --- attention dropout in the blockwise kernel -----------------------------------------

def test_blockwise_dropout_equals_dense_dropout_with_the_same_keep_mask():
    q, k, v, cot = qkv(jnp.float32, seed=2)
    seg, pa, mask = packed_inputs()
    rate, rng = 0.25, jax.random.PRNGKey(7)
    keep = blockwise.dropout_keep_mask(rng, B, H, T, BLOCK_Q, BLOCK_KV, rate)
    assert 0.7 < float(keep.mean()) < 0.8

    def dense(q, k, v):
        scores = jnp.where(mask, jnp.einsum("bqhd,bkhd->bhqk", q, k), attention.MASK_VALUE)
        probs = jnp.where(keep, jax.nn.softmax(scores, -1) / (1 - rate), 0.0)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    def kernel(q, k, v):
        return blockwise.blockwise_attention(q, k, v, seg, pa, block_q=BLOCK_Q, block_kv=BLOCK_KV,
                                             dropout_rate=rate, dropout_rng=rng)

    want = with_grads(lambda q, k, v: dense(q, k, v))(q, k, v, cot)
    got = with_grads(kernel)(q, k, v, cot)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_reference_gradient_equals_autodiff_of_the_plain_expression(rate):
    # xla_attention's backward is written out (it keeps only the probabilities); it
    # must equal autodiff of the expression it replaced, dropout included. Packed
    # rows, and one query row that sees no key (a dense mask may say so): there the
    # probabilities are uniform, not 0, and only the mask stops the scores' gradient.
    q, k, v, cot = qkv(jnp.float32, seed=3)
    _, _, mask = packed_inputs()
    mask = mask.at[2, 0, 17, :].set(False)
    keep = attention.dropout_keep(jax.random.PRNGKey(5), rate, q, k) if rate else None

    def plain(q, k, v):
        probs = jax.nn.softmax(jnp.where(mask, jnp.einsum("bqhd,bkhd->bhqk", q, k), attention.MASK_VALUE), -1)
        if keep is not None:
            probs = jnp.where(keep, probs / (1 - rate), 0.0)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    got = with_grads(lambda q, k, v: attention.xla_attention(q, k, v, mask, keep, rate))(q, k, v, cot)
    want = with_grads(plain)(q, k, v, cot)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)
    assert float(jnp.abs(got[1]).max()) > 1e-3  # the key gradient is not trivially zero


# --- the whole model -----------------------------------------------------------------

TINY = ModelConfig(
    vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0, attention_block_size=8,
)
MB, MT = 4, 24
# Packed rows, one of which holds a single example with no Part A (sep 0) and one a
# single all-Part-A example (sep T): the sep cases ride in the same compiled call.
MODEL_SEGMENTS = np.array([np.repeat([1, 2, 0], [10, 11, 3]), np.repeat([1, 2, 3], [4, 12, 8]),
                           np.ones(MT, int), np.ones(MT, int)], np.int32)
MODEL_SEGMENT_SEPS = np.array([[4, 0, 0], [4, 5, 2], [0, 0, 0], [MT, 0, 0]], np.int32)


def model_batch(seed=0):
    rng = np.random.default_rng(seed)
    part_a = masks.part_a_from_segment_sep(jnp.asarray(MODEL_SEGMENTS), jnp.asarray(MODEL_SEGMENT_SEPS))
    return dict(tokens=rng.integers(0, TINY.vocab_size, (MB, MT)).astype(np.int32),
                position_ids=np.tile(np.arange(MT), (MB, 1)).astype(np.int32),
                block_position_ids=np.zeros((MB, MT), np.int32),
                segment_ids=MODEL_SEGMENTS, part_a=np.asarray(part_a))


def sep_batch():
    batch = {k: v for k, v in model_batch().items() if k not in ("segment_ids", "part_a")}
    return dict(batch, sep=np.array([0, 5, 13, MT], np.int32))


@pytest.fixture(scope="module")
def model_params():
    batch = sep_batch()
    return nn.unbox(jax.jit(lambda r: GLM(TINY).init(r, **batch)["params"])(jax.random.PRNGKey(0)))


@functools.lru_cache(maxsize=None)
def model_loss_and_grad(config: ModelConfig):
    def loss(params, batch):
        logits = GLM(config).apply({"params": params}, **batch)
        return jnp.mean(logits ** 2), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.lru_cache(maxsize=None)
def model_forward(config: ModelConfig):
    return jax.jit(lambda params, batch: GLM(config).apply({"params": params}, **batch))


def assert_trees_close(got, want, **tolerance):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tolerance), got, want)


@pytest.mark.parametrize("backend", ["dot_product_attention", "blockwise", "pallas"])
def test_glm_forward_and_gradients_equal_reference(model_params, backend):
    batch = model_batch()
    (ref_loss, ref_logits), ref_grads = model_loss_and_grad(TINY)(model_params, batch)
    if backend == "blockwise":  # also through nn.scan and nn.remat, the training setup
        config = TINY.replace(attention_backend=backend, scan_layers=True, remat_policy="full")
        (loss, logits), grads = model_loss_and_grad(config)(glm_module.stack_layers(model_params, 2), batch)
        grads = glm_module.unstack_layers(grads, 2)
    else:
        (loss, logits), grads = model_loss_and_grad(TINY.replace(attention_backend=backend))(model_params, batch)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_trees_close(grads, ref_grads, atol=1e-6, rtol=1e-4)


def test_glm_bf16_blockwise_stays_within_bf16_of_reference(model_params):
    batch = model_batch()
    (_, fp32), _ = model_loss_and_grad(TINY)(model_params, batch)
    ref = model_forward(TINY.replace(dtype="bfloat16"))(model_params, batch)
    got = model_forward(TINY.replace(dtype="bfloat16", attention_backend="blockwise"))(model_params, batch)
    bf16_error = np.abs(np.asarray(ref) - np.asarray(fp32)).max()
    assert 0 < np.abs(np.asarray(got) - np.asarray(ref)).max() <= 2 * bf16_error


def test_glm_sep_input_equals_segments_input_on_block_backends(model_params):
    """The block backends turn sep into one segment with part_a = arange < sep."""
    config = TINY.replace(attention_backend="blockwise")
    by_sep = model_forward(config)(model_params, sep_batch())
    batch = model_batch()
    batch["segment_ids"] = np.ones((MB, MT), np.int32)
    batch["part_a"] = np.arange(MT)[None] < sep_batch()["sep"][:, None]
    (_, want), _ = model_loss_and_grad(TINY)(model_params, batch)
    np.testing.assert_allclose(by_sep, want, atol=1e-5)


def test_glm_dense_mask_is_refused_by_block_backends_and_dropout_by_dpa(model_params):
    batch = sep_batch()
    sep = batch.pop("sep")
    dense = np.asarray(masks.sep_mask(jnp.asarray(sep), MT), np.float32)
    with pytest.raises(ValueError, match="'blockwise'"):
        jax.eval_shape(lambda p: GLM(TINY.replace(attention_backend="blockwise")).apply(
            {"params": p}, attention_mask=dense, **batch), model_params)
    for backend in ("dot_product_attention", "pallas"):
        config = TINY.replace(attention_backend=backend, attention_dropout=0.1)

        def apply(p, deterministic):
            return GLM(config).apply({"params": p}, sep=sep, **batch, deterministic=deterministic,
                                     rngs={"dropout": jax.random.PRNGKey(0)})

        with pytest.raises(ValueError, match=f"'{backend}' has no attention dropout"):
            jax.eval_shape(lambda p: apply(p, False), model_params)
        jax.eval_shape(lambda p: apply(p, True), model_params)  # evaluation has no dropout: fine


def test_glm_blockwise_attention_dropout_is_seeded(model_params):
    config = TINY.replace(attention_backend="blockwise", attention_dropout=0.2)
    batch = model_batch()
    run = jax.jit(lambda p, rng: GLM(config).apply({"params": p}, **batch, deterministic=False,
                                                   rngs={"dropout": rng}))
    a, again, b = (np.asarray(run(model_params, jax.random.PRNGKey(s))) for s in (0, 0, 1))
    (_, plain), _ = model_loss_and_grad(TINY)(model_params, batch)
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - np.asarray(plain)).max() > 1e-3


def test_decoding_falls_back_to_the_dense_path(model_params):
    """A blockwise-configured model prefills the cache exactly as the reference does."""
    prompt = {k: v[:, :8] for k, v in sep_batch().items() if k != "sep"}

    @functools.partial(jax.jit, static_argnums=0)
    def prefill(config, params):
        cache = glm_module.init_cache(config, MB, 12)
        logits, state = GLM(config).apply({"params": params, "cache": cache}, **prompt,
                                          sep=np.array([8, 5, 3, 0], np.int32), decode=True, mutable=["cache"])
        return logits, state["cache"]

    got = prefill(TINY.replace(attention_backend="blockwise"), model_params)
    want = prefill(TINY, model_params)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_blockwise_sharded_equals_unsharded(model_params):
    """Under a 2x2x2 mesh the kernel runs per shard (shard_map over batch and heads)."""
    batch = model_batch()
    config = TINY.replace(attention_backend="blockwise")
    (_, want), want_grads = model_loss_and_grad(TINY)(model_params, batch)
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        _, shardings = sharding.abstract_params_and_shardings(
            lambda r: GLM(config).init(r, **batch)["params"], mesh, jax.random.PRNGKey(0))
        params = jax.device_put(model_params, shardings)
        inputs = sharding.shard_batch(batch, mesh)
        step = model_loss_and_grad(config)
        text = step.lower(params, inputs).as_text()
        (_, got), grads = step(params, inputs)
    assert "shard_map" in text or "manual_computation" in text
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert_trees_close(grads, want_grads, atol=1e-6, rtol=1e-4)


def test_pallas_kernels_lower_to_triton():
    """Cross-platform lowering for CUDA on this CPU machine: forward, dK/dV and dQ
    become one Triton custom call each (Triton IR built; PTX needs a GPU)."""
    spec = jax.ShapeDtypeStruct((2, 128, 2, 64), jnp.bfloat16)
    rows = jax.ShapeDtypeStruct((2, 128), jnp.int32), jax.ShapeDtypeStruct((2, 128), jnp.bool_)

    def grads(q, k, v, seg, pa):
        def loss(q, k, v):
            out = pallas_gpu.pallas_attention(q, k, v, seg, pa, block_q=64, block_kv=64, interpret=False)
            return out.astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    exported = jax.export.export(
        jax.jit(grads), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(spec, spec, spec, *rows)
    text = exported.mlir_module()
    assert text.count("__gpu$xla.gpu.triton") == 3
    for name in ("glm_prefix_attention_fwd", "glm_prefix_attention_dkv", "glm_prefix_attention_dq"):
        assert name in text
    with pytest.raises(ValueError, match="head_dim a power of two"):
        pallas_gpu.pallas_attention(*(jnp.zeros((1, 48, 1, 24)),) * 3, jnp.ones((1, 48), jnp.int32),
                                    jnp.ones((1, 48), bool), block_q=16, block_kv=16, interpret=False)


def test_pallas_tpu_kernels_lower_to_mosaic():
    """Lowering for TPU on this CPU machine, through the backend's own kernel choice:
    forward, dK/dV and dQ become one Mosaic custom call each, which is where Pallas
    checks the (8, 128) block tiling and the ops (Mosaic's compilation needs a TPU)."""
    spec = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16)
    rows = jax.ShapeDtypeStruct((2, 256), jnp.int32), jax.ShapeDtypeStruct((2, 256), jnp.bool_)
    kernel = attention.pallas_kernel("tpu", length=256, block_size=128)

    def grads(q, k, v, seg, pa):
        loss = lambda q, k, v: kernel(q, k, v, seg, pa, None).astype(jnp.float32).sum()  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    text = jax.jit(grads).trace(spec, spec, spec, *rows).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3
    with pytest.raises(ValueError, match="block_kv a multiple of 128"):
        pallas_tpu.pallas_tpu_attention(*(jnp.zeros((1, 64, 1, 64)),) * 3, jnp.ones((1, 64), jnp.int32),
                                        jnp.ones((1, 64), bool), block_q=64, block_kv=64, interpret=False)


def test_pallas_kernel_choice_per_platform():
    """Mosaic wants key tiles of 128 lanes, Triton power-of-two tiles: a short
    sequence pads up to what the platform's kernel takes."""
    q = jnp.asarray(np.random.default_rng(0).standard_normal((1, 40, 1, 16)), jnp.float32)
    seg, pa = jnp.ones((1, 40), jnp.int32), jnp.arange(40)[None] < 9
    want = attention.xla_attention(q, q, q, masks.segment_mask(seg, pa))
    for platform in ("tpu", "gpu"):
        kernel = attention.pallas_kernel(platform, length=40, block_size=24, interpret=True)
        got = jax.jit(kernel)(q, q, q, seg, pa, None)
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=platform)


def test_config_checks_backend_and_block_size():
    with pytest.raises(ValueError, match="model.attention_backend"):
        TINY.replace(attention_backend="flash")
    with pytest.raises(ValueError, match="model.attention_block_size"):
        TINY.replace(attention_block_size=12)
    for backend in ("xla", "dot_product_attention", "blockwise", "pallas"):
        assert TINY.replace(attention_backend=backend).attention_backend == backend


@pytest.mark.slow  # the whole benchmark script at toy sizes (a minute): CI's slow step
def test_the_gpu_check_script_runs_dry_on_a_cpu():
    """benchmarks/gpu_check.sh, prepared for the minutes a GPU is lent: its dry run
    runs the same four steps at toy sizes here, so the script cannot rot unseen."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=repo,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "== 4/4 train step, GLM-2B" in done.stdout and done.stdout.rstrip().endswith("gpu_check: done")
