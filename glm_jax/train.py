"""Training: the state, GLM's token-level loss, microbatched gradients, sharded steps.

The loss is the official one (spec 3.5, ``pretrain_glm.forward_step``): float32
cross-entropy per token, then ``sum(ce * loss_mask) / sum(loss_mask)`` over the
whole global batch, a token-level mean rather than a mean of per-example means.
Gradient accumulation keeps that exact: every microbatch's summed CE is divided by
the loss-token count of the *global* batch (known before any forward pass), so the
microbatch gradients add up to the full-batch gradient.

The steps are jitted with explicit shardings derived from the model's logical axis
annotations (glm_jax/sharding.py); parameters and optimizer moments share one
layout, optimizer scalars (Adam's count) are replicated, the batch is split over
``data`` and ``fsdp``, and the state is donated. The mesh and the logical rules are
entered while tracing, so the returned functions need no surrounding context.

Batches are dicts of ``[batch, ...]`` arrays: the model's inputs (tokens,
position_ids, block_position_ids, sep or segment_ids + part_a) plus ``targets``
(int ``[B, T]``, aligned with the inputs) and ``loss_mask`` (0/1 ``[B, T]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glm_jax import nonfinite, sharding
from glm_jax.model import GLM, ModelConfig

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
        looks the device kind up in glm_jax.trainer.PEAK_TFLOPS (CPU: no MFU).
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
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 10

    def __post_init__(self):
        nonfinite.check_policy(self.on_nonfinite, self.max_consecutive_skips, "train")
        for name in ("global_batch_size", "num_microbatches", "steps", "log_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.global_batch_size % self.num_microbatches:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be divisible by "
                f"train.num_microbatches ({self.num_microbatches})"
            )
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0, got {self.eval_every}")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a plain pytree (no functions inside),
    so it checkpoints and shards as is.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: the model parameters (unboxed).
      opt_state: the optax state of the optimizer.
    """

    step: jax.Array
    params: Any
    opt_state: Any


class LossSums(NamedTuple):
    """Sums over the loss tokens of a batch (float32 scalars); add them across
    microbatches or eval batches, divide at the end."""

    ce: jax.Array  # sum of cross-entropy * loss_mask
    correct: jax.Array  # sum of (argmax == target) * loss_mask
    loss_tokens: jax.Array  # sum of loss_mask (exact in float32 up to 2**24 tokens)


# ------------------------------------------------------------------------- loss


def loss_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> LossSums:
    """Masked cross-entropy and accuracy sums.

    Args:
      logits: ``[B, T, V]``, upcast to float32.
      targets: ``[B, T]`` int token ids.
      loss_mask: ``[B, T]``, 0/1 (any numeric dtype).
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
    return LossSums(
        ce=jnp.sum((log_z - target_logit) * mask),
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


def loss_and_grads(
    model: GLM,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    *,
    num_microbatches: int = 1,
    deterministic: bool = False,
    grad_shardings: Any = None,
) -> tuple[Any, LossSums]:
    """Gradients of the token-level mean loss of ``batch``, and its loss sums.

    Args:
      model: the GLM module.
      params: its parameters.
      batch: the global batch (model inputs, ``targets``, ``loss_mask``).
      rng: dropout key; microbatch ``m`` uses ``fold_in(rng, m)``.
      num_microbatches: accumulate over this many microbatches with ``lax.scan``;
        must divide the batch size.
      deterministic: disable dropout.
      grad_shardings: optional NamedShardings like ``params``, to pin the gradient
        accumulator to the parameters' layout.

    Returns:
      ``(grads, sums)``: grads of ``sum(ce * mask) / sum(mask)`` over the whole
      batch (float32 accumulation), and the summed :class:`LossSums`.
    """
    # The global denominator, known before any forward pass: each microbatch's loss
    # is its CE sum over this, so the microbatch gradients simply add up.
    denominator = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

    def microbatch_loss(p: Any, micro: Batch, micro_rng: jax.Array) -> tuple[jax.Array, LossSums]:
        logits = model.apply(
            {"params": p}, **micro, deterministic=deterministic, rngs={"dropout": micro_rng}
        )
        sums = loss_sums(logits, micro["targets"], micro["loss_mask"])
        return sums.ce / denominator, sums

    return accumulate_gradients(
        microbatch_loss, params, batch, rng, num_microbatches=num_microbatches, grad_shardings=grad_shardings
    )


# --------------------------------------------------------------- state and steps


@contextlib.contextmanager
def tracing_under(mesh: Mesh, rules: Any):
    """The mesh and rules while a jitted function traces (``jax.set_mesh`` is not
    allowed inside jit; the abstract mesh is all the constraints need)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value (scalars, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _init_inputs(mesh: Mesh) -> dict[str, jax.Array]:
    """A dummy batch for tracing ``model.init``: parameter shapes do not depend on the
    batch, and one row per data-parallel shard keeps every constraint divisible."""
    rows = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    ids = jnp.zeros((rows, 2), jnp.int32)
    return dict(tokens=ids, position_ids=ids, block_position_ids=ids, sep=jnp.ones((rows,), jnp.int32))


def params_layout(
    model_config: ModelConfig, mesh: Mesh, rules: Any = sharding.LOGICAL_AXIS_RULES
) -> tuple[Any, Any]:
    """``(abstract_params, param_shardings)`` of the model on ``mesh``, without
    allocating anything. Raises ValueError naming any parameter whose dimension does
    not divide its mesh axes."""
    model = GLM(model_config)
    with tracing_under(mesh, rules):
        return sharding.abstract_params_and_shardings(
            lambda rng: model.init(rng, **_init_inputs(mesh))["params"], mesh, jax.random.key(0), rules=rules
        )


def train_state_shardings(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> tuple[TrainState, TrainState]:
    """``(abstract_state, state_shardings)``: ShapeDtypeStructs and NamedShardings.

    Optimizer-state trees shaped like the parameters (Adam's mu and nu) take the
    parameters' shardings; every other optimizer leaf (counts) is replicated.
    """
    abstract_params, param_shardings = params_layout(model_config, mesh, rules)
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    whole = replicated(mesh)
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda _, param_sharding: param_sharding,
        abstract_opt_state,
        param_shardings,
        transform_non_params=lambda _: whole,
    )
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt_state
    )
    shardings = TrainState(step=whole, params=param_shardings, opt_state=opt_shardings)
    return abstract, shardings


def init_train_state(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rng: jax.Array | int,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> TrainState:
    """A fresh state, created directly in its sharded layout.

    Init runs inside one jit whose outputs carry the state shardings, so every device
    materialises only its shards; no host ever holds the full model.

    Args:
      rng: a PRNG key or an int seed; with several processes, the same on each.
    """
    model = GLM(model_config)
    _, shardings = train_state_shardings(model_config, optimizer, mesh, rules)
    # A host constant, not an argument: a process-local key array cannot be an
    # input of a computation that spans processes.
    if isinstance(rng, int):
        seed, key_data = rng, None
    else:
        seed = None
        is_typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
        key_data = np.asarray(jax.random.key_data(rng) if is_typed else rng)

    def init() -> TrainState:
        key = jax.random.key(seed) if key_data is None else jax.random.wrap_key_data(key_data)
        with tracing_under(mesh, rules):
            params = nn.unbox(model.init(key, **_init_inputs(mesh))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return jax.jit(init, out_shardings=shardings)()


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
    schedule: Optional[Callable[[Any], jax.Array]] = None,
    num_microbatches: int = 1,
    seed: int = 0,
    skip_nonfinite: bool = False,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The jitted update ``(state, batch) -> (new_state, metrics)``.

    Args:
      model_config: the model (dtype, remat_policy and scan_layers included).
      optimizer: e.g. the first result of :func:`glm_jax.optim.make_optimizer`.
      mesh: the device mesh; the state is laid out as :func:`train_state_shardings`.
      schedule: if given, ``metrics['learning_rate']`` is ``schedule(state.step)``.
      num_microbatches: gradient accumulation steps (``train.num_microbatches``).
      seed: ``train.seed``; dropout uses :func:`dropout_rng` of (seed, step).
      skip_nonfinite: ``train.on_nonfinite == 'skip_step'`` (:func:`apply_update`).

    The state argument is donated: do not use it after the call. Metrics are device
    arrays (no host sync): ``loss`` (token-level mean CE), ``accuracy`` (on the loss
    tokens), ``grad_norm``, ``param_norm`` and ``nonfinite`` (:func:`apply_update`),
    ``learning_rate`` (with a schedule), ``loss_tokens`` (sum of loss_mask) and
    ``tokens`` (B * T).
    """
    model = GLM(model_config)
    _, state_shardings = train_state_shardings(model_config, optimizer, mesh, rules)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        _check_batch(batch, mesh, num_microbatches)
        with tracing_under(mesh, rules):
            grads, sums = loss_and_grads(
                model,
                state.params,
                batch,
                dropout_rng(seed, state.step),
                num_microbatches=num_microbatches,
                grad_shardings=state_shardings.params,
            )
            loss = _mean(sums.ce, sums.loss_tokens)
            new_state, health = apply_update(optimizer, state, grads, loss, skip_nonfinite=skip_nonfinite)
        metrics = {
            "loss": loss,
            "accuracy": _mean(sums.correct, sums.loss_tokens),
            **health,
            "loss_tokens": sums.loss_tokens,
            "tokens": jnp.asarray(math.prod(batch["tokens"].shape), jnp.int32),
        }
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )


def make_eval_step(
    model_config: ModelConfig,
    mesh: Mesh,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> Callable[[Any, Batch], Metrics]:
    """The jitted ``(params, batch) -> metrics``, without dropout or updates.

    Metrics: ``loss`` and ``accuracy`` of this batch, plus the sums ``ce``,
    ``correct`` and ``loss_tokens`` to aggregate exactly over many batches.
    """
    model = GLM(model_config)
    _, param_shardings = params_layout(model_config, mesh, rules)

    def eval_step(params: Any, batch: Batch) -> Metrics:
        _check_batch(batch, mesh, 1)
        with tracing_under(mesh, rules):
            logits = model.apply({"params": params}, **batch, deterministic=True)
            sums = loss_sums(logits, batch["targets"], batch["loss_mask"])
        return {
            "loss": _mean(sums.ce, sums.loss_tokens),
            "accuracy": _mean(sums.correct, sums.loss_tokens),
            **sums._asdict(),
        }

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
