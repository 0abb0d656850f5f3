"""Decoding speed: ms per generated token with the KV cache and without it.

    python benchmarks/decoding.py [--contexts 128 512] [--new-tokens 64] [--batch 1]

A small GLM on whatever JAX's default device is (CPU here). Both paths are one
jitted loop of greedy steps over a context ending in [gMASK]:

* cache: glm_jax.decoding.search.sample (prefill of the context once, then one
  token per step against the cache); per token = (total - prefill) / steps, and
  the prefill is reported on its own;
* no cache: every step runs the full forward over the fixed buffer
  ``context ++ Part B``, logits of every position included, as ``GLM.apply``
  returns them (what decoding costs without a cache, in jit-friendly static
  shapes); per token = total / steps.

[eop]/eos are forbidden in both so that every run takes exactly ``--new-tokens``
steps; the two paths must produce the same tokens (checked). Times are medians
over ``--repeats`` runs after a compile run. Results are printed as a table and
appended to benchmarks/RESULTS.md (the file is created with a header if missing).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.command_tokens import CommandTokens
from glm_jax.decoding import DecodeSettings, build_context, search
from glm_jax.decoding.prompt_layout import pad_contexts
from glm_jax.model import GLM, ModelConfig

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# glm-jax benchmark results\n\nEach section is appended by the benchmark script it names.\n"

CONFIG = ModelConfig(
    vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, max_position_embeddings=1024,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)
CT = CommandTokens(pad=8000, eos=8000, cls=8001, mask=8002, smask=8003, gmask=8004, sop=8005, eop=8006, unk=8007)


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def greedy_without_cache(params, context, *, config: ModelConfig, steps: int):
    """Greedy decoding of one [gMASK] at the end of ``context [B, T]``, recomputing
    the full forward over ``[B, T + steps]`` at every step. Returns ``[B, steps]``."""
    model = GLM(config)
    batch, length = context.shape
    total = length + steps
    tokens = jnp.full((batch, total), CT.pad, jnp.int32).at[:, :length].set(context).at[:, length].set(CT.sop)
    mask_pos = length - 1
    positions = jnp.concatenate([jnp.arange(length), jnp.full((steps,), mask_pos)])[None].repeat(batch, 0)
    blocks = jnp.concatenate([jnp.zeros(length, jnp.int32), jnp.arange(1, steps + 1)])[None].repeat(batch, 0)
    banned = jnp.zeros(config.vocab_size, bool).at[jnp.array([CT.eop, CT.eos])].set(True)

    def step(i, carry):
        tokens, out = carry
        logits = model.apply({"params": params}, tokens, positions, blocks, sep=jnp.full((batch,), length))
        # The input at length + i ([sop], then the tokens so far) predicts token i.
        logits = jax.lax.dynamic_index_in_dim(logits, length + i, axis=1, keepdims=False)
        token = jnp.argmax(jnp.where(banned, -jnp.inf, logits), axis=-1).astype(jnp.int32)
        # Token i is the input at length + i + 1; the last one is never fed, so its
        # write lands on the last slot, whose input was already consumed.
        slot = jnp.minimum(length + i + 1, total - 1)
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, slot))
        return tokens, out.at[:, i].set(token)

    _, out = jax.lax.fori_loop(0, steps, step, (tokens, jnp.zeros((batch, steps), jnp.int32)))
    return out


@functools.partial(jax.jit, static_argnames=("config", "cache_length"))
def prefill_only(params, tokens, lengths, *, config: ModelConfig, cache_length: int):
    _, cache = search.prefill(GLM(config), params, tokens, lengths, cache_length)
    return cache


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile (and warm up)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(contexts: list[int], steps: int, batch: int, repeats: int) -> list[dict]:
    z = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(jax.jit(GLM(CONFIG).init)(jax.random.PRNGKey(0), z, z, z, sep=z[:, 0])["params"])
    rng = np.random.default_rng(0)
    settings = DecodeSettings(max_new_tokens=steps, min_length=steps)  # no early end
    rows = []
    for length in contexts:
        prompts = [build_context(rng.integers(0, 8000, length - 2), CT) for _ in range(batch)]  # + [CLS], [gMASK]
        assert all(len(p) == length for p in prompts)
        padded = pad_contexts(prompts, CT, position_table_size=CONFIG.position_table_size)
        args = (params, padded.tokens, padded.lengths, padded.blank_positions, padded.num_blanks, jax.random.PRNGKey(0))
        cache_length = padded.tokens.shape[1] + steps
        context = jnp.asarray(np.array(prompts, np.int32))

        def cached(args=args):
            return search.sample(*args, config=CONFIG, settings=settings, command_tokens=CT).tokens

        def prefill(padded=padded, cache_length=cache_length):
            return prefill_only(params, padded.tokens, padded.lengths, config=CONFIG, cache_length=cache_length)

        def uncached(context=context):
            return greedy_without_cache(params, context, config=CONFIG, steps=steps)

        same = np.array_equal(np.asarray(cached()), np.asarray(uncached()))
        t_cached, t_prefill, t_uncached = (median_seconds(f, repeats) for f in (cached, prefill, uncached))
        rows.append(dict(
            context=length, prefill_ms=1e3 * t_prefill, cached_ms=1e3 * (t_cached - t_prefill) / steps,
            uncached_ms=1e3 * t_uncached / steps, same_tokens=same,
        ))
        print(f"context {length}: done", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| context | prefill (ms) | with cache (ms/token) | without cache (ms/token) | speed-up | same tokens |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['context']} | {r['prefill_ms']:.1f} | {r['cached_ms']:.2f} | {r['uncached_ms']:.2f} | "
            f"{r['uncached_ms'] / r['cached_ms']:.1f}x | {'yes' if r['same_tokens'] else 'NO'} |"
        )
    return "\n".join(lines)


def load_average() -> str:
    """The 1-minute load average: on a shared machine it says how far to trust the timings."""
    return "%.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "n/a"


def machine(load_before: str) -> str:
    device = jax.devices()[0]
    load = f", load average {load_before} before / {load_average()} after the run"
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}, "
            f"jax {jax.__version__} on {device.platform} ({device.device_kind})")


def append_results(text: str) -> None:
    """Append to RESULTS.md; the header is written only if the file is new or empty
    (append mode, so a concurrent writer's sections are never overwritten)."""
    with RESULTS.open("a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write(HEADER)
        f.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help=f"only print; do not append to {RESULTS.name}")
    args = parser.parse_args(argv)

    load_before = load_average()
    rows = run(args.contexts, args.new_tokens, args.batch, args.repeats)
    result = table(rows)
    print(result)
    if not args.no_append:
        c = CONFIG
        command = " ".join(["python", f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)])
        section = (
            f"\n## Decoding: ms per generated token, KV cache vs full recomputation\n\n"
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
            f"- machine: {machine(load_before)}\n"
            f"- command: `{command}`\n"
            f"- model: hidden {c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads, vocab {c.vocab_size}, "
            f"{c.dtype}; batch {args.batch}; {args.new_tokens} new tokens, greedy; median of {args.repeats} runs "
            "after a compile run\n\n"
            f"{result}\n"
        )
        append_results(section)
        print(f"appended to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
