"""The KV cache, blank infilling, the search strategies and scoring.

References are independent of the code under test: full forward passes over the
whole sequence (no cache), recomputed every step, and Python statements of the
official rules (spec 2.3 layout, spec 4.4 BeamSearchScorer, the HF processors).
The random test model has larger weights than a fresh GLM (N(0, 0.2) everywhere)
so that its greedy outputs vary (small weights make a tied-embedding model copy its
input), and its [eop] is a token it predicts now and then, so blanks really do end
(the tests check that they do).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import decoding, model_dir, sharding
from glm_jax.cli import generate as generate_command
from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import processors, prompt_layout
from glm_jax.model import GLM, ModelConfig, stack_layers
from glm_jax.model import glm as glm_module

CONFIG = ModelConfig(
    vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=64,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)
CT = CommandTokens(pad=100, eos=100, cls=101, mask=102, sop=103, eop=110, unk=105, smask=106, gmask=107)
STEPS = 32


@pytest.fixture(scope="module")
def params():
    """Weights N(0, 0.2), biases 0, LayerNorm scales 1, drawn with numpy (compiling
    flax's init costs more than every test here)."""
    z = jnp.zeros((1, 8), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(lambda: GLM(CONFIG).init(jax.random.PRNGKey(0), z, z, z, sep=z[:, 0])["params"]))
    rng = np.random.default_rng(5)

    def draw(path, shape):
        name = path[-1].key
        if name in ("scale", "bias"):
            return np.full(shape.shape, 1.0 if name == "scale" else 0.0, np.float32)
        return (0.2 * rng.standard_normal(shape.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def model_and_params(params, scan: bool):
    config = CONFIG.replace(scan_layers=scan)
    return config, (stack_layers(params, CONFIG.num_layers) if scan else params)


def prompts() -> list[list[int]]:
    """Text ids of three prompts: one [MASK], two [MASK]s, none (gets [gMASK])."""
    rng = np.random.default_rng(0)
    words = lambda n: [int(t) for t in rng.integers(0, 100, n)]  # noqa: E731
    return [words(4) + [CT.mask] + words(2), words(3) + [CT.mask] + words(5) + [CT.mask] + words(1), words(11)]


# ----------------------------------------------------------------- references


@dataclasses.dataclass
class RefRow:
    """One row of the spec 2.3 infilling state machine, kept as Python lists."""

    context: list[int]
    fed: list[tuple[int, int, int]]  # Part B (token, position, block) fed so far
    generated: list[int]
    blank: int = 0
    blank_length: int = 0
    done: bool = False

    @classmethod
    def start(cls, context):
        return cls(list(context), [(CT.sop, prompt_layout.blank_positions(context, CT)[0], 1)], [])

    def copy(self):
        return dataclasses.replace(self, fed=list(self.fed), generated=list(self.generated))

    def push(self, token: int, end_ids) -> None:
        blanks = prompt_layout.blank_positions(self.context, CT)
        self.generated.append(token)
        if token in end_ids:  # [eop] is not fed back; the next blank starts with [sop]
            self.blank, self.blank_length = self.blank + 1, 0
            if self.blank == len(blanks):
                self.done = True
            else:
                self.fed.append((CT.sop, blanks[self.blank], 1))
        else:
            self.blank_length += 1
            self.fed.append((token, blanks[self.blank], self.blank_length + 1))


WIDTH = 96  # every full forward pads to this, so each config compiles it once


def full_logprobs(forward, params, rows: list[RefRow]) -> np.ndarray:
    """Next-token log-probs of each row from one full forward pass over
    ``context ++ Part B`` (sep = context length), no cache. ``[rows, V]``.
    The padding after each row sits in the causal region: no real token sees it."""
    width = WIDTH
    tokens = np.full((len(rows), width), CT.pad, np.int32)
    pos, block = np.zeros_like(tokens), np.zeros_like(tokens)
    for r, row in enumerate(rows):
        n = len(row.context)
        tokens[r, :n], pos[r, :n] = row.context, np.arange(n)
        for j, (t, p, b) in enumerate(row.fed):
            tokens[r, n + j], pos[r, n + j], block[r, n + j] = t, p, b
    sep = np.array([len(r.context) for r in rows], np.int32)
    logits = np.asarray(forward(params, tokens, pos, block, sep))
    last = np.array([len(r.context) + len(r.fed) - 1 for r in rows])
    return np.asarray(jax.nn.log_softmax(logits[np.arange(len(rows)), last], axis=-1))


@functools.cache
def make_forward(config):
    model = GLM(config)
    return jax.jit(lambda p, t, pos, blk, sep: model.apply({"params": p}, t, pos, blk, sep=sep))


def processed(logprobs: np.ndarray, row: RefRow, settings, end_ids) -> np.ndarray:
    """The HF MinLength and NoRepeatNGram processors, stated directly."""
    out = logprobs.copy()
    if row.blank_length < settings.min_length:
        out[list(end_ids)] = -np.inf
    n, gen = settings.no_repeat_ngram_size, row.generated
    if n and len(gen) >= n - 1:
        prefix = tuple(gen[len(gen) - n + 1:]) if n > 1 else ()
        for j in range(len(gen) - n + 1):
            if tuple(gen[j:j + n - 1]) == prefix:
                out[gen[j + n - 1]] = -np.inf
    return out


def reference_greedy(params, config, contexts, settings):
    forward, end_ids = make_forward(config), settings.end_ids(CT)
    rows = [RefRow.start(c) for c in contexts]
    logprobs = [[] for _ in rows]
    for _ in range(settings.max_new_tokens):
        if all(r.done for r in rows):
            break
        lp = full_logprobs(forward, params, rows)  # finished rows too: one shape, one compile
        for row, row_lp, out in zip(rows, lp, logprobs):
            if not row.done:
                token = int(np.argmax(processed(row_lp, row, settings, end_ids)))
                out.append(row_lp[token])
                row.push(token, end_ids)
    return rows, logprobs


def reference_beam(params, config, contexts, settings):
    """The official DecoderEvaluater + BeamSearchScorer loop, in Python, per prompt."""
    forward, end_ids = make_forward(config), settings.end_ids(CT)
    k, lp_pow = settings.num_beams, settings.length_penalty
    beams = [[RefRow.start(c) for _ in range(k)] for c in contexts]
    scores = [[0.0] + [-1e9] * (k - 1) for _ in contexts]
    hyps = [[] for _ in contexts]  # (score, generated tokens, complete)
    done = [False] * len(contexts)

    def add(b, score, tokens, complete):
        worst = min((h[0] for h in hyps[b]), default=1e9)
        if len(hyps[b]) < k or score > worst:
            hyps[b].append((score, tokens, complete))
            if len(hyps[b]) > k:
                hyps[b].remove(min(hyps[b], key=lambda h: h[0]))

    step = 0
    while step < settings.max_new_tokens and not all(done):
        lp = full_logprobs(forward, params, [row for b in range(len(contexts)) for row in beams[b]])
        for b in range(len(contexts)):
            if done[b]:
                continue
            total = np.concatenate([
                scores[b][j] + processed(lp[b * k + j], beams[b][j], settings, end_ids) for j in range(k)
            ])
            top = np.argsort(-total, kind="stable")[: 2 * k]
            norm = max(step, 1) ** lp_pow
            nxt = []
            for rank, idx in enumerate(top):
                j, token = divmod(int(idx), config.vocab_size)
                src = beams[b][j]
                n_blanks = len(prompt_layout.blank_positions(src.context, CT))
                if token in end_ids and src.blank == n_blanks - 1:
                    if rank < k:
                        add(b, total[idx] / norm, src.generated + [token], True)
                else:
                    nxt.append((total[idx], src, token))
                if len(nxt) == k:
                    break
            done[b] = len(hyps[b]) >= k and min(h[0] for h in hyps[b]) >= total[top[0]] / norm
            new_rows = []
            for _, src, token in nxt:
                row = src.copy()
                row.push(token, end_ids)
                new_rows.append(row)
            beams[b], scores[b] = new_rows, [s for s, _, _ in nxt]
        step += 1
    for b in range(len(contexts)):
        if not done[b]:
            for j in range(k):
                add(b, scores[b][j] / max(step, 1) ** lp_pow, beams[b][j].generated, False)
    return [max(h, key=lambda h: h[0]) for h in hyps]


# --------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def official_model(official_dir):
    from glm_jax.convert import load_official

    return load_official(official_dir / "state_dict.npz")


@pytest.mark.parametrize("scan", [False, True])
def test_official_mem_step_by_prefill_and_one_cached_step(official_model, official_io, scan):
    """The fixture's mem case: prefix with sep=min(sep, P), then one new token that
    sees the whole prefix (spec 1.7), from the official code."""
    config, params = official_model
    if scan:
        config, params = config.replace(scan_layers=True), stack_layers(params, config.num_layers)
    io_ = official_io
    prefix = int(io_["mem_prefix_len"])
    tokens, pos = io_["sep_input_ids"][:, :prefix], io_["sep_position_ids"][:, :, :prefix]
    model = GLM(config)
    new_pos = io_["mem_new_position_ids"]

    @jax.jit
    def prefill_then_step(params):
        cache = glm_module.init_cache(config, tokens.shape[0], prefix + 1)
        prefix_logits, variables = model.apply(
            {"params": params, "cache": cache}, tokens, pos[:, 0], pos[:, 1],
            sep=np.minimum(io_["sep_sep"], prefix), decode=True, mutable=["cache"],
        )
        step_logits, variables = model.apply(
            {"params": params, **variables}, io_["mem_new_ids"], new_pos[:, 0], new_pos[:, 1],
            sep=np.zeros(3, np.int32), decode=True, mutable=["cache"],
        )
        return prefix_logits, step_logits, variables

    prefix_logits, step_logits, variables = prefill_then_step(params)
    np.testing.assert_allclose(prefix_logits, io_["mem_prefix_logits"], atol=5e-5)
    np.testing.assert_allclose(step_logits, io_["mem_step_logits"], atol=5e-5)
    assert int(variables["cache"]["cache_index"]) == prefix + 1


def teacher_forced_layout(contexts, steps, seed=0):
    """Random Part B tokens for ``steps`` steps over each context's blanks: the
    (token, position, block) fed at each step, blanks switching every few steps."""
    rng = np.random.default_rng(seed)
    out = []
    for context in contexts:
        blanks, fed, blank, length = prompt_layout.blank_positions(context, CT), [], 0, 0
        for _ in range(steps):
            if length == 0:
                fed.append((CT.sop, blanks[blank], 1))
            else:
                fed.append((int(rng.integers(0, 100)), blanks[blank], length + 1))
            length += 1
            if length == 7 and blank + 1 < len(blanks):  # close this blank (its eop is not fed)
                blank, length = blank + 1, 0
        out.append(fed)
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_equals_full_forward(params, scan):
    """Prefill of ragged contexts + 32 cached steps == one full forward over
    ``context ++ Part B`` per row (spec 8.2), several blanks, within 1e-5. The
    shorter contexts are right-padded in the prefill, the full forward has no
    padding before Part B: equal logits mean the prefill padding is invisible."""
    config, p = model_and_params(params, scan)
    contexts = [prompt_layout.build_context(x, CT) for x in prompts()]
    fed = teacher_forced_layout(contexts, STEPS)
    batch = prompt_layout.pad_contexts(contexts, CT, position_table_size=config.position_table_size)
    model = GLM(config)
    steps = np.array(fed)  # [B, STEPS, 3]

    @jax.jit
    def cached(p):
        _, cache = decoding.search.prefill(model, p, batch.tokens, batch.lengths, batch.tokens.shape[1] + STEPS)

        def one(cache, x):
            logits, v = model.apply(
                {"params": p, "cache": cache}, x[:, 0:1], x[:, 1:2], x[:, 2:3],
                sep=jnp.zeros(len(contexts), jnp.int32), decode=True, mutable=["cache"],
            )
            return v["cache"], logits[:, 0]

        _, logits = jax.lax.scan(one, cache, jnp.swapaxes(jnp.asarray(steps), 0, 1))
        return jnp.swapaxes(logits, 0, 1)  # [B, STEPS, V]

    got = np.asarray(cached(p))
    tokens = np.full((len(contexts), WIDTH), CT.pad, np.int32)
    pos, block = np.zeros_like(tokens), np.zeros_like(tokens)
    for r, (context, row) in enumerate(zip(contexts, fed)):
        n = len(context)
        tokens[r, :n], pos[r, :n] = context, np.arange(n)
        tokens[r, n:n + STEPS], pos[r, n:n + STEPS], block[r, n:n + STEPS] = np.array(row).T
    full = np.asarray(make_forward(config)(p, tokens, pos, block, np.array([len(c) for c in contexts])))
    for r, context in enumerate(contexts):
        np.testing.assert_allclose(got[r], full[r, len(context):len(context) + STEPS], atol=1e-5, rtol=0)
    assert np.abs(got).max() > 1.0  # a non-degenerate model: the comparison means something


def test_cache_is_sharded_and_decodes_as_unsharded(params):
    """On a 2x2x2 mesh the cache is split like the activations (batch over
    data+fsdp, heads over tensor) and a prefill + step gives the unsharded logits."""
    contexts = [prompt_layout.build_context(x, CT) for x in prompts()] + [[CT.cls, 5, CT.gmask]]
    batch = prompt_layout.pad_contexts(contexts, CT, position_table_size=CONFIG.position_table_size)
    model = GLM(CONFIG)
    sop = np.full((4, 1), CT.sop, np.int32)
    blank = batch.blank_positions[:, :1]

    def run(p):
        _, cache = decoding.search.prefill(model, p, batch.tokens, batch.lengths, batch.tokens.shape[1] + 1)
        logits, v = model.apply(
            {"params": p, "cache": cache}, sop, blank, np.ones_like(blank),
            sep=np.zeros(4, np.int32), decode=True, mutable=["cache"],
        )
        return logits, v["cache"]

    reference, _ = jax.jit(run)(params)
    mesh = sharding.make_mesh((2, 2, 2))
    with sharding.activate(mesh):
        _, shardings = sharding.abstract_params_and_shardings(
            lambda r: GLM(CONFIG).init(r, sop, sop, sop, sep=np.ones(4, np.int32))["params"], mesh,
            jax.random.PRNGKey(0),
        )
        logits, cache = jax.jit(run)(jax.device_put(params, shardings))
        specs = nn.get_partition_spec(glm_module.cache_shapes(CONFIG, 4, batch.tokens.shape[1] + 1))
        cache_shardings = sharding.logical_sharding(specs, mesh)
    want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None))
    assert cache["layers_0"]["attention"]["cached_key"].sharding.is_equivalent_to(want, 4)
    assert cache_shardings["layers_0"]["attention"]["cached_value"].is_equivalent_to(want, 4)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=1e-5)


# ------------------------------------------------------------- strategies


def greedy(params, config, settings=None, seed=0):
    settings = settings or decoding.DecodeSettings(max_new_tokens=STEPS)
    return decoding.infill(params, config, prompts(), CT, settings, seed=seed)


@pytest.fixture(scope="module")
def greedy_plain(params):
    return greedy(params, CONFIG)


@pytest.mark.parametrize("scan", [False, True])
def test_greedy_equals_full_recomputation(params, greedy_plain, scan):
    """32 greedy steps with the cache == recomputing the whole sequence every step:
    same tokens, same log-probs (1e-5), for one blank, two blanks and [gMASK]."""
    config, p = model_and_params(params, scan)
    got = greedy(p, config) if scan else greedy_plain
    contexts = [prompt_layout.build_context(x, CT) for x in prompts()]
    rows, logprobs = reference_greedy(params, CONFIG, contexts, decoding.DecodeSettings(max_new_tokens=STEPS))
    for g, row, lp in zip(got, rows, logprobs):
        assert list(g.tokens) == row.generated
        np.testing.assert_allclose(g.token_logprobs, lp, atol=1e-5)
        assert g.complete == row.done
    # The case this test is for: blanks close, and a later blank is filled after an earlier one.
    assert any(len(g.spans) == 2 for g in got) and any(g.complete for g in got)
    assert any(not g.complete for g in got)


def test_generation_layout(greedy_plain):
    """Spans, filled text and the [gMASK] prompt follow spec 2.3."""
    two = greedy_plain[1]
    assert two.context[0] == CT.cls and two.context[-1] == CT.eos
    assert len(two.blank_positions) == 2
    first_end = two.tokens.index(CT.eop)
    rest = two.tokens[first_end + 1:]
    assert two.spans == (two.tokens[:first_end], rest[: rest.index(CT.eop)] if CT.eop in rest else rest)
    text = prompts()[1]
    m1, m2 = [i for i, t in enumerate(text) if t == CT.mask]
    filled = text[:m1] + list(two.spans[0]) + text[m1 + 1:m2] + list(two.spans[1]) + text[m2 + 1:]
    assert list(two.filled) == filled
    gmask = greedy_plain[2]
    assert gmask.context[-1] == CT.gmask and gmask.blank_positions == (len(gmask.context) - 1,)


def test_top_k_1_and_beam_1_equal_greedy(params, greedy_plain):
    top1 = greedy(params, CONFIG, decoding.DecodeSettings(strategy="sample", top_k=1, max_new_tokens=STEPS), seed=3)
    beam1 = greedy(params, CONFIG, decoding.DecodeSettings(strategy="beam", num_beams=1, max_new_tokens=STEPS))
    for g, t, b in zip(greedy_plain, top1, beam1):
        assert t.tokens == g.tokens and b.tokens == g.tokens and b.complete == g.complete
        np.testing.assert_allclose(b.token_logprobs, g.token_logprobs, atol=1e-6)


def test_sampling_is_seeded(params, greedy_plain):
    settings = decoding.DecodeSettings(strategy="sample", temperature=1.5, top_p=0.9, max_new_tokens=STEPS)
    a, b, c = (greedy(params, CONFIG, settings, seed=s) for s in (7, 7, 8))
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]
    assert [g.tokens for g in a] != [g.tokens for g in greedy_plain]


def has_repeated_ngram(tokens, n) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_min_length_and_no_repeat_ngram(params, greedy_plain):
    """Both processors hold, the outputs equal the recomputed reference applying
    them, and without them the same model breaks both rules (the test can fail)."""
    settings = decoding.DecodeSettings(max_new_tokens=STEPS, min_length=8, no_repeat_ngram_size=2)
    got = greedy(params, CONFIG, settings)
    rows, _ = reference_greedy(params, CONFIG, [prompt_layout.build_context(x, CT) for x in prompts()], settings)
    for g, row in zip(got, rows):
        assert list(g.tokens) == row.generated
        assert not has_repeated_ngram(g.tokens, 2)
        closed = g.spans if g.complete else g.spans[:-1]
        assert all(len(s) >= 8 for s in closed)
    assert any(has_repeated_ngram(g.tokens, 2) for g in greedy_plain)
    assert any(len(s) < 8 for g in greedy_plain for s in (g.spans if g.complete else g.spans[:-1]))


def test_beam_search_matches_the_official_scorer(params):
    """Width 3, length penalty 0.7, min length 2, no-repeat 3-grams, against a
    Python statement of the official loop with full recomputation."""
    settings = decoding.DecodeSettings(
        strategy="beam", num_beams=3, length_penalty=0.7, min_length=2, no_repeat_ngram_size=3, max_new_tokens=12,
    )
    got = greedy(params, CONFIG, settings)
    contexts = [prompt_layout.build_context(x, CT) for x in prompts()]
    want = reference_beam(params, CONFIG, contexts, settings)
    for g, (score, tokens, complete) in zip(got, want):
        assert list(g.tokens) == tokens
        assert g.complete == complete
        np.testing.assert_allclose(g.score, score, rtol=1e-5)
    assert any(g.complete for g in got)


# ------------------------------------------------------------- processors


def test_repeated_ngram_tokens_match_brute_force():
    rng = np.random.default_rng(1)
    generated = rng.integers(0, 4, (5, 12)).astype(np.int32)
    banned = jax.jit(processors.repeated_ngram_tokens, static_argnums=(2, 3))
    for n in (1, 2, 3):
        for length in (0, 1, 2, 5, 12):
            got = np.asarray(banned(generated, length, n, 6))
            for r in range(5):
                gen = list(generated[r, :length])
                want = np.zeros(6, bool)
                if length >= n - 1:
                    prefix = tuple(gen[length - n + 1:]) if n > 1 else ()
                    for j in range(length - n + 1):
                        if tuple(gen[j:j + n - 1]) == prefix:
                            want[gen[j + n - 1]] = True
                np.testing.assert_array_equal(got[r], want, err_msg=f"n={n} length={length} row={r}")


def test_top_k_top_p_and_temperature():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.2, 0.1], [0.05, 0.05, 0.6, 0.3]]))
    warp = jax.jit(processors.warp_for_sampling, static_argnums=(1, 2, 3))
    top2 = np.asarray(warp(logits, 1.0, 2, 1.0))
    np.testing.assert_array_equal(np.isfinite(top2), [[1, 1, 1, 0], [0, 0, 1, 1]])  # ties with the 2nd kept
    nucleus = np.asarray(warp(logits, 1.0, 0, 0.75))
    np.testing.assert_array_equal(np.isfinite(nucleus), [[1, 1, 1, 0], [0, 0, 1, 1]])
    tight = np.asarray(warp(logits, 1.0, 0, 0.5))
    np.testing.assert_array_equal(np.isfinite(tight), [[1, 0, 0, 0], [0, 0, 1, 0]])  # always >= 1 token
    hot = np.asarray(warp(logits, 2.0, 0, 1.0))
    np.testing.assert_allclose(hot, np.asarray(logits) / 2.0)


def test_min_length_forbids_every_end_token():
    scores = jnp.zeros((2, 8))
    out = np.asarray(processors.forbid_end_before_min_length(scores, jnp.array([1, 4]), 2, (3, 5)))
    assert np.isneginf(out[0, [3, 5]]).all() and np.isfinite(out[0, [0, 1, 2, 4, 6, 7]]).all()
    assert np.isfinite(out[1]).all()


# ----------------------------------------------------------------- layout


def test_build_context_rules():
    ct = CT
    assert prompt_layout.build_context([5, ct.mask, 6], ct) == [ct.cls, 5, ct.mask, 6, ct.eos]
    assert prompt_layout.build_context([5, 6], ct) == [ct.cls, 5, 6, ct.gmask]  # no blank: [gMASK], no eos after it
    assert prompt_layout.build_context([5, ct.gmask], ct) == [ct.cls, 5, ct.gmask]
    assert prompt_layout.build_context([ct.gmask, 5], ct) == [ct.cls, ct.gmask, 5, ct.eos]
    no_task_masks = dataclasses.replace(ct, gmask=None, smask=None)
    assert prompt_layout.build_context([5], no_task_masks) == [ct.cls, 5, ct.mask, ct.eos]
    with pytest.raises(ValueError, match="prompt 1 has no blank"):
        prompt_layout.pad_contexts([[ct.cls, ct.mask], [ct.cls, 5]], ct, position_table_size=64)
    with pytest.raises(ValueError, match="prompt 0 has 70 tokens"):
        prompt_layout.pad_contexts([[ct.mask] * 70], ct, position_table_size=65)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="strategy"):
        decoding.DecodeSettings(strategy="nucleus")
    with pytest.raises(ValueError, match="num_beams=4 needs strategy='beam'"):
        decoding.DecodeSettings(num_beams=4)
    with pytest.raises(ValueError, match="top_p"):
        decoding.DecodeSettings(strategy="sample", top_p=0.0)
    assert decoding.DecodeSettings(strategy="beam").end_ids(CT) == (CT.eop,)
    assert decoding.DecodeSettings().end_ids(CT) == (CT.eop, CT.eos)


def test_generate_rejects_mismatched_inputs(params):
    with pytest.raises(ValueError, match="scan_layers"):
        decoding.infill(params, CONFIG.replace(scan_layers=True), prompts(), CT)
    with pytest.raises(ValueError, match="max_new_tokens=65"):
        decoding.infill(params, CONFIG, prompts(), CT, decoding.DecodeSettings(max_new_tokens=65))
    with pytest.raises(ValueError, match=r"prompt 1 has token ids outside .* \[128\]"):
        decoding.infill(params, CONFIG, [[1, CT.mask], [128, CT.mask]], CT)


# ----------------------------------------------------------------- scoring


def test_score_equals_hand_computation_from_a_full_forward(params):
    """sum_j log p(answer_j), answer = candidate + [eop], from one full forward pass
    over [context, sop, answer[:-1]] per candidate (spec 4.1); mean = sum / len."""
    context = [CT.cls, 11, 12, CT.mask, 13, CT.mask, 14, CT.eos]
    candidates = [[21, 22, 23], [24], []]
    sums, means = decoding.score(params, CONFIG, context, candidates, CT)
    blank, n = 5, len(context)  # the last blank, as build_input_from_ids takes it
    tokens, pos, block = (np.zeros((len(candidates), WIDTH), np.int32) for _ in range(3))
    for c, cand in enumerate(candidates):  # one sequence per candidate, as the official code runs it
        answer = cand + [CT.eop]
        tokens[c, : n + len(answer)] = context + [CT.sop] + answer[:-1]
        pos[c, : n + len(answer)] = list(range(n)) + [blank] * len(answer)
        block[c, n : n + len(answer)] = range(1, len(answer) + 1)
    logits = make_forward(CONFIG)(params, tokens, pos, block, np.full(len(candidates), n, np.int32))
    eop_logprob = []
    for c, cand in enumerate(candidates):
        answer = cand + [CT.eop]
        # The input at n + j ([sop], then the answer) predicts answer[j].
        logprobs = np.asarray(jax.nn.log_softmax(logits[c, n + np.arange(len(answer))], axis=-1))
        want = sum(logprobs[j, t] for j, t in enumerate(answer))
        np.testing.assert_allclose(sums[c], want, atol=2e-5, rtol=0)
        np.testing.assert_allclose(means[c], want / len(answer), atol=2e-5, rtol=0)
        eop_logprob.append(logprobs[-1, CT.eop])
    # The [eop] term is in: without it the score is short by exactly log p([eop] | ...).
    without, _ = decoding.score(params, CONFIG, context, candidates[:2], CT, append_eop=False)
    np.testing.assert_allclose(sums[:2] - without, eop_logprob[:2], atol=2e-5)
    assert np.all(np.abs(eop_logprob) > 1e-2)  # so that the line above can fail


def test_score_batch_pads_candidates_and_contexts(params):
    contexts = [[CT.cls, 11, CT.mask, CT.eos], [CT.cls, 1, 2, 3, 4, 5, CT.mask, 6, CT.eos]]
    candidates = [[[21, 22, 23, 24]], [[5], [6, 7]]]
    batched = decoding.score_batch(params, CONFIG, contexts, candidates, CT)
    for ctx, cands, (sums, means) in zip(contexts, candidates, batched):
        alone, alone_mean = decoding.score(params, CONFIG, ctx, cands, CT)
        assert sums.shape == (len(cands),)
        np.testing.assert_allclose(sums, alone, atol=1e-5)
        np.testing.assert_allclose(means, alone_mean, atol=1e-5)


# --------------------------------------------------------------------- CLI


class WordVocabulary:
    """A stand-in text vocabulary: space-separated ids, blanks written literally."""

    command_tokens = CT
    literals: ClassVar[dict[str, int]] = {"[MASK]": CT.mask, "[sMASK]": CT.smask, "[gMASK]": CT.gmask}

    def encode(self, s):
        return [self.literals[w] if w in self.literals else int(w) for w in s.split()]

    def decode(self, ids):
        names = {v: k for k, v in self.literals.items()}
        return " ".join(names.get(i, str(i)) for i in ids)


def test_cli_generate(params, greedy_plain, tmp_path, monkeypatch):
    """``glm-jax generate``: a model directory, prompts from arguments and a file,
    the filled text and each span printed (text and JSON)."""
    model_dir.save_model_dir(tmp_path / "model", CONFIG, params)
    monkeypatch.setattr(model_dir, "vocabulary_for", lambda path, vocab: (WordVocabulary(), "sentencepiece", "official"))
    vocab = WordVocabulary()
    texts = [vocab.decode(p) for p in prompts()]
    (tmp_path / "prompts.txt").write_text(texts[1] + "\n\n" + texts[2] + "\n")
    parser = generate_command.add_arguments(argparse.ArgumentParser())
    argv = [
        "--checkpoint", str(tmp_path / "model"), "--vocab", "v.model", "--input-file", str(tmp_path / "prompts.txt"),
        "--max-new-tokens", str(STEPS), texts[0],
    ]

    out = io.StringIO()
    assert generate_command.run(parser.parse_args(argv), out) == 0
    lines = out.getvalue().splitlines()
    two = greedy_plain[1]
    assert lines[0] == f"[1] {texts[0]}"
    i = lines.index(f"[2] {texts[1]}")
    assert lines[i + 1:i + 4] == [
        f"  filled: {vocab.decode(list(two.filled))}",
        f"  span 1: {vocab.decode(list(two.spans[0]))}",
        f"  span 2: {vocab.decode(list(two.spans[1]))}",
    ]
    assert "(incomplete" in lines[3]  # prompt 1 runs out of tokens (see test_greedy_equals_full_recomputation)

    out = io.StringIO()
    assert generate_command.run(parser.parse_args(argv + ["--json"]), out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["spans"] for r in records] == [[vocab.decode(list(s)) for s in g.spans] for g in greedy_plain]
    assert [r["complete"] for r in records] == [g.complete for g in greedy_plain]

    with pytest.raises(ValueError, match="num_beams"):
        generate_command.run(parser.parse_args(argv + ["--strategy", "sample", "--num-beams", "2"]))
