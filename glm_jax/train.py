"""Training steps: the one step factory, GLM's token-level loss, microbatched gradients.

:func:`make_train_step` serves every task: the task brings its loss (here
:class:`TokenLoss`, the pretraining loss; ``glm_jax.cloze.ChoiceLoss`` for
fine-tuning), the factory brings gradient accumulation, the optimizer update with
its health metrics, dropout keys and the shardings (the state's layout is
glm_jax/train_state.py's). The ``train`` config section (:class:`TrainConfig`)
sets pretraining's loop (glm_jax/pretrain.py).

The token loss is the official one (spec 3.5, ``pretrain_glm.forward_step``):
float32 cross-entropy per token, then ``sum(ce * loss_mask) / sum(loss_mask)`` over
the whole global batch, a token-level mean rather than a mean of per-example means.
Gradient accumulation keeps every loss exact: each microbatch's summed loss is
divided by the count of the *global* batch (known before any forward pass), so the
microbatch gradients add up to the full-batch gradient.

The steps are jitted with explicit shardings: the state as laid out, the batch
split over ``data`` and ``fsdp``, the state donated. The mesh and the logical rules
are entered while tracing, so the returned functions need no surrounding context.

Batches are dicts of ``[batch, ...]`` arrays: the model's inputs (tokens,
position_ids, block_position_ids, sep or segment_ids + part_a) plus ``targets``
(int ``[B, T]``, aligned with the inputs) and ``loss_mask`` (0/1 ``[B, T]``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from glm_jax import nonfinite, sharding, sparse_logits
from glm_jax.model import GLM, ModelConfig
from glm_jax.train_state import TrainState, params_layout, replicated, tracing_under, train_state_shardings
from glm_jax.typed_config import require_at_least, require_divisible, require_positive

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Independent random streams derived from the one training seed.
_DROPOUT_STREAM = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop. Defaults are the GLM-Large recipe (spec 3.4).

    Attributes:
      global_batch_size: sequences per update, over all devices and microbatches.
      num_microbatches: gradient accumulation: the global batch is processed in this
        many sequential microbatches; the update equals the full-batch one.
      steps: number of updates.
      seed: seeds parameter init and, with the step number, every dropout mask.
      output_dir: the run's directory: TensorBoard events and metrics.jsonl go to
        ``<output_dir>/logs``, checkpoints to ``<output_dir>/checkpoints`` unless
        ``checkpoint.directory`` says otherwise.
      log_every: steps between progress lines and metric records (one host sync each).
      eval_every: steps between evaluations on the held-out split; 0 = only at the end.
      eval_batches: batches per evaluation.
      peak_tflops: the accelerator's peak (bf16) TFLOP/s per device, for MFU; None
        looks the device kind up in glm_jax.loop.PEAK_TFLOPS (CPU: no MFU).
      logits_capacity: the output layer (tied logits and cross-entropy) runs only at
        the loss positions, up to this fraction of each batch shard's positions; a
        batch with more loss tokens runs it at every position (same loss, the old
        cost). null: logits at every position, always. 0.5 covers the multitask
        objective's ~30% with margin; a token-objective run can go lower.
      on_nonfinite: a step whose loss or gradient is NaN/inf: ``stop`` the run
        before anything after it is saved, or ``skip_step`` (leave the state
        unchanged); glm_jax/nonfinite.py.
      max_consecutive_skips: with ``skip_step``, stop after this many in a row.
    """

    global_batch_size: int = 1024
    num_microbatches: int = 1
    steps: int = 200_000
    seed: int = 0
    output_dir: str = "runs/default"
    log_every: int = 50
    eval_every: int = 0
    eval_batches: int = 8
    peak_tflops: Optional[float] = None
    logits_capacity: Optional[float] = 0.5
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 10

    def __post_init__(self):
        nonfinite.check_policy(self.on_nonfinite, self.max_consecutive_skips, "train")
        require_positive("train", self, "global_batch_size", "num_microbatches", "steps", "log_every", "eval_batches")
        require_divisible("train", self, "global_batch_size", "num_microbatches")
        require_at_least("train", self, 0, "eval_every")
        if self.logits_capacity is not None and not 0.0 < self.logits_capacity <= 1.0:
            raise ValueError(f"train.logits_capacity must be in (0, 1] or null, got {self.logits_capacity}")


class LossSums(NamedTuple):
    """Sums over the loss tokens of a batch (float32 scalars); add them across
    microbatches or eval batches, divide at the end."""

    ce: jax.Array  # sum of cross-entropy * loss_mask
    correct: jax.Array  # sum of (argmax == target) * loss_mask
    loss_tokens: jax.Array  # sum of loss_mask (exact in float32 up to 2**24 tokens)


# ------------------------------------------------------------------------- loss


def loss_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array, label_smoothing: float = 0.0) -> LossSums:
    """Masked cross-entropy and accuracy sums.

    Args:
      logits: ``[B, T, V]``, upcast to float32.
      targets: ``[B, T]`` int token ids.
      loss_mask: ``[B, T]``, 0/1 (any numeric dtype).
      label_smoothing: epsilon of the official seq2seq loss (spec 4.4):
        ``(1 - eps) * CE + eps * mean_v(-log_softmax)``, the mean over the whole
        (padded) vocabulary; 0 leaves the CE untouched, bit for bit.
    """
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    # Select the target logit with a compare instead of a gather: under tensor
    # parallelism the vocabulary axis is sharded and this stays a local op plus a
    # [B, T] reduction, where a gather would all-gather the logits.
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    target_logit = jnp.sum(jnp.where(vocab_ids == targets[..., None], logits, 0.0), axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    ce = log_z - target_logit
    if label_smoothing:
        # -mean_v log_softmax = log_z - mean_v(logits): no [B, T, V] log-probabilities.
        ce = (1.0 - label_smoothing) * ce + label_smoothing * (log_z - jnp.mean(logits, axis=-1))
    return LossSums(
        ce=jnp.sum(ce * mask),
        correct=jnp.sum(correct * mask),
        loss_tokens=jnp.sum(mask),
    )


def _mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``, 0 for a batch without loss tokens rather than NaN."""
    return total / jnp.maximum(count, 1.0)


def dropout_rng(seed: int, step: Any) -> jax.Array:
    """The dropout key of update ``step``: a function of (seed, step) only, so a run
    restarted from a checkpoint at step N draws the same masks as the original."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM), step)


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """``[B, ...]`` -> ``[num_microbatches, B / num_microbatches, ...]``, strided.

    Microbatch ``m`` holds rows ``m, m + M, m + 2M, ...``. With the batch split over
    devices in contiguous blocks, every device then owns an equal slice of every
    microbatch, so the split needs no communication (a contiguous split would put
    each microbatch on a fraction of the devices).
    """

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        return nn.with_logical_constraint(x, (None, "activation_batch") + (None,) * (x.ndim - 2))

    return {name: split(value) for name, value in batch.items()}


def accumulate_gradients(
    loss_fn: Callable[[Any, Batch, jax.Array], tuple[jax.Array, Any]],
    params: Any,
    batch: Batch,
    rng: jax.Array,
    *,
    num_microbatches: int = 1,
    grad_shardings: Any = None,
) -> tuple[Any, Any]:
    """Gradients of a loss summed over microbatches, and its summed auxiliary sums.

    Args:
      loss_fn: ``(params, microbatch, rng) -> (loss, sums)``; ``sums`` is a pytree
        of float32 scalars. Make each microbatch's loss a share of the global one
        (e.g. a sum over a denominator of the whole batch) so that the gradients
        simply add up to the full-batch gradient.
      params: the parameters to differentiate.
      batch: the global batch; microbatch ``m`` is :func:`split_microbatches`'s.
      rng: microbatch ``m`` gets ``fold_in(rng, m)``.
      num_microbatches: accumulate with ``lax.scan`` over this many microbatches.
      grad_shardings: optional NamedShardings like ``params``, to pin the gradient
        accumulator to the parameters' layout.

    Returns:
      ``(grads, sums)``: float32-accumulated gradients (cast back to the params'
      dtypes) and the sums added over microbatches.
    """
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        return grad_fn(params, batch, jax.random.fold_in(rng, 0))

    def accumulate(carry, xs):
        grad_sum, sums = carry
        index, micro = xs
        grads, micro_sums = grad_fn(params, micro, jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
        return (grad_sum, jax.tree.map(jnp.add, sums, micro_sums)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if grad_shardings is not None:
        zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
    micro_batches = split_microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    sums_shape = jax.eval_shape(lambda: loss_fn(params, first, jax.random.fold_in(rng, 0))[1])
    no_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    (grad_sum, sums), _ = jax.lax.scan(
        accumulate, (zeros, no_sums), (jnp.arange(num_microbatches), micro_batches)
    )
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grad_sum, params)
    return grads, sums


@dataclasses.dataclass(frozen=True)
class TokenLoss:
    """GLM's token-level loss (spec 3.5) for :func:`make_train_step`: the summed
    cross-entropy of the loss tokens over the global batch's loss-token count;
    with ``label_smoothing``, the seq2seq fine-tuning loss (spec 4.4).

    A loss for the step factory has ``count`` (the sums entry that normalises the
    loss and weighs a step in a log interval), ``check(batch, mesh,
    num_microbatches)`` (trace-time shape checks naming config keys),
    ``denominator(batch)`` (the global count, known before any forward pass) and
    ``__call__(model, params, batch, static, deterministic, rngs) -> sums``, float32
    scalar sums with ``loss``, ``correct`` and ``count``, added over microbatches.

    ``logits_capacity``: None computes the model's logits at every position and
    :func:`loss_sums` over them; a fraction in (0, 1] computes the tied output layer
    only at the loss positions, up to that fraction of each batch shard's positions
    (glm_jax/sparse_logits.py; same sums, falls back to every position for a batch
    that does not fit).
    """

    label_smoothing: float = 0.0
    logits_capacity: Optional[float] = None
    count = "loss_tokens"

    def __post_init__(self):
        if self.logits_capacity is not None:
            sparse_logits.capacity_for(1, self.logits_capacity)  # checks the range

    def check(self, batch: Batch, mesh: Mesh, num_microbatches: int) -> None:
        _check_batch(batch, mesh, num_microbatches)

    def denominator(self, batch: Batch) -> jax.Array:
        return jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

    def __call__(self, model: GLM, params: Any, batch: Batch, static: Any = None, *, deterministic: bool = False,
                 rngs: Any = None) -> dict[str, jax.Array]:
        if self.logits_capacity is None:
            logits = model.apply({"params": params}, **batch, deterministic=deterministic, rngs=rngs)
            sums = loss_sums(logits, batch["targets"], batch["loss_mask"], self.label_smoothing)
            positions = jnp.asarray(math.prod(batch["targets"].shape), jnp.float32)
        else:
            hidden = model.apply({"params": params}, **batch, deterministic=deterministic, rngs=rngs,
                                 return_hidden=True)
            sums = sparse_logits.token_loss_sums(
                hidden, nn.unbox(params["word_embeddings"]["embedding"]), batch["targets"], batch["loss_mask"],
                capacity_fraction=self.logits_capacity, label_smoothing=self.label_smoothing,
            )
            positions = sums.logit_positions
        return {"loss": sums.ce, "correct": sums.correct, "loss_tokens": sums.loss_tokens,
                "logit_positions": positions}


def loss_and_grads(
    model: GLM,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    *,
    loss: Any = TokenLoss(),
    static: Any = None,
    num_microbatches: int = 1,
    deterministic: bool = False,
    grad_shardings: Any = None,
) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients of ``loss``'s mean over ``batch`` (default: the token-level mean
    CE), and its summed sums.

    Each microbatch's loss is its sum over the *global* denominator (known before
    any forward pass), so the microbatch gradients simply add up to the full-batch
    gradient, accumulated in float32 (:func:`accumulate_gradients`).

    Args:
      model: the GLM module.
      params: its parameters.
      batch: the global batch (model inputs plus what ``loss`` reads).
      rng: dropout key; microbatch ``m`` uses ``fold_in(rng, m)``.
      loss: a loss as :class:`TokenLoss` describes.
      static: the loss's static argument (e.g. a cloze answer window).
      num_microbatches: must divide the batch size.
      deterministic: disable dropout.
      grad_shardings: optional NamedShardings like ``params`` for the accumulator.
    """
    denominator = loss.denominator(batch)

    def microbatch_loss(p: Any, micro: Batch, micro_rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        sums = loss(model, p, micro, static, deterministic=deterministic, rngs={"dropout": micro_rng})
        return sums["loss"] / denominator, sums

    return accumulate_gradients(
        microbatch_loss, params, batch, rng, num_microbatches=num_microbatches, grad_shardings=grad_shardings
    )


# --------------------------------------------------------------------- steps


def _check_batch(batch: Batch, mesh: Mesh, num_microbatches: int) -> None:
    """Static shape checks at trace time, naming the config keys to change."""
    for name in ("targets", "loss_mask"):
        if name not in batch:
            raise ValueError(f"the training batch has no {name!r} feature (got {sorted(batch)})")
    check_batch_divisible(batch["tokens"].shape[0], mesh, num_microbatches, "train.num_microbatches")


def check_batch_divisible(size: int, mesh: Mesh, num_microbatches: int, microbatches_key: str) -> None:
    """The batch must split evenly into microbatches and then over data x fsdp."""
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    if size % (num_microbatches * shards):
        raise ValueError(
            f"global batch size {size} must be divisible by {microbatches_key} ({num_microbatches}) "
            f"x the data*fsdp size of mesh.ici_shape/mesh.dcn_shape ({shards})"
        )


def apply_update(
    optimizer: optax.GradientTransformation,
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    *,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, Metrics]:
    """One optimizer update of ``state``, and its health metrics.

    Returns the next state (``step + 1``) and ``grad_norm`` (global, before
    clipping), ``param_norm`` (after the update) and ``nonfinite``: 1.0 when the
    loss, the gradient norm or the updated parameters' norm is NaN or infinite
    (glm_jax/nonfinite.py acts on it). With ``skip_nonfinite`` such a step keeps
    the old parameters and optimizer state; only the step count advances.
    """
    grad_norm = optax.global_norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    param_norm = optax.global_norm(jax.tree.map(lambda p: p.astype(jnp.float32), params))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    if skip_nonfinite:
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state.params, state.opt_state)
        )
    metrics = {"grad_norm": grad_norm, "param_norm": param_norm, "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    loss: Any = TokenLoss(),
    schedule: Optional[Callable[[Any], jax.Array]] = None,
    num_microbatches: int = 1,
    seed: int = 0,
    skip_nonfinite: bool = False,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """The jitted update ``(state, batch, static=None) -> (new_state, metrics)`` of
    every task: the task brings its ``loss`` (:class:`TokenLoss` for pretraining,
    ``glm_jax.cloze.ChoiceLoss`` for cloze fine-tuning); ``static`` is passed to it.

    Args:
      model_config: the model (dtype, remat_policy and scan_layers included).
      optimizer: e.g. the first result of :func:`glm_jax.optim.make_optimizer`.
      mesh: the device mesh; the state is laid out as :func:`train_state_shardings`.
      loss: see :class:`TokenLoss`.
      schedule: if given, ``metrics['learning_rate']`` is ``schedule(state.step)``.
      num_microbatches: gradient accumulation steps.
      seed: dropout uses :func:`dropout_rng` of (seed, step).
      skip_nonfinite: ``on_nonfinite == 'skip_step'`` (:func:`apply_update`).

    The state argument is donated: do not use it after the call. Metrics are device
    arrays (no host sync): ``loss`` (the loss's mean), ``accuracy`` (over the same
    count), ``grad_norm``, ``param_norm`` and ``nonfinite`` (:func:`apply_update`),
    ``learning_rate`` (with a schedule), the loss's count (``loss_tokens`` or
    ``examples``) and ``tokens`` (all rows x length).
    """
    model = GLM(model_config)
    _, state_shardings = train_state_shardings(model_config, optimizer, mesh, rules)

    def train_step(state: TrainState, batch: Batch, static: Any = None) -> tuple[TrainState, Metrics]:
        loss.check(batch, mesh, num_microbatches)
        with tracing_under(mesh, rules):
            grads, sums = loss_and_grads(
                model, state.params, batch, dropout_rng(seed, state.step), loss=loss, static=static,
                num_microbatches=num_microbatches, grad_shardings=state_shardings.params,
            )
            loss_value = _mean(sums["loss"], sums[loss.count])
            new_state, health = apply_update(optimizer, state, grads, loss_value, skip_nonfinite=skip_nonfinite)
        metrics = {
            "loss": loss_value,
            "accuracy": _mean(sums["correct"], sums[loss.count]),
            **health,
            loss.count: sums[loss.count],
            "tokens": jnp.asarray(math.prod(batch["tokens"].shape), jnp.float32),
        }
        if "logit_positions" in sums:  # where the output layer ran (hardware FLOPs)
            metrics["logit_positions"] = sums["logit_positions"]
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        static_argnums=2,
        donate_argnums=0,
    )


def make_eval_step(
    model_config: ModelConfig,
    mesh: Mesh,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
    *,
    loss: TokenLoss = TokenLoss(),
) -> Callable[[Any, Batch], Metrics]:
    """The jitted ``(params, batch) -> metrics``, without dropout or updates.

    Metrics: ``loss`` and ``accuracy`` of this batch, plus the sums ``ce``,
    ``correct`` and ``loss_tokens`` to aggregate exactly over many batches.
    ``loss`` is the training step's :class:`TokenLoss`, so evaluation computes the
    output layer where training does (``logits_capacity``); its label smoothing is
    not applied (evaluation reports the plain cross-entropy).
    """
    model = GLM(model_config)
    _, param_shardings = params_layout(model_config, mesh, rules)
    plain = dataclasses.replace(loss, label_smoothing=0.0)

    def eval_step(params: Any, batch: Batch) -> Metrics:
        _check_batch(batch, mesh, 1)
        with tracing_under(mesh, rules):
            sums = plain(model, params, batch, deterministic=True)
        return {
            "loss": _mean(sums["loss"], sums["loss_tokens"]),
            "accuracy": _mean(sums["correct"], sums["loss_tokens"]),
            "ce": sums["loss"], "correct": sums["correct"], "loss_tokens": sums["loss_tokens"],
        }

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
