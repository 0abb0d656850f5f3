"""Attention backends side by side: forward+backward time and memory on the GLM mask.

    python benchmarks/attention.py [--shapes 4x512x8x64 1x2048x8x64] [--dtype float32]
                                   [--backends xla dot_product_attention blockwise] [--block 128]

For each shape ``batch x T x heads x head_dim`` and backend, one jitted function runs
the attention core of glm_jax/model/attention.py (Q, pre-scaled K, V in; the GLM mask
of ``pattern``) and the gradients of ``sum(out * cotangent)`` with respect to Q, K, V.
Patterns: ``sep``, each row's Part A a different length (T/8, 3T/8, 5T/8, 7T/8,
cycled); ``packed``, every row four examples of T/4 tokens with Part A half of each.

Reported per row: the median wall time of ``--repeats`` runs of the forward alone
and of forward+backward (after a compile run), XLA's temporary buffer size for the
forward+backward program (``compiled.memory_analysis().temp_size_in_bytes``, what
the program allocates beyond its inputs and outputs: the O(T^2) scores of the dense
backends show up here), the device's peak bytes in use where it reports them (GPU),
the tiles the block backends compute out of all tiles, and the largest difference of
the output from the "xla" reference. The Pallas backend runs in the Pallas
interpreter off GPU: its CPU times measure the interpreter, not the kernel, so it is
left out unless named in ``--backends``.
Results are printed and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax.model import attention, masks
from glm_jax.model.kernels import blocks, blockwise

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# glm-jax benchmark results\n\nEach section is appended by the benchmark script it names.\n"
SECTION = "## Attention backends: forward+backward time and memory, GLM mask"


def make_pattern(kind: str, batch: int, length: int):
    """``(segment_ids, part_a, dense mask [batch, 1, T, T])`` for a pattern name."""
    if kind == "sep":
        seps = jnp.asarray([(2 * (b % 4) + 1) * length // 8 for b in range(batch)], jnp.int32)
        seg, part_a = blocks.sep_metadata(seps, length)
        return seg, part_a, masks.sep_mask(seps, length)
    if kind == "packed":
        per = length // 4
        seg = jnp.tile(jnp.repeat(jnp.arange(1, 5), per)[None], (batch, 1)).astype(jnp.int32)
        part_a = masks.part_a_from_segment_sep(seg, jnp.full((batch, 4), per // 2, jnp.int32))
        return seg, part_a, masks.segment_mask(seg, part_a)
    raise ValueError(f"unknown pattern {kind!r}")


def core(backend: str, block: int, length: int):
    """``(q, k, v, seg, part_a, mask) -> out`` for one backend."""
    if backend == "xla":
        return lambda q, k, v, seg, pa, mask: attention.xla_attention(q, k, v, mask)
    if backend == "dot_product_attention":
        return lambda q, k, v, seg, pa, mask: attention.dot_product_attention(q, k, v, mask)
    if backend == "blockwise":
        return lambda q, k, v, seg, pa, mask: blockwise.blockwise_attention(
            q, k, v, seg, pa, block_q=block, block_kv=block)
    if backend == "pallas":  # the platform's kernel: Triton on GPU, Mosaic on TPU
        kernel = attention.pallas_kernel(jax.default_backend(), length=length, block_size=block)
        return lambda q, k, v, seg, pa, mask: kernel(q, k, v, seg, pa, None)
    raise ValueError(f"unknown backend {backend!r}")


def timed(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(backend: str, shape: tuple[int, ...], kind: str, dtype, block: int, repeats: int, reference=None):
    batch, length, heads, head_dim = shape
    rng = np.random.default_rng(0)
    q, k, v, cot = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(4))
    k = (k / np.sqrt(head_dim)).astype(dtype)
    seg, pa, mask = make_pattern(kind, batch, length)
    fn = core(backend, block, shape[1])
    # The block backends never receive the dense mask: a dense-only input would
    # otherwise count its [batch, 1, T, T] bytes against them.
    dense = backend in attention.DENSE_BACKENDS
    args = (q, k, v, seg, pa, mask if dense else None)

    forward = jax.jit(fn)

    def fwd_bwd(q, k, v, seg, pa, mask):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg, pa, mask), q, k, v)
        return out, vjp(cot)

    train = jax.jit(fwd_bwd)
    memory = train.lower(*args).compile().memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None)
    fwd_s = timed(forward, args, repeats)
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats and hasattr(device, "reset_peak_memory_stats"):
        device.reset_peak_memory_stats()
    step_s = timed(train, args, repeats)
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    out = np.asarray(forward(*args), np.float32)
    tiles = "-"
    if backend in attention.BLOCK_BACKENDS:
        classes = np.asarray(blocks.classify(seg, pa, block, block))
        tiles = f"{(classes != blocks.MASKED).sum()}/{classes.size}"
    diff = "-" if reference is None else f"{np.abs(out - reference).max():.1e}"
    row = dict(backend=backend, shape="x".join(map(str, shape)), pattern=kind, dtype=jnp.dtype(dtype).name,
               fwd_ms=1000 * fwd_s, step_ms=1000 * step_s,
               temp=f"{temp / 2**20:.1f}" if temp is not None else "n/a",
               peak=f"{peak / 2**20:.1f}" if peak is not None else "n/a", tiles=tiles, diff=diff)
    return row, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["4x512x8x64", "1x2048x8x64"],
                        help="batch x T x heads x head_dim")
    parser.add_argument("--patterns", nargs="+", default=["sep", "packed"])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every backend, Pallas only on GPU and TPU (interpreted elsewhere)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    backends = args.backends or ["xla", "dot_product_attention", "blockwise"] + (
        ["pallas"] if jax.default_backend() in ("gpu", "tpu") else [])
    if backends[0] != "xla":
        backends = ["xla"] + [b for b in backends if b != "xla"]  # the reference comes first
    dtype = jnp.dtype(args.dtype)
    rows = []
    for shape_text in args.shapes:
        shape = tuple(int(n) for n in shape_text.split("x"))
        for kind in args.patterns:
            reference = None
            for backend in backends:
                row, out = measure(backend, shape, kind, dtype, args.block, args.repeats, reference)
                reference = out if backend == "xla" else reference
                rows.append(row)
                print(format_row(row), flush=True)
    if not args.no_append:
        append(rows, args)
    return 0


def format_row(r: dict) -> str:
    return (f"| {r['backend']} | {r['shape']} | {r['pattern']} | {r['dtype']} | {r['fwd_ms']:.1f} | "
            f"{r['step_ms']:.1f} | {r['temp']} | {r['peak']} | {r['tiles']} | {r['diff']} |")


def append(rows: list[dict], args) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    device = jax.devices()[0]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    text = text.rstrip("\n") + "\n\n" + (
        f"{SECTION}\n\n- date: {stamp}; commit {commit}\n"
        f"- device: {jax.device_count()} x {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} after the run; jax {jax.__version__}\n"
        f"- command: `python benchmarks/attention.py {' '.join(sys.argv[1:])}`\n"
        f"- tiles {args.block}x{args.block}; times are medians of {args.repeats} runs after a compile run; "
        "temp = XLA temporary buffers of the forward+backward program; peak = device peak bytes (GPU only)\n\n"
        "| backend | batch x T x heads x d | pattern | dtype | fwd (ms) | fwd+bwd (ms) | temp (MiB) | "
        "peak (MiB) | tiles computed | max diff vs xla |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(format_row(r) for r in rows) + "\n"
    )
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
