"""Forward vs backward+update of the pretraining step, side by side for loss variants.

    python benchmarks/step_breakdown.py                       # issue 18's config, full vs sparse logits
    python benchmarks/step_breakdown.py --preset glm_base --batch 4 --rounds 3

For each variant of the token loss (``full``: logits at every position, the model's
own head and ``train.loss_sums``; ``sparse``: ``train.TokenLoss(logits_capacity=...)``,
glm_jax/sparse_logits.py) it compiles, in one process:

* the forward: the loss of a batch and its accuracy sum (no gradient), as the train
  step computes them;
* the train step: ``train.make_train_step`` (forward, backward, AdamW update);
* apart, for the split: the gradient (``jax.value_and_grad`` of the forward's loss)
  and the optimizer update alone (``train.apply_update`` on a fixed gradient);

and reports XLA's cost analysis of both compiled programs (FLOPs, bytes accessed:
on CPU these count a scanned loop body once, so layers are unrolled here, and both
branches of every conditional, so the sparse variant's fallback is counted too),
the bytes of the path that runs (from the compiled HLO: every top-level op's
operands and result, a conditional counted by its true branch: the sparse logits,
the identity of glm_jax/model/materialize.py), their temporary memory, and their
times: the median over ``--rounds`` rounds that alternate the variants and the
programs, so load on the machine hits all alike. ``backward+update`` is the train
step's time minus the forward's; the second table splits it into the backward (the
gradient's time minus the forward's, beside its FLOPs over the forward's: 2.0 where
every matmul's backward is two matmuls) and the update.

``PYTHONPATH=<an older checkout> python benchmarks/step_breakdown.py --variants full
--label before`` measures an older glm-jax with the same script (``full`` only).

``--tpu-slice v5e-4`` (needs libtpu) also compiles both programs for one chip of that
slice, ahead of time on this host, and reports XLA:TPU's cost analysis of them: the
FLOPs and bytes the accelerator's compiler expects, which can differ a lot from
XLA:CPU's (its fusions differ), and no times.

Appends a table to benchmarks/RESULTS.md with the device, date, commit and command.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from glm_jax import aot, sharding, train, train_state  # noqa: E402
from glm_jax.model import GLM  # noqa: E402
from glm_jax.model.config import ModelConfig  # noqa: E402
from glm_jax.model.presets import get_preset  # noqa: E402
from glm_jax.multihost import global_batch_from_local  # noqa: E402
from glm_jax.optim import OptimizerConfig, make_optimizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Train step: forward vs backward+update, full vs sparse logits"


def glm_batch(batch: int, seq: int, part_a: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens in GLM's layout: Part A ``[0, part_a)``, Part B (the loss) after it."""
    rng = np.random.default_rng(seed)
    idx = np.arange(seq)
    return dict(
        tokens=rng.integers(0, vocab, (batch, seq)).astype(np.int32),
        targets=rng.integers(0, vocab, (batch, seq)).astype(np.int32),
        loss_mask=(idx >= part_a).astype(np.int32)[None].repeat(batch, 0),
        position_ids=np.minimum(idx, part_a - 1)[None].repeat(batch, 0).astype(np.int32),
        block_position_ids=np.maximum(idx - part_a + 1, 0)[None].repeat(batch, 0).astype(np.int32),
        sep=np.full(batch, part_a, np.int32),
    )


def model_config(args) -> ModelConfig:
    if args.preset:
        base = get_preset(args.preset)
    else:
        base = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=args.heads, max_position_embeddings=args.seq)
    return base.replace(
        dtype=args.dtype, max_position_embeddings=max(base.max_position_embeddings, args.seq),
        embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0, remat_policy="none", scan_layers=args.scan,
    )


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
          "f64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)")
_FREE = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple"}


def _shape_bytes(text: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) * _BYTES[dtype] for dtype, dims in _SHAPE.findall(text))


def executed_bytes(hlo: str) -> float:
    """Bytes read and written by the top-level ops of the entry computation, each
    conditional replaced by its true branch's ops (the path that runs here)."""
    def body(name: str) -> list[str]:
        start = hlo.index(name)
        return hlo[start:hlo.index("\n}\n", start)].split("\n")[1:]

    sizes, total = {}, 0
    pending = body("ENTRY")
    while pending:
        line = pending.pop(0)
        match = _OP.match(line)
        if not match:
            continue
        name, shape, op, rest = match.groups()
        sizes[name] = _shape_bytes(shape)
        if op == "conditional":
            branches = re.search(r"branch_computations=\{([^}]*)\}", line).group(1).split(",")
            pending = body(branches[-1].strip() + " ") + pending
        if op in _FREE or op == "conditional":
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("metadata=")[0].split("calls=")[0])
        total += sizes[name] + sum(sizes.get(o, 0) for o in operands)
    return total / 1e9


def xla_costs(compiled) -> dict[str, float]:
    """XLA's cost analysis of a compiled program: GFLOPs and GB accessed."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"gflop": cost.get("flops", 0.0) / 1e9, "gbytes": cost.get("bytes accessed", 0.0) / 1e9}


def compiled_stats(compiled) -> dict[str, float]:
    return {**xla_costs(compiled), "run_gbytes": executed_bytes(compiled.as_text()),
            "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20}


def mean_loss(loss: train.TokenLoss, model: GLM, mesh):
    """``(params, batch) -> (mean loss, {"correct": ...})``: the forward as the train
    step computes it, without dropout. The accuracy sum rides along as auxiliary
    output (no gradient) because the train step reports it: left out, XLA drops its
    argmax from the forward program and its time (68 ms at issue 18's config,
    2026-12-07) is counted in backward+update."""
    def forward(params, batch):
        with train_state.tracing_under(mesh, sharding.LOGICAL_AXIS_RULES):
            sums = loss(model, params, batch, deterministic=True)
        return sums["loss"] / sums["loss_tokens"], {"correct": sums["correct"]}

    return forward


class Variant:
    """The programs of one loss variant, compiled: the forward (the loss), the
    gradient (``value_and_grad`` of that loss: forward + backward), the optimizer
    update alone (``train.apply_update`` on a fixed gradient) and the train step."""

    PROGRAMS = ("forward", "grad", "update", "train")

    def __init__(self, name: str, loss: train.TokenLoss, config: ModelConfig, mesh, batch, optimizer, schedule):
        self.name, self.loss = name, loss
        self.state = train_state.init_train_state(config, optimizer, mesh, 0)
        step = train.make_train_step(config, optimizer, mesh, loss=loss, schedule=schedule)
        forward = mean_loss(loss, GLM(config), mesh)

        def update(state, grads):
            return train.apply_update(optimizer, state, grads, jnp.ones((), jnp.float32))

        params = self.state.params
        self.forward = jax.jit(forward).lower(params, batch).compile()
        self.grad = jax.jit(jax.value_and_grad(forward, has_aux=True)).lower(params, batch).compile()
        self.grads = self.grad(params, batch)[1]
        self.update = jax.jit(update).lower(self.state, self.grads).compile()
        self.step = step.lower(self.state, batch).compile()
        self.stats = {"forward": compiled_stats(self.forward), "grad": compiled_stats(self.grad),
                      "train": compiled_stats(self.step)}
        self.batch = batch
        self.times = {program: [] for program in self.PROGRAMS}
        self.loss_value = float(self.forward(params, batch)[0])

    def run(self, program: str) -> None:
        """Run ``program`` once and append its wall time (the train step advances the state)."""
        start = time.perf_counter()
        if program == "train":
            self.state, out = self.step(self.state, self.batch)
        elif program == "update":
            out = self.update(self.state, self.grads)
        else:
            out = getattr(self, program)(self.state.params, self.batch)
        jax.block_until_ready(out)
        self.times[program].append(time.perf_counter() - start)

    def median_ms(self, program: str) -> float:
        return 1000 * statistics.median(self.times[program])


def tpu_costs(slice_name: str, loss: train.TokenLoss, config: ModelConfig, optimizer, schedule,
              host_batch: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """XLA:TPU's cost analysis of the forward and the train step on one chip of
    ``slice_name``, compiled ahead of time (abstract inputs, nothing allocated)."""
    mesh = sharding.make_mesh((1, 1, 1), devices=aot.slice_devices(slice_name)[:1])
    abstract, shardings = train_state.train_state_shardings(config, optimizer, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    whole = train_state.replicated(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=whole) for k, v in host_batch.items()}
    forward = jax.jit(mean_loss(loss, GLM(config), mesh)).lower(state.params, batch)
    step = train.make_train_step(config, optimizer, mesh, loss=loss, schedule=schedule).lower(state, batch)
    return {"forward": xla_costs(forward.compile()), "train": xla_costs(step.compile())}


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and batch options (issue 18's config by default; shared with
    benchmarks/host_memory.py)."""
    parser.add_argument("--preset", default=None, help="a model preset instead of the sizes below")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=30592)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--part-a", type=int, default=400, help="Part A length; the rest of the row is the loss")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scan", action="store_true", help="scan over layers (XLA's cost analysis then counts "
                        "the loop body once)")
    parser.add_argument("--capacity", type=float, default=0.5, help="the sparse variant's logits_capacity")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_arguments(parser)
    parser.add_argument("--variants", default="full,sparse", help="comma-separated: full, sparse, sparse:<capacity>")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--label", default="", help="prefix of the variant names in the table")
    parser.add_argument("--tpu-slice", default=None, help="also report XLA:TPU's cost analysis of both programs "
                        "on one chip of this slice (e.g. v5e-4; needs libtpu)")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)

    config = model_config(args)
    mesh = sharding.make_mesh((1, -1, 1))
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=1, decay_steps=10_000))
    host_batch = glm_batch(args.batch, args.seq, args.part_a, config.vocab_size)
    batch = global_batch_from_local(host_batch, mesh)
    variants, tpu_lines = [], []
    for name in args.variants.split(","):
        start = time.perf_counter()
        kind, _, capacity = name.partition(":")  # sparse:0.25 = that capacity
        if kind == "full":
            loss = train.TokenLoss()
        elif kind == "sparse":
            loss = train.TokenLoss(logits_capacity=float(capacity or args.capacity))
        else:
            parser.error(f"--variants: unknown variant {name!r} (full, sparse or sparse:<capacity>)")
        label = f"{args.label} {name}" if args.label else name
        if args.tpu_slice:
            c = tpu_costs(args.tpu_slice, loss, config, optimizer, schedule, host_batch)
            f, t = c["forward"], c["train"]
            tpu_lines.append(f"| {label} | {f['gflop']:.1f} | {f['gbytes']:.2f} | {t['gflop']:.1f} | {t['gbytes']:.2f} "
                             f"| {t['gbytes'] / f['gbytes']:.2f} |")
        variants.append(Variant(label, loss, config, mesh, batch, optimizer, schedule))
        print(f"{name}: compiled in {time.perf_counter() - start:.0f} s, loss {variants[-1].loss_value:.6f}",
              flush=True)
    for v in variants:  # warm-up
        for program in Variant.PROGRAMS:
            v.run(program)
        v.times = {program: [] for program in Variant.PROGRAMS}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            for program in Variant.PROGRAMS if r % 2 == 0 else Variant.PROGRAMS[::-1]:
                v.run(program)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v.name} " + " ".join(f"{p} {1000 * v.times[p][-1]:.0f} ms" for p in Variant.PROGRAMS)
            for v in variants), flush=True)

    header = ("| variant | loss | forward GFLOP | forward GB | train GFLOP | train GB | forward GB run | "
              "train GB run | run bytes train/fwd | forward ms | train ms | bwd+update ms | bwd+update / fwd | "
              "train temp MiB |")
    lines = [header, "|---|" + "---:|" * 13]
    base_train = None
    split = ["| variant | forward ms | backward ms (grad - forward) | backward / fwd | backward GFLOP / fwd GFLOP | "
             "update ms (alone) | update / fwd | train - fwd / fwd |", "|---|" + "---:|" * 7]
    for v in variants:
        fwd, trn = v.median_ms("forward") / 1000, v.median_ms("train") / 1000
        f, t = v.stats["forward"], v.stats["train"]
        base_train = base_train or trn
        lines.append(
            f"| {v.name} | {v.loss_value:.6f} | {f['gflop']:.1f} | {f['gbytes']:.2f} | {t['gflop']:.1f} | "
            f"{t['gbytes']:.2f} | {f['run_gbytes']:.2f} | {t['run_gbytes']:.2f} | "
            f"{t['run_gbytes'] / f['run_gbytes']:.2f} | {1000 * fwd:.0f} | {1000 * trn:.0f} | "
            f"{1000 * (trn - fwd):.0f} | {(trn - fwd) / fwd:.2f} | {t['temp_mib']:.0f} |"
        )
        backward = v.median_ms("grad") - v.median_ms("forward")
        split.append(
            f"| {v.name} | {v.median_ms('forward'):.0f} | {backward:.0f} | {backward / v.median_ms('forward'):.2f} | "
            f"{(v.stats['grad']['gflop'] - f['gflop']) / f['gflop']:.2f} | {v.median_ms('update'):.0f} | "
            f"{v.median_ms('update') / v.median_ms('forward'):.2f} | {(trn - fwd) / fwd:.2f} |"
        )
    summary = ", ".join(
        f"{v.name} train step {base_train / (v.median_ms('train') / 1000):.2f}x the first variant's speed"
        for v in variants[1:])
    table = "\n".join(lines) + ("\n\nThe backward and the update apart (the same rounds; the update alone on a fixed "
                                 "gradient, its inputs not donated):\n\n" + "\n".join(split))
    if tpu_lines:
        table += (f"\n\nXLA:TPU's cost analysis, one chip of {args.tpu_slice} (compiled ahead of time; no times):\n\n"
                  "| variant | forward GFLOP | forward GB | train GFLOP | train GB | train / fwd bytes |\n"
                  "|---|---:|---:|---:|---:|---:|\n" + "\n".join(tpu_lines))
    print(table)
    if summary:
        print(summary)
    if not args.no_append:
        append(table, summary, config, args)
    return 0


def append(table: str, summary: str, config: ModelConfig, args) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=RESULTS.parent, check=False).stdout.strip()
    device = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = (
        f"\n{SECTION}\n\n"
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"commit {commit}{' (with uncommitted changes)' if dirty else ''}\n"
        f"- device: {jax.device_count()} x {device.device_kind} ({device.platform}), {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} before the run; jax {jax.__version__}; host memory: "
        f"{HOST_MEMORY.reason}\n"
        f"- command: `python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}`\n"
        f"- model: hidden {config.hidden_size}, {config.num_layers} layers, {config.num_heads} heads, vocab "
        f"{config.vocab_size}, {args.dtype}; batch {args.batch} x {args.seq}, Part A {args.part_a} "
        f"(loss on {args.seq - args.part_a} positions per row); median of {args.rounds} alternated rounds\n\n"
        f"{table}\n" + (f"\n{summary}\n" if summary else "")
    )
    with RESULTS.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
