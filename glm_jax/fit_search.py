"""``glm-jax compile --search``: the fastest estimated way to run a config on a slice
that still fits, found by compiling candidates for the slice (glm_jax/aot.py).

The knobs searched are the ones that trade memory for time without changing the
model or the batch: ``model.remat_policy`` (what the backward recomputes),
``train.num_microbatches`` (gradient accumulation) and the split of the slice's chips
between ``fsdp`` and ``tensor`` (``mesh.ici_shape = [1, chips / t, t]``;
``mesh.dcn_shape`` stays as configured).

Each candidate gets an analytic step-time estimate first (:func:`estimate`): the
model's FLOPs plus what its remat policy recomputes, at :data:`aot.ASSUMED_MFU` of the
chips' peak, against the bytes its collectives move per chip over the chip's ICI
bandwidth (FSDP's parameter all-gathers and gradient reduce-scatters, once per
microbatch; tensor parallelism's activation all-reduces, four per layer). Compute and
communication are assumed to overlap (step = the larger); DCN traffic between
slices is not modelled. Candidates are then compiled in order of that estimate, and
the first one that fits is the answer: no candidate left is estimated faster. (A
candidate that keeps more than one that failed, with less remat and fewer
microbatches on the same mesh, is never compiled after it: it is estimated no slower,
so it came first.)

These are estimates for ranking, not measurements: the report says which terms
dominate so that a user can judge them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from glm_jax import aot, metrics
from glm_jax import config as config_lib
from glm_jax.config import Config
from glm_jax.model.config import ModelConfig

#: Remat policies from least to most recomputation (and memory saved).
REMAT_ORDER = ("none", "dots", "dots_no_batch", "minimal", "full")
MICROBATCH_CHOICES = (1, 2, 4, 8, 16)
TENSOR_CHOICES = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to run the config: a mesh split, a remat policy, a microbatch count."""

    fsdp: int
    tensor: int
    remat_policy: str
    num_microbatches: int

    def overrides(self) -> list[str]:
        return [f"mesh.ici_shape=[1,{self.fsdp},{self.tensor}]", f"model.remat_policy={self.remat_policy}",
                f"train.num_microbatches={self.num_microbatches}"]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Seconds per step, per chip: compute, communication, and the step (their max)."""

    compute_seconds: float
    comm_seconds: float

    @property
    def step_seconds(self) -> float:
        return max(self.compute_seconds, self.comm_seconds)


def recompute_fraction(model: ModelConfig, seq_len: int, remat_policy: str) -> float:
    """The share of a layer's forward FLOPs that ``remat_policy`` runs again in the backward.

    Per token and layer the forward costs ``24 h^2`` in matmuls (QKV ``6``, output
    projection ``2``, MLP ``16``, with ``mlp_dim = 4 h``) plus ``4 T h`` in attention.
    ``minimal`` keeps the QKV, attention output and MLP hidden activations
    (glm_jax/model/glm.py), so it recomputes attention and the MLP's second matmul;
    ``dots_no_batch`` recomputes the attention matmuls (they have a batch dimension);
    ``dots`` and ``none`` keep every matmul output.
    """
    h, f, t = model.hidden_size, model.mlp_dim, seq_len
    matmuls = 8 * h * h + 4 * h * f
    attention = 4 * t * h
    recomputed = {"none": 0.0, "dots": 0.0, "dots_no_batch": attention, "minimal": attention + 2 * h * f,
                  "full": matmuls + attention}[remat_policy]
    return recomputed / (matmuls + attention)


def estimate(config: Config, candidate: Candidate, slice_type: aot.SliceType, chips: int) -> Estimate:
    """The analytic step time of ``config`` run as ``candidate`` on ``chips`` chips of
    ``slice_type`` (see the module docstring for the model)."""
    model, seq = config.model, config.data.sequence_length
    tokens = config.train.global_batch_size * seq
    flops = metrics.train_flops_per_token(model, seq) * tokens
    # The backward is ~2x the forward: recomputing a fraction r of it adds r/3 of the step.
    flops *= 1.0 + recompute_fraction(model, seq, candidate.remat_policy) / 3.0
    compute = flops / (chips * slice_type.peak_tflops * 1e12 * aot.ASSUMED_MFU)

    compute_bytes = 2 if model.dtype == "bfloat16" else 4
    params = metrics.matmul_params(model) + 2 * model.max_position_embeddings * model.hidden_size
    f, t, m = candidate.fsdp, candidate.tensor, candidate.num_microbatches
    params_per_tensor_shard = params / t
    # FSDP: gather the weights for the forward and again for the backward, reduce-scatter
    # the fp32 gradients, per microbatch; a ring moves (n - 1) / n of the array per chip.
    fsdp_bytes = m * (f - 1) / f * params_per_tensor_shard * (2 * compute_bytes + 4) if f > 1 else 0.0
    # Tensor parallelism: two all-reduces of [tokens on this chip, h] per layer forward and
    # two backward; an all-reduce moves 2 (n - 1) / n of its array per chip.
    dcn_data = config.mesh.dcn_shape[0] * config.mesh.dcn_shape[1]
    local_tokens = tokens / (f * dcn_data)
    tensor_bytes = (4 * model.num_layers * 2 * (t - 1) / t * local_tokens * model.hidden_size * compute_bytes
                    if t > 1 else 0.0)
    comm = (fsdp_bytes + tensor_bytes) / slice_type.ici_bytes_per_second
    return Estimate(compute, comm)


def candidates(config: Config, chips_per_slice: int) -> list[Candidate]:
    """Every candidate the slice and the config allow: tensor splits that divide the
    heads, the MLP and the chips; microbatches whose batch still shards over
    ``data x fsdp``; every remat policy."""
    model = config.model
    dcn_data = config.mesh.dcn_shape[0] * config.mesh.dcn_shape[1]
    out = []
    for tensor in TENSOR_CHOICES:
        if chips_per_slice % tensor or model.num_heads % tensor or model.mlp_dim % tensor:
            continue
        fsdp = chips_per_slice // tensor
        for microbatches in MICROBATCH_CHOICES:
            rows, rest = divmod(config.train.global_batch_size, microbatches)
            if rest or rows % (fsdp * dcn_data):
                continue
            out += [Candidate(fsdp, tensor, remat, microbatches) for remat in REMAT_ORDER]
    return out


@dataclasses.dataclass
class Trial:
    """A candidate, its estimate, and what compiling it showed."""

    candidate: Candidate
    estimate: Estimate
    report: Optional[aot.Report] = None

    @property
    def fits(self) -> bool:
        return self.report is not None and self.report.fits


@dataclasses.dataclass
class SearchResult:
    best: Optional[Trial]
    trials: list[Trial]

    def table(self) -> str:
        gib = aot.GIB
        header = ("mesh (d,f,t)", "remat", "micro", "est. step", "compute", "comm", "total/chip", "verdict",
                  "compile")
        rows = []
        for trial in self.trials:
            c, e = trial.candidate, trial.estimate
            report = trial.report
            total = (f"> {report.hbm_bytes / gib:.1f} GiB" if report.error
                     else f"{report.total_bytes / gib:.2f} GiB")
            verdict = "FITS" if report.fits else "DOES NOT FIT"
            seconds = f"{report.compile_seconds:.0f} s"
            rows.append((f"1,{c.fsdp},{c.tensor}", c.remat_policy, str(c.num_microbatches),
                         f"{e.step_seconds * 1e3:.1f} ms", f"{e.compute_seconds * 1e3:.1f} ms",
                         f"{e.comm_seconds * 1e3:.1f} ms", total, verdict, seconds))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        if self.best is None:
            lines.append("no candidate tried fits (raise --max-compiles, or use a bigger slice)")
        else:
            lines.append("fastest estimated that fits: " + " ".join(self.best.candidate.overrides()))
        return "\n".join(lines)


def search(
    config: Config,
    slice_name: str,
    num_slices: int = 1,
    *,
    max_compiles: int = 8,
    compile_fn: Callable[[Config, str, int], aot.Report] = aot.compile_train_step,
    progress: Callable[[str], None] = lambda line: None,
) -> SearchResult:
    """Compile ``config``'s candidates for ``num_slices`` x ``slice_name`` in order of
    estimated step time until one fits (at most ``max_compiles`` compiles).

    Raises:
      ValueError: an unknown slice, or no candidate the slice and config allow.
    """
    if slice_name not in aot.SLICES:
        raise ValueError(f"--topology {slice_name}: unknown slice; expected one of {', '.join(aot.SLICES)}")
    if max_compiles < 1:
        raise ValueError(f"--max-compiles must be >= 1, got {max_compiles}")
    slice_type = aot.SLICES[slice_name]
    chips_per_slice = slice_type.chips
    options = candidates(config, chips_per_slice)
    if not options:
        raise ValueError(f"no (fsdp, tensor, microbatches) of {chips_per_slice} chips divides "
                         f"train.global_batch_size={config.train.global_batch_size}")
    total_chips = chips_per_slice * num_slices
    trials = sorted((Trial(c, estimate(config, c, slice_type, total_chips)) for c in options),
                    key=lambda tr: (tr.estimate.step_seconds, tr.estimate.comm_seconds,
                                   REMAT_ORDER.index(tr.candidate.remat_policy)))
    tried = []
    for trial in trials[:max_compiles]:
        candidate_config = config_lib.apply_overrides(config, trial.candidate.overrides())
        progress(f"compiling {' '.join(trial.candidate.overrides())} "
                 f"(estimated {trial.estimate.step_seconds * 1e3:.1f} ms/step)")
        trial.report = compile_fn(candidate_config, slice_name, num_slices)
        tried.append(trial)
        if trial.fits:
            return SearchResult(trial, tried)
    return SearchResult(None, tried)
