"""Training throughput: step time, tokens/s and MFU of the sharded train step.

    python benchmarks/train_step.py --preset glm_tiny --batch 8 --seq 128 [--steps 20]
    python benchmarks/train_step.py --preset glm_large --batch 16 --seq 512 --dtype bfloat16 --remat minimal
    python benchmarks/train_step.py --preset glm_2b --batch 8 --seq 512 --dtype bfloat16 --attention-backend pallas --measure-peak

Runs ``glm_jax.train.make_train_step`` (AdamW, the official schedule) on random GLM
batches (Part A half the row, Part B the rest) over all local devices as one FSDP
mesh. Times are the median of ``--steps`` steps after two warm-up steps (the first
compiles); each timed step blocks on its result, so the figure is device time plus
dispatch, with no input pipeline. MFU = achieved FLOP/s over the devices' peak
(``--peak-tflops`` per device; ``--measure-peak`` times a large bf16 matmul on the
device in the same run, the peak issue 9 asks for; else glm_jax.loop.PEAK_TFLOPS;
none on CPU), with
FLOPs from glm_jax.metrics.train_flops_per_token (6N plus full attention).
Appends a row to benchmarks/RESULTS.md with the device, date, commit and command.
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

from glm_jax import host_memory

# Before JAX starts its threads, as `glm-jax` does on CPU (glm_jax/host_memory.py);
# GLM_JAX_HOST_MALLOC=system measures with glibc's defaults.
HOST_MEMORY = host_memory.configure_process()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from glm_jax import metrics, sharding, train, train_state  # noqa: E402
from glm_jax.model.presets import get_preset  # noqa: E402
from glm_jax.optim import OptimizerConfig, make_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# glm-jax benchmark results\n\nEach section is appended by the benchmark script it names.\n"
SECTION = "## Training step: time, tokens/s, MFU"


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sep = np.full(batch, seq // 2, np.int32)
    idx = np.arange(seq)
    return dict(
        tokens=rng.integers(0, vocab, (batch, seq)).astype(np.int32),
        targets=rng.integers(0, vocab, (batch, seq)).astype(np.int32),
        loss_mask=(idx >= seq // 2).astype(np.int32)[None].repeat(batch, 0),
        position_ids=np.minimum(idx, seq // 2 - 1)[None].repeat(batch, 0).astype(np.int32),
        block_position_ids=np.maximum(idx - seq // 2 + 1, 0)[None].repeat(batch, 0).astype(np.int32),
        sep=sep,
    )


def measure_matmul_peak(size: int = 8192, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a ``[size, size] @ [size, size]`` bf16 matmul on one device:
    the practical peak MFU is measured against (vendor figures are rarely reached)."""
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e12


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define the measured step (shared with benchmarks/profile_step.py)."""
    parser.add_argument("--preset", default="glm_tiny")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--remat", default="none")
    parser.add_argument("--scan", action="store_true", help="scan over layers")
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--logits-capacity", type=float, default=None,
                        help="train.logits_capacity: logits only at the loss positions, up to this fraction "
                             "of the positions (default: logits everywhere)")
    parser.add_argument("--attention-backend", default="xla",
                        help="model.attention_backend: xla, dot_product_attention, blockwise or pallas")


def build_step(args):
    """``(config, state, step, batch)``: the jitted train step over all local devices
    as one FSDP mesh, its state, and one random batch placed on the mesh."""
    preset = get_preset(args.preset)
    config = preset.replace(
        dtype=args.dtype, remat_policy=args.remat, scan_layers=args.scan, attention_backend=args.attention_backend,
        max_position_embeddings=max(preset.max_position_embeddings, args.seq),
        embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
    )
    mesh = sharding.make_mesh((1, -1, 1))
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=1, decay_steps=10_000))
    state = train_state.init_train_state(config, optimizer, mesh, 0)
    loss = train.TokenLoss(logits_capacity=args.logits_capacity)
    step = train.make_train_step(config, optimizer, mesh, loss=loss, schedule=schedule,
                                 num_microbatches=args.microbatches)
    from glm_jax.multihost import global_batch_from_local

    batch = global_batch_from_local(random_batch(args.batch, args.seq, config.vocab_size), mesh)
    return config, state, step, batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU")
    parser.add_argument("--measure-peak", action="store_true",
                        help="measure the device's bf16 matmul TFLOP/s first and use it as the peak")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    config, state, step, batch = build_step(args)
    times = []
    for i in range(args.steps + 2):
        start = time.perf_counter()
        state, out = step(state, batch)
        jax.block_until_ready(out["loss"])
        if i >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = args.batch * args.seq / step_s
    flops = metrics.train_flops_per_token(config, args.seq) * tokens_per_s
    device = jax.devices()[0]
    peak = args.peak_tflops
    if peak is None and args.measure_peak:
        peak = measure_matmul_peak()
        print(f"measured bf16 matmul peak: {peak:.1f} TFLOP/s per device")
    if peak is None:
        from glm_jax.loop import PEAK_TFLOPS

        peak = PEAK_TFLOPS.get(device.device_kind)
    mfu = f"{100 * flops / (peak * 1e12 * jax.device_count()):.1f}%" if peak else "n/a (no peak for this device)"
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    row = (f"| {args.preset} | {n_params / 1e6:.2f}M | {args.batch}x{args.seq} | {args.dtype} | {args.remat} | "
           f"{'yes' if args.scan else 'no'} | {args.attention_backend} | {1000 * step_s:.1f} | {tokens_per_s:,.0f} | "
           f"{flops / 1e12:.3f} | {mfu}{f' of {peak:.0f}' if peak else ''} |")
    print(row)
    if not args.no_append:
        append(row, device, args)
    return 0


def append(row: str, device, args) -> None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = text.rstrip("\n") + "\n\n" + (
        f"{SECTION}\n\n- date: {stamp}; commit {commit}\n"
        f"- device: {jax.device_count()} x {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before the run; jax {jax.__version__}; host memory: "
        f"{HOST_MEMORY.reason}\n"
        f"- command: `python benchmarks/train_step.py {' '.join(sys.argv[1:])}`\n\n"
        "| preset | params | batch x seq | dtype | remat | scan | attention | step (ms) | tokens/s | TFLOP/s | MFU (of peak TFLOP/s) |\n"
        "|---|---:|---|---|---|---|---|---:|---:|---:|---|\n" + row + "\n"
    )
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
