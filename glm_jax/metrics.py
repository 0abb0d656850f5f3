"""Progress lines, TensorBoard event files, and the FLOP count behind MFU.

Only the host talks to disk and console here; the train step returns device arrays and
the loop hands them over every ``log_every`` steps, so there is one host sync per
interval, not per step.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from glm_jax.model.config import ModelConfig


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in a matmul per token.

    The position and block-position tables are lookups (no FLOPs); the word embedding
    is both a lookup and the tied output projection, so it counts once.
    """
    h, f, layers = config.hidden_size, config.mlp_dim, config.num_layers
    per_layer = 3 * h * h + 3 * h + h * h + h + h * f + f + f * h + h + 4 * h
    return layers * per_layer + config.vocab_size * h + 2 * h


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: ``6 N`` plus attention.

    Attention scores and the weighted sum cost ``2 * 2 * T * h`` FLOPs per token and
    layer forward, times 3 with the backward pass. GLM's Part A is bidirectional, so
    unlike a causal LM no half of it is skipped: the dense kernel computes all of it.
    """
    attention = 12.0 * config.num_layers * seq_len * config.hidden_size
    return 6.0 * matmul_params(config) + attention


def output_layer_flops_per_position(config: ModelConfig) -> float:
    """Forward + backward FLOPs of the tied output layer at one position (``6 V h``),
    part of :func:`train_flops_per_token`'s model FLOPs at every token. With
    ``train.logits_capacity`` the hardware computes it at fewer positions: the
    step's ``logit_positions`` metric."""
    return 6.0 * config.vocab_size * config.hidden_size


class MetricsWriter:
    """Scalars to TensorBoard event files (tf.summary) and a JSON-lines log.

    Both live under ``log_dir``; JSON lines make the numbers greppable without
    TensorBoard, and the event files are what ``tensorboard --logdir`` reads.
    """

    def __init__(self, log_dir: str | Path, *, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if enabled:
            import tensorflow as tf

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
            self._jsonl = open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        import tensorflow as tf

        values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")

    def flush(self) -> None:
        if self.enabled:
            self._writer.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            self._jsonl.close()
            self.enabled = False


class Progress:
    """Turns the device metrics of an interval into a console line and rates.

    Rates use wall time between calls, so they include input pipeline and host
    overhead: the number a user can plan with.
    """

    def __init__(
        self,
        total_steps: int,
        flops_per_token: float,
        peak_flops: Optional[float] = None,
        *,
        start_step: int = 0,
        clock=time.perf_counter,
        output_layer_flops: float = 0.0,
    ):
        self.total_steps = total_steps
        self.flops_per_token = flops_per_token
        self.output_layer_flops = output_layer_flops
        self.peak_flops = peak_flops
        self._clock = clock
        self._last_time = clock()
        self._last_step = start_step

    def update(self, step: int, tokens: float, logit_positions: Optional[float] = None) -> dict[str, float]:
        """Record ``tokens`` processed since the last call; return the derived rates.

        ``achieved_tflops`` and ``mfu`` count model FLOPs (:func:`train_flops_per_token`,
        the output layer at every token: what the model needs, however computed);
        given ``logit_positions`` (where the output layer really ran), also
        ``hardware_tflops`` and ``hfu``, the FLOPs the step executed.
        """
        now = self._clock()
        seconds = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 1)
        self._last_time, self._last_step = now, step
        tokens_per_s = tokens / seconds
        rates = {
            "tokens_per_s": tokens_per_s,
            "step_time_s": seconds / steps,
            "achieved_tflops": tokens_per_s * self.flops_per_token / 1e12,
        }
        if self.peak_flops:
            rates["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops
        if logit_positions is not None:
            hardware = tokens * (self.flops_per_token - self.output_layer_flops) + (
                logit_positions * self.output_layer_flops)
            rates["hardware_tflops"] = hardware / seconds / 1e12
            if self.peak_flops:
                rates["hfu"] = hardware / seconds / self.peak_flops
        rates["eta_s"] = (self.total_steps - step) * rates["step_time_s"]
        return rates

    def line(self, step: int, metrics: Mapping[str, float], rates: Mapping[str, float]) -> str:
        parts = [f"step {step}/{self.total_steps}"]
        for key in ("loss", "accuracy", "grad_norm", "learning_rate"):
            if key in metrics:
                parts.append(f"{key} {_fmt(metrics[key])}")
        if metrics.get("skipped_steps"):
            parts.append(f"skipped {int(metrics['skipped_steps'])} non-finite step(s)")
        parts.append(f"tokens/s {rates['tokens_per_s']:,.0f}")
        if "mfu" in rates:
            hardware = f" (hardware {100 * rates['hfu']:.1f}%)" if "hfu" in rates else ""
            parts.append(f"MFU {100 * rates['mfu']:.1f}%{hardware}")
        parts.append(f"ETA {format_duration(rates['eta_s'])}")
        return " | ".join(parts)


def _fmt(value: float) -> str:
    value = float(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3e}"
    return f"{value:.4f}"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def to_host(metrics: Mapping[str, object]) -> dict[str, float]:
    """Device scalars -> Python floats (the one host sync of an interval)."""
    return {k: float(np.asarray(v)) for k, v in metrics.items()}
