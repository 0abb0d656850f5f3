"""Ahead-of-time compilation of the train step for a real TPU slice, from any host.

``glm-jax compile`` answers "does this config fit that slice, and what will a step
cost?" before a pod is booked. XLA compiles for a TPU topology on a CPU-only
machine when libtpu is installed (``pip install 'glm-jax[tpu]'``): the devices come
from ``jax.experimental.topologies.get_topology_desc`` (no chip is touched), and the
program is the one ``glm-jax train`` runs (``pretrain.train_step_for``, the same
mesh, shardings and step), lowered on abstract arguments and compiled.

What the report holds, per chip:

* the state (parameters + optimizer state) from the shardings themselves: the bytes
  of each array's shard, summed (what the program's arguments hold);
* XLA's ``memory_analysis()``: arguments, outputs, temporaries, generated code;
  total = arguments + outputs - aliased (the donated state) + temporaries + code,
  against the chip's HBM (:data:`SLICES`, the vendors' figures) with a margin.
  Out-of-memory is not a compile error for these programs (a step needing 116 GiB
  compiles for a 95 GB chip), so the verdict comes from these numbers; an XLA
  out-of-memory error, where one occurs, is reported as DOES NOT FIT too;
* FLOPs per step from the model (``metrics.train_flops_per_token``), not XLA's
  ``cost_analysis()``, which counts a scanned loop body once; and the step time
  they give at a stated fraction of the chips' peak (:data:`ASSUMED_MFU`);
* the collectives of the compiled program, by kind: count and result bytes; and
  its custom calls by target (``tpu_custom_call``: the Pallas Mosaic kernels).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any, Optional

import jax
import numpy as np

from glm_jax import metrics, pretrain, sharding, train_state
from glm_jax.command_tokens import CommandTokens
from glm_jax.config import Config
from glm_jax.data.feature_converter import SEQUENCE_FEATURES
from glm_jax.decoding import search
from glm_jax.model.glm import GLM

GIB = 2**30
#: Memory kept free on every chip (runtime buffers, fragmentation): a config fits if
#: its total is at most HBM x (1 - this).
HBM_MARGIN = 0.05
#: The fraction of peak FLOP/s the step-time estimate assumes (well-tuned dense
#: transformers reach 40-60% on TPUs); an estimate, not a measurement.
ASSUMED_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class SliceType:
    """A TPU slice as ``get_topology_desc`` builds it, with its chips' memory and peak.

    Attributes:
      topology: libtpu's topology name (``"v5:4x4x4"``: generation and chip grid).
      chip_config: ``megacore`` (v4, v5p: one device per chip) or ``default``.
      wrap: wrap-around links per axis (full-torus slices).
      accelerator_type: the ``TPU_ACCELERATOR_TYPE`` a host of that slice reports.
      hbm_bytes, hbm_stated: HBM per chip, and as the vendor states it.
      peak_tflops: dense bf16 TFLOP/s per chip (vendor figure).
      ici_bytes_per_second: bidirectional inter-chip bandwidth per chip (vendor figure;
        used only by the fit search's estimate, glm_jax/fit_search.py).
    """

    topology: str
    chip_config: str
    wrap: tuple[bool, bool, bool]
    accelerator_type: str
    hbm_bytes: int
    hbm_stated: str
    peak_tflops: float
    ici_bytes_per_second: float

    @property
    def chips(self) -> int:
        """Chips in one slice: the product of the topology's grid (``v5:4x4x4`` -> 64)."""
        return math.prod(int(n) for n in self.topology.split(":")[1].split("x"))


# ICI: Cloud TPU's tables state 400 GB/s (v5e) and 1200 GB/s (v5p) bidirectional per chip.
# Its v4 page states none; 600 GB/s is 2 x 2400 Gbps, the v4 figure recalled from Google's
# generation comparison (uncertain; it only shifts the fit search's estimates on v4).
_V4 = dict(chip_config="megacore", hbm_bytes=32 * GIB, hbm_stated="32 GiB", peak_tflops=275.0,
           ici_bytes_per_second=600e9)
_V5E = dict(chip_config="default", hbm_bytes=16 * GIB, hbm_stated="16 GiB", peak_tflops=197.0,
            ici_bytes_per_second=400e9)
# Google states 95 GB for v5p; XLA's own out-of-memory message counts 95.74G available.
# The verdict uses the smaller, stated figure.
_V5P = dict(chip_config="megacore", hbm_bytes=95 * 10**9, hbm_stated="95 GB", peak_tflops=459.0,
            ici_bytes_per_second=1200e9)
# v6e (Trillium): Cloud TPU states 918 TFLOP/s bf16, 32 GB of HBM and 800 GB/s of ICI per chip.
_V6E = dict(chip_config="default", hbm_bytes=32 * 10**9, hbm_stated="32 GB", peak_tflops=918.0,
            ici_bytes_per_second=800e9)
_NO_WRAP = (False, False, False)

#: Slices by the name Cloud TPU gives them (v4 and v5p count TensorCores, two per chip).
SLICES: dict[str, SliceType] = {
    "v4-8": SliceType("v4:2x2x1", wrap=_NO_WRAP, accelerator_type="v4-8", **_V4),
    "v4-64": SliceType("v4:2x4x4", wrap=_NO_WRAP, accelerator_type="v4-64", **_V4),
    "v5e-4": SliceType("v5e:2x2", wrap=_NO_WRAP, accelerator_type="v5litepod-4", **_V5E),
    "v5e-64": SliceType("v5e:8x8", wrap=_NO_WRAP, accelerator_type="v5litepod-64", **_V5E),
    "v5e-256": SliceType("v5e:16x16", wrap=(True, True, False), accelerator_type="v5litepod-256", **_V5E),
    "v5p-8": SliceType("v5:2x2x1", wrap=_NO_WRAP, accelerator_type="v5p-8", **_V5P),
    "v5p-128": SliceType("v5:4x4x4", wrap=(True, True, True), accelerator_type="v5p-128", **_V5P),
    "v6e-4": SliceType("v6e:2x2", wrap=_NO_WRAP, accelerator_type="v6e-4", **_V6E),
    "v6e-256": SliceType("v6e:16x16", wrap=(True, True, False), accelerator_type="v6e-256", **_V6E),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}


class NeedsLibtpu(RuntimeError):
    """libtpu is not installed: TPU programs cannot be compiled here."""


def check_libtpu() -> None:
    if importlib.util.find_spec("libtpu") is None:
        raise NeedsLibtpu("compiling for a TPU slice needs libtpu: pip install 'glm-jax[tpu]' "
                          "(it brings the libtpu that matches this jax)")


def slice_devices(name: str, num_slices: int = 1) -> list:
    """The devices of ``num_slices`` slices of type ``name`` (:data:`SLICES`), for
    compiling only."""
    if name not in SLICES:
        raise ValueError(f"--topology {name}: unknown slice; expected one of {', '.join(SLICES)}")
    if num_slices < 1:
        raise ValueError(f"--num-slices must be >= 1, got {num_slices}")
    check_libtpu()
    from jax.experimental import topologies  # imported here: it loads the TPU plugin

    kind = SLICES[name]
    # libtpu reads the slice's identity from these, as on a TPU host.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", kind.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # No chip is opened: several compiling processes may share the host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=kind.topology, chip_config_name=kind.chip_config,
        chips_per_host_bounds=(2, 2, 1), num_slices=num_slices, wrap=kind.wrap)
    return list(topology.devices)


def abstract_batch(config: Config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch ``glm-jax train`` feeds the step (glm_jax/data/feature_converter.py),
    as sharded shapes."""
    rows, length = config.train.global_batch_size, config.data.sequence_length
    batch_sharding = sharding.batch_sharding(mesh)  # rows over data x fsdp, for every feature

    def spec(shape, dtype, where):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

    out = {name: spec((rows, length), np.int32, batch_sharding) for name in SEQUENCE_FEATURES}
    if config.data.pack:
        out["segment_ids"] = spec((rows, length), np.int32, batch_sharding)
        out["part_a"] = spec((rows, length), np.bool_, batch_sharding)
    else:
        out["sep"] = spec((rows,), np.int32, batch_sharding)
    return out


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of the sharded arrays in ``tree`` (the largest shard of
    each, which every device holds for even splits)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
    """``{kind: (count, result bytes)}`` of the collectives in an HLO module's text
    (async ``-start`` ops counted once; tuple results summed)."""
    out: dict[str, list[int]] = {}
    pattern = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for match in pattern.finditer(hlo_text):
        shapes, kind = match.group(1), match.group(2)
        size = 0
        for dtype, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", shapes):
            size += _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        count_bytes = out.setdefault(kind, [0, 0])
        count_bytes[0] += 1
        count_bytes[1] += size
    return {k: (v[0], v[1]) for k, v in out.items()}


@dataclasses.dataclass
class Report:
    """What :func:`compile_train_step` found; :meth:`table` prints it."""

    slice_name: str
    num_slices: int
    chips: int
    mesh: dict[str, int]
    state_bytes: int
    memory: dict[str, int]
    total_bytes: int
    hbm_bytes: int
    fits: bool
    flops_per_step: float
    step_seconds: float
    collectives: dict[str, tuple[int, int]]
    custom_calls: dict[str, int]
    compile_seconds: float
    error: Optional[str] = None
    program: str = "train step"
    batch: Optional[str] = None  # the program's batch, when not the config's training batch

    def table(self, config: Config) -> str:
        def gib(b: float) -> str:
            return f"{b / GIB:.2f} GiB" if abs(b) >= GIB else f"{b / 2**20:.1f} MiB"

        kind = SLICES[self.slice_name]
        usable = self.hbm_bytes * (1 - HBM_MARGIN)
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        rows = [
            ("program", self.program),
            ("slice", f"{self.num_slices} x {self.slice_name} ({self.chips} chips, {kind.hbm_stated} HBM each)"),
            ("mesh (data, fsdp, tensor)", ", ".join(str(self.mesh[a]) for a in sharding.MESH_AXES)),
            ("batch", self.batch or f"{config.train.global_batch_size} x {config.data.sequence_length} tokens, "
                                    f"{config.train.num_microbatches} microbatch(es)"),
            ("model", f"remat {config.model.remat_policy}, scan_layers {config.model.scan_layers}, dtype "
                      f"{config.model.dtype}, attention {config.model.attention_backend}"),
            ("parameters + optimizer / chip", gib(self.state_bytes)),
        ]
        rows += [(f"  {name} / chip", gib(value)) for name, value in self.memory.items()]
        if self.error:
            rows += [("total / chip", f"more than the {gib(self.hbm_bytes)} of HBM (XLA's verdict)"),
                     ("verdict", f"{verdict}: {self.error}")]
        else:
            rows += [("total / chip", f"{gib(self.total_bytes)} of {gib(usable)} usable "
                                      f"({HBM_MARGIN:.0%} of {gib(self.hbm_bytes)} kept free)"),
                     ("verdict", f"{verdict} (margin {gib(usable - self.total_bytes)})")]
        rows += [
            (f"model FLOPs / {'step' if self.program == 'train step' else 'call'}", f"{self.flops_per_step:.3e}"),
            (f"step time at {ASSUMED_MFU:.0%} MFU (estimate)", f"{self.step_seconds * 1e3:.1f} ms"),
        ]
        rows += [(f"collective {kind_}", f"{count} ops, {gib(size)} of results")
                 for kind_, (count, size) in sorted(self.collectives.items())]
        rows += [(f"custom call {target}", f"{count}") for target, count in sorted(self.custom_calls.items())]
        rows.append(("compile time", f"{self.compile_seconds:.1f} s"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def compile_train_step(config: Config, slice_name: str, num_slices: int = 1) -> Report:
    """Compile ``config``'s train step for ``num_slices`` slices of ``slice_name``.

    Raises:
      NeedsLibtpu, ValueError: no libtpu; an unknown slice; a mesh that does not
        match the slice's devices (named by ``mesh.*``), as ``glm-jax train`` would.
    """
    devices = slice_devices(slice_name, num_slices)
    mesh = sharding.mesh_from_config(config.mesh, devices=devices)
    optimizer, _, step = pretrain.train_step_for(config, mesh)
    abstract_state, state_shardings = train_state.train_state_shardings(config.model, optimizer, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                         state_shardings)
    batch = abstract_batch(config, mesh)
    tokens = config.train.global_batch_size * config.data.sequence_length
    flops = metrics.train_flops_per_token(config.model, config.data.sequence_length) * tokens
    return _compile_and_measure(lambda: step.lower(state, batch).compile(), slice_name, num_slices, mesh,
                                shard_bytes(state), flops)


def compile_decode_step(config: Config, slice_name: str, num_slices: int = 1, *, batch_size: int,
                        context_length: int, max_new_tokens: int = 64) -> Report:
    """Compile generation's prefill of ``batch_size`` contexts of ``context_length``
    tokens plus one cached decode step (``glm_jax.decoding.search``: the functions
    ``glm-jax generate`` runs) for the slice, with the training config's parameter
    layout and a cache of ``context_length + max_new_tokens`` slots per row.

    Raises:
      NeedsLibtpu, ValueError: as :func:`compile_train_step`; a batch that does not
        split over the mesh's data x fsdp devices.
    """
    if not 1 <= context_length <= config.model.max_position_embeddings:
        raise ValueError(f"--context-length {context_length}: must be 1..{config.model.max_position_embeddings} "
                         "(model.max_position_embeddings)")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: must be >= 1")
    devices = slice_devices(slice_name, num_slices)
    mesh = sharding.mesh_from_config(config.mesh, devices=devices)
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"--decode-batch {batch_size}: must be a positive multiple of the {shards} data x fsdp "
                         f"devices of mesh {dict(mesh.shape)}")
    rules = sharding.LOGICAL_AXIS_RULES
    abstract_params, param_shardings = train_state.params_layout(config.model, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
                          param_shardings)
    rows = sharding.batch_sharding(mesh)
    tokens = jax.ShapeDtypeStruct((batch_size, context_length), np.int32, sharding=rows)
    lengths = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=rows)
    model = GLM(config.model)
    # Only the ids' values reach the program; any distinct ids do.
    ids = CommandTokens(pad=0, eos=1, cls=2, mask=3, sop=4, eop=5, unk=6)

    @jax.jit
    def prefill_and_one_token(params, tokens, lengths):
        _, cache = search.prefill(model, params, tokens, lengths, context_length + max_new_tokens)
        first = search.initial_rows(batch_size, max_new_tokens, ids)  # every row feeds [sop]
        return search.decode_step(model, params, cache, first, (lengths - 1)[:, None], ids.pad)

    def lower_and_compile():
        with train_state.tracing_under(mesh, rules):
            lowered = prefill_and_one_token.lower(params, tokens, lengths)
        return lowered.compile()

    # Forward FLOPs: 2 per matmul parameter per token, plus attention over the context.
    per_token = 2.0 * metrics.matmul_params(config.model) + 4.0 * config.model.num_layers * context_length * \
        config.model.hidden_size
    flops = per_token * batch_size * (context_length + 1)
    return _compile_and_measure(
        lower_and_compile, slice_name, num_slices, mesh, shard_bytes(params), flops,
        program=f"generation: prefill {context_length} tokens, then 1 cached token",
        batch=f"{batch_size} prompts, cache of {context_length + max_new_tokens} slots")


def _compile_and_measure(compile_fn, slice_name: str, num_slices: int, mesh, state_bytes: int, flops: float,
                         **labels: str) -> Report:
    """Compile, then read the program's memory, collectives and custom calls; the
    time estimate is ``flops`` at :data:`ASSUMED_MFU` of the chips' peak."""
    kind = SLICES[slice_name]
    chips = math.prod(mesh.devices.shape)
    seconds_estimate = flops / (chips * kind.peak_tflops * 1e12 * ASSUMED_MFU)
    start = time.perf_counter()
    error, memory, found, calls = None, {}, {}, {}
    try:
        compiled = compile_fn()
    except Exception as e:  # XLA's own out-of-memory verdict, e.g. RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        error = str(e).strip().splitlines()[0][:200]
    seconds = time.perf_counter() - start
    if error is None:
        stats = compiled.memory_analysis()
        memory = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
                  "aliased (donated)": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
                  "generated code": stats.generated_code_size_in_bytes}
        text = compiled.as_text()
        found = collectives(text)
        for target in re.findall(r'custom_call_target="([^"]+)"', text):
            calls[target] = calls.get(target, 0) + 1
    total = (memory.get("arguments", 0) + memory.get("outputs", 0) - memory.get("aliased (donated)", 0)
             + memory.get("temporaries", 0) + memory.get("generated code", 0))
    fits = error is None and total <= kind.hbm_bytes * (1 - HBM_MARGIN)
    return Report(slice_name, num_slices, chips, dict(mesh.shape), state_bytes, memory, total,
                  kind.hbm_bytes, fits, flops, seconds_estimate, found, calls, seconds, error, **labels)
