"""The train step on CPU with glibc's default malloc and with freed memory kept.

    python benchmarks/host_memory.py                 # issue 18's config, sparse logits
    python benchmarks/host_memory.py --processes 4 --rounds 6

glm_jax/host_memory.py is a process-wide setting made before JAX starts, so the two
sides cannot share a process: this script starts ``--processes`` children, the
modes alternating (system, retain, retain, system, ...), each one compiling the
forward, the train step and the optimizer update of benchmarks/step_breakdown.py's
config and timing ``--rounds`` alternated rounds of them. Per program it reports
the median time, the minor page faults and the system CPU time per run (from
``getrusage``: the kernel mapping and zero-filling fresh pages), the process's peak
resident memory, and backward+update over forward (issue 18's time ratio).

Appends a table to benchmarks/RESULTS.md with the device, date, commit and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Importing it sets host memory as GLM_JAX_HOST_MALLOC says, before JAX starts: the
# parent sets that variable for each child process.
import step_breakdown as sb  # noqa: E402

import jax  # noqa: E402

from glm_jax import sharding, train  # noqa: E402
from glm_jax.multihost import global_batch_from_local  # noqa: E402
from glm_jax.optim import OptimizerConfig, make_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Host memory: glibc's malloc defaults vs freed memory kept (glm_jax/host_memory.py)"
PROGRAMS = ("forward", "train", "update")
MODES = ("system", "retain")


def child(args) -> dict:
    """One process's figures (``GLM_JAX_HOST_MALLOC`` is already set by the parent)."""
    config = sb.model_config(args)
    mesh = sharding.make_mesh((1, -1, 1))
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=1, decay_steps=10_000))
    batch = global_batch_from_local(sb.glm_batch(args.batch, args.seq, args.part_a, config.vocab_size), mesh)
    variant = sb.Variant("sparse", train.TokenLoss(logits_capacity=args.capacity), config, mesh, batch, optimizer,
                         schedule)
    for _ in range(2):  # compile-time allocations settle; the heap reaches its working size
        for program in PROGRAMS:
            variant.run(program)
    variant.times = {program: [] for program in variant.PROGRAMS}
    faults = {program: [] for program in PROGRAMS}
    system_s = {program: [] for program in PROGRAMS}
    for r in range(args.rounds):
        for program in PROGRAMS if r % 2 == 0 else PROGRAMS[::-1]:
            before = resource.getrusage(resource.RUSAGE_SELF)
            variant.run(program)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[program].append(after.ru_minflt - before.ru_minflt)
            system_s[program].append(after.ru_stime - before.ru_stime)
    device = jax.devices()[0]
    return {
        "host_memory": sb.HOST_MEMORY.reason,
        "ms": {p: 1000 * statistics.median(variant.times[p]) for p in PROGRAMS},
        "faults": {p: statistics.median(faults[p]) for p in PROGRAMS},
        "system_ms": {p: 1000 * statistics.median(system_s[p]) for p in PROGRAMS},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": variant.loss_value,
        "device": f"{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sb.add_size_arguments(parser)
    parser.add_argument("--rounds", type=int, default=6, help="alternated rounds per process")
    parser.add_argument("--processes", type=int, default=4, help="child processes, modes alternating")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-append"]
    runs = {mode: [] for mode in MODES}
    for i in range(args.processes):
        mode = MODES[(i + i // 2) % 2]  # system, retain, retain, system, system, ...
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(GLM_JAX_HOST_MALLOC=mode, JAX_PLATFORMS="cpu")
        done = subprocess.run([sys.executable, __file__, "--child", mode, *passed], capture_output=True, text=True,
                              env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child process {i} ({mode}) failed with exit code {done.returncode}")
        runs[mode].append(json.loads(lines[-1][len("RESULT "):]))
        r = runs[mode][-1]
        print(f"process {i + 1}/{args.processes} ({mode}): " + ", ".join(
            f"{p} {r['ms'][p]:.0f} ms / {r['faults'][p]:.0f} faults" for p in PROGRAMS), flush=True)

    rows = ["| malloc | forward ms | train ms | update ms (alone) | bwd+update / fwd | faults per train step | "
            "system CPU ms per train step | faults per forward | peak RSS MiB |", "|---|" + "---:|" * 8]
    for mode in MODES:
        for r in runs[mode]:
            fwd, trn = r["ms"]["forward"], r["ms"]["train"]
            rows.append(f"| {mode} | {fwd:.0f} | {trn:.0f} | {r['ms']['update']:.0f} | {(trn - fwd) / fwd:.2f} | "
                        f"{r['faults']['train']:.0f} | {r['system_ms']['train']:.0f} | {r['faults']['forward']:.0f} "
                        f"| {r['peak_rss_mib']:.0f} |")
    median = {mode: {p: statistics.median(r["ms"][p] for r in runs[mode]) for p in PROGRAMS} for mode in MODES}
    summary = ("medians over processes: " + "; ".join(
        f"{mode}: forward {m['forward']:.0f} ms, train {m['train']:.0f} ms, update {m['update']:.0f} ms, "
        f"bwd+update / fwd {(m['train'] - m['forward']) / m['forward']:.2f}" for mode, m in median.items())
        + f"; train step retain / system time {median['retain']['train'] / median['system']['train']:.3f}")
    table = "\n".join(rows)
    print(table + "\n" + summary)
    if not args.no_append:
        first = runs["retain"][0] if runs["retain"] else runs["system"][0]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, check=False).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=RESULTS.parent, check=False).stdout.strip()
        with RESULTS.open("a") as f:
            f.write(
                f"\n{SECTION}\n\n"
                f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
                f"commit {commit}{' (with uncommitted changes)' if dirty else ''}\n"
                f"- device: {first['device']}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
                f"{load:.1f} before the run; glibc {platform.libc_ver()[1]}\n"
                f"- command: `python benchmarks/host_memory.py {' '.join(passed)}`\n"
                f"- model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}, "
                f"{args.dtype}; batch {args.batch} x {args.seq}, Part A {args.part_a}, sparse logits "
                f"(capacity {args.capacity}); per process the median of {args.rounds} alternated rounds "
                f"(loss {first['loss']:.6f})\n\n{table}\n\n{summary}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
