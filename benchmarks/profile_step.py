"""Where the train step's device time goes: a profile grouped by model component.

    python benchmarks/profile_step.py --preset glm_tiny --batch 4 --seq 512 [--steps 3] [--trace-dir DIR]
    python benchmarks/profile_step.py --preset glm_large --batch 16 --seq 512 --dtype bfloat16 --attention-backend pallas

Builds the same step as benchmarks/train_step.py, traces ``--steps`` steps with
``jax.profiler`` (the trace stays in ``--trace-dir`` for TensorBoard's profile tab or
Perfetto), then reads the Perfetto JSON the profiler writes beside it: every executed
XLA op (a fusion, a dot, a copy) with its duration. The compiled step's HLO names the
JAX operation each op came from (``metadata op_name``, e.g.
``jit(train_step)/transpose(jvp(GLM))/layers_0/mlp/dense_4h_to_h/...``), which gives its
component (attention core, QKV projection, MLP, ...) and pass (``transpose(jvp(...))``
is the backward pass). Ops are summed per (component, pass), divided by the number of
steps.

On CPU the ops are the thunks of XLA's CPU runtime; on GPU the kernels on the device
stream carry the same HLO names. Time not covered by an op (launch gaps, host work)
shows as the difference between the step time and the op total.

Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# First: importing it sets host memory as `glm-jax` does on CPU, before JAX starts
# (glm_jax/host_memory.py; GLM_JAX_HOST_MALLOC=system measures with glibc's defaults).
from train_step import HOST_MEMORY, add_step_arguments, build_step

import jax  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Train step profile: device time by component"

# (component, pattern on the op_name's path inside the model), first match wins.
COMPONENTS = [
    ("qkv projection", r"/attention/query_key_value/"),
    ("attention output projection", r"/attention/dense/"),
    ("attention core (scores, mask, softmax, PV)", r"/attention/"),
    ("mlp", r"/mlp/"),
    ("layernorms + residuals", r"layernorm|/layers_\d+/add|/layers/add"),
    # Whatever sits directly under the model, outside the layers: embeddings, the
    # final layernorm, the tied-embedding logits and the loss.
    ("embeddings + final layernorm + logits", r"GLM\)*/(?!layers)"),
]


def component_of(op_name: str) -> tuple[str, str]:
    """``(component, pass)`` of an HLO op from its ``op_name`` metadata."""
    if "GLM" not in op_name:
        return "optimizer, grad norm, loss reduction", "update"
    direction = "backward" if "transpose(" in op_name else "forward"
    for name, pattern in COMPONENTS:
        if re.search(pattern, op_name):
            return name, direction
    return "other model ops", direction


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its ``op_name`` metadata, for every instruction that has one."""
    names = {}
    for match in re.finditer(r"%([\w.\-]+) = [^\n]*?metadata=\{[^}]*?op_name=\"([^\"]*)\"", hlo_text):
        names[match.group(1)] = match.group(2)
    return names


def traced_ops(trace_dir: Path) -> dict[str, float]:
    """Total microseconds per event name in the newest Perfetto trace under ``trace_dir``."""
    traces = sorted(trace_dir.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no Perfetto trace")
    with gzip.open(traces[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] += float(event.get("dur", 0.0))
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=3, help="traced steps (after two warm-up steps)")
    parser.add_argument("--trace-dir", default=None, help="keep the trace here (default: a temporary folder)")
    parser.add_argument("--top", type=int, default=8, help="also list this many single ops")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)

    config, state, step, batch = build_step(args)
    for _ in range(2):  # compile, then one step with everything allocated
        state, out = step(state, batch)
        jax.block_until_ready(out["loss"])
    hlo = op_names(step.lower(state, batch).compile().as_text())

    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="glm_jax_profile_"))
    times = []
    jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
    for _ in range(args.steps):
        start = time.perf_counter()
        state, out = step(state, batch)
        jax.block_until_ready(out["loss"])
        times.append(time.perf_counter() - start)
    jax.profiler.stop_trace()
    step_ms = 1000 * statistics.median(times)

    per_component = collections.Counter()
    per_op = {}
    for name, micros in traced_ops(trace_dir).items():
        if name in hlo:  # events that are XLA ops (not Python or runtime frames)
            ms = micros / 1000 / args.steps
            per_component[component_of(hlo[name])] += ms
            per_op[name] = (ms, hlo[name])
    covered = sum(per_component.values())
    rows = []
    for (component, direction), ms in sorted(per_component.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {component} | {direction} | {ms:.1f} | {100 * ms / covered:.1f}% |")
    top = sorted(per_op.items(), key=lambda kv: -kv[1][0])[: args.top]
    top_rows = [f"| `{name}` | {ms:.1f} | `{op_name.split('/', 1)[-1][:90]}` |" for name, (ms, op_name) in top]

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    summary = (f"{args.preset} ({n_params / 1e6:.2f}M params), batch {args.batch} x {args.seq}, {args.dtype}, "
               f"remat {args.remat}, scan {'yes' if args.scan else 'no'}, attention {args.attention_backend}: "
               f"step {step_ms:.1f} ms (median of {args.steps}), XLA ops {covered:.1f} ms per step")
    table = ("| component | pass | ms per step | share of op time |\n|---|---|---:|---:|\n" + "\n".join(rows)
             + "\n\n| slowest ops | ms per step | from |\n|---|---:|---|\n" + "\n".join(top_rows))
    print(summary + "\n\n" + table)
    print(f"\ntrace: {trace_dir} (tensorboard --logdir {trace_dir}, or open the .trace.json.gz in Perfetto)")
    if not args.no_append:
        append(summary, table)
    return 0


def append(summary: str, table: str) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent, check=False).stdout.strip() or "unknown"
    device = jax.devices()[0]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = RESULTS.read_text().rstrip("\n") + "\n\n" + (
        f"{SECTION}\n\n- date: {stamp}; commit {commit}\n"
        f"- device: {jax.device_count()} x {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before the run; jax {jax.__version__}; host memory: "
        f"{HOST_MEMORY.reason}\n"
        f"- command: `python benchmarks/profile_step.py {' '.join(sys.argv[1:])}`\n"
        f"- {summary}\n\n{table}\n"
    )
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
