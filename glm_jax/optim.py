"""GLM's optimizer: AdamW with global-norm clipping and the official LR schedule.

Spec 3.4 and 3.5 (../shared/docs/glm_spec.md). The official runs use DeepSpeed's
FusedAdam in AdamW mode (decoupled weight decay, multiplied by the learning rate),
clip the global gradient norm to 1.0 first, and exempt biases and LayerNorm
parameters from weight decay. The learning rate follows ``learning_rates.AnnealingLR``
(:func:`make_schedule`).

Step convention: optax evaluates the schedule at its update count *before* the
update, so update ``k`` (0-based, ``TrainState.step == k`` before the step) uses
``schedule(k)``. With warmup the very first update has learning rate 0, as in the
official loop, which builds the scheduler at iteration 0 and steps it after each
update.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp
import optax

from glm_jax.typed_config import require_at_least, require_positive

DecayStyle = Literal["cosine", "linear", "constant"]
Schedule = Callable[[Any], jax.Array]

# Leaf names that never get weight decay: every bias, and the scale of LayerNorm
# (the only module in GLM with a ``scale`` parameter). Embeddings do get decay, as in
# the official code, whose no-decay group is exactly "biases and LayerNorm params".
NO_DECAY_LEAF_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and the learning-rate schedule. Defaults are the GLM-Large recipe (spec 3.4).

    Attributes:
      learning_rate: peak learning rate, reached at the end of warmup.
      decay_steps: the official ``lr_decay_iters``: warmup plus decay take this many
        updates; afterwards cosine stays at its floor and linear keeps going (below).
      warmup: warmup length as a fraction of ``decay_steps``, as the official scripts
        state it (``warmup_iter = warmup * decay_iters``; 0.05 of 160k = 8k updates).
      warmup_steps: warmup length in updates; when set it takes precedence over
        ``warmup``.
      decay_style: "cosine" (decays to ``learning_rate * lr_decay_ratio``, then flat),
        "linear" (reaches that value at ``decay_steps`` and, as in the official code,
        is not clamped: it keeps falling after ``decay_steps`` and turns negative at
        ``warmup + (decay_steps - warmup) / (1 - lr_decay_ratio)``; train no longer
        than ``decay_steps`` with it), or "constant" (peak after warmup).
      lr_decay_ratio: the floor of the decay as a fraction of the peak, in (0, 1].
      b1, b2, eps: Adam moments and epsilon (eps added to sqrt(v), after bias
        correction, as FusedAdam does).
      weight_decay: decoupled weight decay, applied as ``lr * weight_decay * param``
        to every parameter except biases and LayerNorm scales.
      clip_norm: global gradient-norm clipping threshold; None disables clipping.
    """

    learning_rate: float = 2e-4
    decay_steps: int = 160_000
    warmup: float = 0.05
    warmup_steps: Optional[int] = None
    decay_style: DecayStyle = "cosine"
    lr_decay_ratio: float = 0.05
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    clip_norm: Optional[float] = 1.0

    def __post_init__(self):
        require_at_least("optimizer", self, 0, "learning_rate")
        require_positive("optimizer", self, "decay_steps")
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"optimizer.warmup is a fraction of decay_steps in [0, 1], got {self.warmup}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.decay_steps:
            raise ValueError(
                f"optimizer.warmup_steps must be in [0, decay_steps={self.decay_steps}], got {self.warmup_steps}"
            )
        if self.decay_style not in ("cosine", "linear", "constant"):
            raise ValueError(f"optimizer.decay_style must be cosine, linear or constant, got {self.decay_style!r}")
        if self.decay_style != "constant" and self.warmup_iters >= self.decay_steps:
            key = "warmup_steps" if self.warmup_steps is not None else "warmup"
            raise ValueError(
                f"optimizer.{key}: warmup ({self.warmup_iters:g} updates) must end before "
                f"optimizer.decay_steps ({self.decay_steps}) for the {self.decay_style} decay"
            )
        if not 0.0 < self.lr_decay_ratio <= 1.0:
            raise ValueError(f"optimizer.lr_decay_ratio must be in (0, 1], got {self.lr_decay_ratio}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optimizer.{name} must be in [0, 1), got {getattr(self, name)}")
        require_at_least("optimizer", self, 0, "eps", "weight_decay")
        require_positive("optimizer", self, "clip_norm", or_null=True)

    @property
    def warmup_iters(self) -> float:
        """The official ``warmup_iter``; a float, as ``warmup * decay_iters`` is there."""
        if self.warmup_steps is not None:
            return float(self.warmup_steps)
        return self.warmup * self.decay_steps


def make_schedule(config: OptimizerConfig) -> Schedule:
    """The learning rate of update ``step`` (0-based), as ``AnnealingLR.get_lr``.

    With ``W = warmup_iters``, ``E = decay_steps - W``, ``r = lr_decay_ratio``:

    * ``step <= W`` (and ``W > 0``): ``peak * step / W``;
    * cosine: ``peak / R * ((cos(pi * min(1, (step - W) / E)) + 1) * (R - 1) / 2 + 1)``
      with ``R = 1 / r``: from ``peak`` down to ``peak * r``, then flat;
    * linear: ``peak - peak * (1 - r) * (step - W) / E``, not clamped;
    * constant: ``peak``.

    The result is a float32 scalar; ``step`` may be a traced integer.
    """
    peak = config.learning_rate
    warmup = config.warmup_iters
    decay_len = config.decay_steps - warmup
    floor = config.lr_decay_ratio

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        if config.decay_style == "cosine":
            # Written as the official code writes it (R = 1 / lr_decay_ratio).
            ratio = 1.0 / floor
            progress = jnp.minimum(1.0, (step - warmup) / decay_len)
            decayed = peak / ratio * ((jnp.cos(math.pi * progress) + 1.0) * (ratio - 1.0) / 2.0 + 1.0)
        elif config.decay_style == "linear":
            decayed = peak - peak * (1.0 - floor) * (step - warmup) / decay_len
        else:
            decayed = jnp.full_like(step, peak)
        if warmup > 0:
            decayed = jnp.where(step <= warmup, peak * step / warmup, decayed)
        return decayed

    return schedule


def decay_mask(params: Any) -> Any:
    """A bool pytree like ``params``: True where weight decay applies.

    False for every leaf named ``bias`` or ``scale`` (LayerNorm), whatever module it
    is in; True for kernels and embeddings. Works on scanned (``layers/...``) and
    unscanned (``layers_{i}/...``) parameter trees alike.
    """

    def leaf_decays(path, _) -> bool:
        name = path[-1].key if path and hasattr(path[-1], "key") else None
        return name not in NO_DECAY_LEAF_NAMES

    return jax.tree_util.tree_map_with_path(leaf_decays, params)


def make_optimizer(config: OptimizerConfig) -> tuple[optax.GradientTransformation, Schedule]:
    """``(transformation, schedule)``: clip by global norm, then AdamW with the schedule.

    The schedule is returned too so that the train step can report the learning rate
    of each update without digging it out of the optimizer state.
    """
    schedule = make_schedule(config)
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.clip_norm is None:
        return adamw, schedule
    return optax.chain(clip_by_global_norm(config.clip_norm), adamw), schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the clip applied as one scalar factor.

    The gradients are scaled by ``max_norm / norm`` when their global norm exceeds
    ``max_norm`` (optax divides every element by the norm, then multiplies by
    ``max_norm``: the same values within a rounding). Why: a divide is an expensive
    elementwise op to XLA, which then stores the clipped gradients apart instead of
    re-deriving them inside the first- and second-moment updates; a multiply by a
    scalar it fuses into both. On XLA:CPU that is four passes over every parameter
    less per step (0.67 GB at hidden 512 / vocab 30592: benchmarks/RESULTS.md,
    2026-12-07). The state is optax's (empty), so checkpoints are unchanged.
    """
    def update(updates, state, params=None):
        del params
        norm = optax.global_norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
