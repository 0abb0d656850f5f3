"""NLU as cloze (spec 4.1): choice logits from GLM outputs, the losses, predictions.

Two kinds of tasks (the batch layout is glm_jax/data/superglue/inputs.py's):

* Single-token verbalizers (BoolQ, CB, RTE, WiC, MultiRC), one row per example.
  The logits of the ``[sop]`` row (index ``sep``) are read at the K verbalizer
  token ids: raw logits, the choice logits ``[B, K]``. A softmax over them is the
  paper's Eq. 3 (log-softmax over the vocabulary is shift-invariant, so it adds
  nothing), as ``GLMForSingleTokenCloze`` does.
* Multi-token answers (COPA, WSC, ReCoRD), one row per candidate ``[B, C, L]``.
  Each candidate is scored by the summed log-probability of its answer tokens
  (``[eop]`` included) over ``loss_mask``, divided by ``n_tokens ** length_penalty``
  (WSC: 1, the mean), as ``GLMForMultiTokenCloze`` does. Padded candidates
  (``choice_mask`` 0) get ``score * m - 10000 * (1 - m)``, the official masking.

Losses, per example and masked to the real rows (``label >= 0`` and
``example_id >= 0``): ``"cross_entropy"`` over the choice logits, or WSC's
``"mix"`` = ``-score[label] + CE`` (``finetune_glm.finetune_forward_step``).
Functions return sums so that microbatches and eval batches add up exactly;
divide by ``examples`` at the end, as train.py does with tokens.

The sharded steps (:func:`make_train_step`, :func:`make_eval_step`, :func:`predict`)
are train.py's with this loss: same state, shardings, donation, microbatching
and dropout streams. glm_jax/finetune.py runs them epoch by epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import multihost, sharding, train, train_state
from glm_jax.model import GLM, ModelConfig
from glm_jax.optim import make_optimizer

Array = jax.Array
Batch = Mapping[str, Any]
LossKind = Literal["cross_entropy", "mix"]
LOSSES: tuple[str, ...] = ("cross_entropy", "mix")

# The official padding value for the score of a padded candidate.
PADDED_CHOICE_LOGIT = -10000.0


class ClozeSums(NamedTuple):
    """Sums over the real examples of a batch (float32 scalars)."""

    loss: Array  # sum of the per-example loss
    correct: Array  # sum of (argmax == label)
    examples: Array  # number of real examples


def single_token_logits(logits: Array, sep: Array, choice_ids: Array) -> Array:
    """The verbalizer logits at the ``[sop]`` row.

    Args:
      logits: ``[B, T, V]`` model outputs.
      sep: ``[B]`` int, Part A length == index of the ``[sop]`` row.
      choice_ids: ``[B, K]`` int verbalizer token ids, in label order.

    Returns:
      ``[B, K]`` float32 raw logits.
    """
    at_sop = jnp.take_along_axis(logits, sep.astype(jnp.int32)[:, None, None], axis=1)[:, 0]  # [B, V]
    return jnp.take_along_axis(at_sop, choice_ids.astype(jnp.int32), axis=1).astype(jnp.float32)


def target_log_probs(logits: Array, targets: Array) -> Array:
    """``log_softmax(logits)[..., targets]``: ``[N, L, V]``, ``[N, L]`` -> ``[N, L]`` float32.

    The target logit is selected by comparison rather than a gather, so that a
    vocabulary sharded over ``tensor`` stays a local op plus a reduction (as in
    train.loss_sums).
    """
    logits = logits.astype(jnp.float32)
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    target_logit = jnp.sum(jnp.where(vocab_ids == targets[..., None], logits, 0.0), axis=-1)
    return target_logit - jax.nn.logsumexp(logits, axis=-1)


def candidate_scores(logits: Array, targets: Array, loss_mask: Array, length_penalty: float = 0.0) -> Array:
    """Score of each candidate row: ``sum(log p(target) * mask) / n_tokens ** lp``.

    Args:
      logits: ``[N, L, V]`` (N = batch * candidates).
      targets: ``[N, L]`` int, the answer tokens (``[eop]`` included) where
        ``loss_mask`` is 1.
      loss_mask: ``[N, L]`` 0/1.
      length_penalty: 0 sums, 1 averages (WSC).

    Returns:
      ``[N]`` float32. A row without answer tokens (a padded candidate) scores 0,
      not NaN (its token count is taken as 1), so that masking it stays finite.
    """
    mask = loss_mask.astype(jnp.float32)
    total = jnp.sum(target_log_probs(logits, targets) * mask, axis=-1)
    if length_penalty:
        total = total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0) ** length_penalty
    return total


def mask_choices(scores: Array, choice_mask: Array) -> Array:
    """``scores * m - 10000 * (1 - m)``: ``[B, C]`` scores, 0/1 ``[B, C]`` mask."""
    m = choice_mask.astype(jnp.float32)
    return scores * m + PADDED_CHOICE_LOGIT * (1.0 - m)


def example_weights(batch: Mapping[str, Array]) -> Array:
    """``[B]`` float32: 1 for an example with a known label that is not batch padding."""
    real = batch["label"] >= 0
    if "example_id" in batch:
        real = real & (batch["example_id"] >= 0)
    return real.astype(jnp.float32)


def per_example_loss(choice_logits: Array, label: Array, loss: LossKind = "cross_entropy") -> Array:
    """``[B]`` float32 loss of each example (rows with ``label < 0`` give garbage: weight them out).

    Args:
      choice_logits: ``[B, K]`` (masked scores for multi-token tasks).
      label: ``[B]`` int gold choice.
      loss: ``"cross_entropy"``, or ``"mix"``: ``-choice_logits[label] + CE``.
    """
    if loss not in LOSSES:
        raise ValueError(f"cloze loss must be one of {LOSSES}, got {loss!r}")
    choice_logits = choice_logits.astype(jnp.float32)
    safe_label = jnp.maximum(label, 0).astype(jnp.int32)
    gold = jnp.take_along_axis(choice_logits, safe_label[:, None], axis=1)[:, 0]
    ce = jax.nn.logsumexp(choice_logits, axis=-1) - gold
    return ce - gold if loss == "mix" else ce


def predictions(choice_logits: Array) -> Array:
    """``[B]`` int32: the argmax choice (first on ties, like torch and numpy)."""
    return jnp.argmax(choice_logits, axis=-1).astype(jnp.int32)


def cloze_sums(
    choice_logits: Array, batch: Mapping[str, Array], loss: LossKind = "cross_entropy"
) -> ClozeSums:
    """Loss and accuracy sums over the real examples of ``batch`` (see :func:`example_weights`)."""
    weights = example_weights(batch)
    losses = per_example_loss(choice_logits, batch["label"], loss)
    correct = (predictions(choice_logits) == batch["label"]).astype(jnp.float32)
    return ClozeSums(
        loss=jnp.sum(losses * weights), correct=jnp.sum(correct * weights), examples=jnp.sum(weights)
    )


def final_hidden(model: Any, params: Any, *inputs: Array, **kwargs: Any) -> Array:
    """``[B, T, D]``: the output of GLM's final LayerNorm, which the tied head multiplies
    by the word embedding to give the logits.

    Single-token tasks need the logits of one row and K tokens, not ``[B, T, V]``:
    the LayerNorm output is captured as an intermediate and the logits output is
    left unused, so under jit XLA drops the full-vocabulary matmul (and its
    gradient), which dominates the step for large vocabularies and long inputs.
    """
    _, state = model.apply(
        {"params": params}, *inputs, **kwargs,
        capture_intermediates=lambda module, method: module.name == "final_layernorm" and method == "__call__",
        mutable=["intermediates"],
    )
    return state["intermediates"]["final_layernorm"]["__call__"][0]


def sop_choice_logits(hidden: Array, embedding: Array, sep: Array, choice_ids: Array, dtype: Any) -> Array:
    """:func:`single_token_logits` from the final hidden states, computed as the model's
    tied head computes logits (operands in the compute ``dtype``, float32 accumulation).

    Args:
      hidden: ``[B, T, D]`` (:func:`final_hidden`).
      embedding: ``[V, D]`` the word embedding.
      sep: ``[B]``; choice_ids: ``[B, K]``.

    Returns:
      ``[B, K]`` float32.
    """
    at_sop = jnp.take_along_axis(hidden, sep.astype(jnp.int32)[:, None, None], axis=1)[:, 0]  # [B, D]
    rows = jnp.take(embedding, choice_ids.astype(jnp.int32), axis=0)  # [B, K, D]
    return jnp.einsum(
        "bd,bkd->bk", at_sop.astype(dtype), rows.astype(dtype), preferred_element_type=jnp.float32
    )


def answer_window(loss_mask: np.ndarray, multiple: int = 8) -> int:
    """The static Part B window of a multi-token batch (host side): the longest
    answer (tokens + ``[eop]``, the loss tokens, which start at ``sep``) rounded up
    to ``multiple``, so that a few window sizes cover a whole run."""
    longest = int(np.max(np.sum(np.asarray(loss_mask) != 0, axis=-1), initial=1))
    return max(multiple, -(-longest // multiple) * multiple)


def window_logits(
    hidden: Array, embedding: Array, sep: Array, targets: Array, loss_mask: Array, window: int, dtype: Any
) -> tuple[Array, Array, Array]:
    """Logits, targets and loss mask of the ``window`` rows from ``sep`` on.

    The answer tokens of a multi-token row sit at ``sep .. sep + len - 1``; only
    those rows need logits, so ``[N, window, V]`` replaces ``[N, T, V]`` (for
    ReCoRD, T = 512 and answers of a few tokens). A row whose loss tokens do not
    all fit in the window gets a NaN mask, so a too-small window cannot go unseen.

    Args:
      hidden: ``[N, T, D]`` (:func:`final_hidden`); embedding: ``[V, D]``.
      sep: ``[N]``; targets, loss_mask: ``[N, T]``.

    Returns:
      ``([N, W, V] float32 logits, [N, W] targets, [N, W] float32 mask)``.
    """
    length = hidden.shape[1]
    positions = sep.astype(jnp.int32)[:, None] + jnp.arange(window)[None, :]  # [N, W]
    inside = positions < length
    positions = jnp.minimum(positions, length - 1)
    rows = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # [N, W, D]
    logits = jnp.einsum(
        "nwd,vd->nwv", rows.astype(dtype), embedding.astype(dtype), preferred_element_type=jnp.float32
    )
    mask = jnp.take_along_axis(loss_mask, positions, axis=1).astype(jnp.float32) * inside
    covered = jnp.sum(mask, axis=-1) == jnp.sum(loss_mask.astype(jnp.float32), axis=-1)
    mask = jnp.where(covered[:, None], mask, jnp.nan)
    return logits, jnp.take_along_axis(targets, positions, axis=1), mask


def is_multi_token(batch: Mapping[str, Any]) -> bool:
    """Multi-token batches carry ``targets`` ``[B, C, L]``; single-token ones ``choice_ids``."""
    return "targets" in batch and len(batch["targets"].shape) == 3


def choice_logits(
    model: Any,
    params: Any,
    batch: Mapping[str, Array],
    *,
    length_penalty: float = 0.0,
    answer_window: Optional[int] = None,
    deterministic: bool = True,
    rngs: Optional[Mapping[str, Array]] = None,
) -> Array:
    """Run the model on a cloze batch and return its choice logits.

    Args:
      model: a ``glm_jax.model.GLM``.
      params: its parameters.
      batch: single-token: ``tokens, position_ids, block_position_ids [B, T]``,
        ``sep [B]``, ``choice_ids [B, K]``. Multi-token: those as ``[B, C, L]`` /
        ``sep [B, C]`` plus ``targets, loss_mask [B, C, L]`` and ``choice_mask [B, C]``
        (default all 1).
      length_penalty: multi-token only (see :func:`candidate_scores`).
      answer_window: multi-token only: compute logits for this many rows from
        ``sep`` on (:func:`window_logits`, e.g. :func:`answer_window` of the batch)
        instead of all T; None: all rows.
      deterministic, rngs: dropout (training passes False and a 'dropout' key).

    Returns:
      ``[B, K]`` or ``[B, C]`` float32; padded candidates at about -10000.
    """
    inputs = ("tokens", "position_ids", "block_position_ids")
    if not is_multi_token(batch):
        hidden = final_hidden(
            model, params, *(batch[k] for k in inputs), sep=batch["sep"], deterministic=deterministic, rngs=rngs
        )
        return sop_choice_logits(
            hidden, nn.unbox(params["word_embeddings"]["embedding"]), batch["sep"], batch["choice_ids"],
            model.config.dtype,
        )
    size, candidates, length = batch["tokens"].shape
    # One model row per candidate: [B, C, L] -> [B * C, L] keeps the batch-major
    # order, so the batch sharding carries over.
    flat = {k: batch[k].reshape(size * candidates, length) for k in (*inputs, "targets", "loss_mask")}
    sep = batch["sep"].reshape(size * candidates)
    if answer_window is None:
        logits = model.apply(
            {"params": params}, *(flat[k] for k in inputs), sep=sep, deterministic=deterministic, rngs=rngs
        )
        targets, loss_mask = flat["targets"], flat["loss_mask"]
    else:
        hidden = final_hidden(
            model, params, *(flat[k] for k in inputs), sep=sep, deterministic=deterministic, rngs=rngs
        )
        logits, targets, loss_mask = window_logits(
            hidden, nn.unbox(params["word_embeddings"]["embedding"]), sep, flat["targets"], flat["loss_mask"],
            answer_window, model.config.dtype,
        )
    scores = candidate_scores(logits, targets, loss_mask, length_penalty)
    scores = scores.reshape(size, candidates)
    choice_mask = batch.get("choice_mask")
    return scores if choice_mask is None else mask_choices(scores, choice_mask)


# ------------------------------------------------------------- sharded steps


def _check_batch(batch: Mapping[str, Any], mesh, num_microbatches: int) -> None:
    multi = is_multi_token(batch)
    needed = ("label", "sep", *(("targets", "loss_mask") if multi else ("choice_ids",)))
    missing = [k for k in needed if k not in batch]
    if missing:
        raise ValueError(f"the cloze batch has no {missing} (got {sorted(batch)})")
    train.check_batch_divisible(batch["tokens"].shape[0], mesh, num_microbatches, "finetune.num_microbatches")


@dataclasses.dataclass(frozen=True)
class ChoiceLoss:
    """The cloze loss for :func:`glm_jax.train.make_train_step` (the protocol of
    ``train.TokenLoss``): the per-example loss over the choices (``loss``:
    cross-entropy, or WSC's ``mix``), summed over the real examples and divided by
    the global batch's count of them; dropout on. The step's static argument is
    the answer window of a multi-token batch (:func:`answer_window`)."""

    loss: str = "cross_entropy"
    length_penalty: float = 0.0
    count = "examples"

    def check(self, batch: Batch, mesh, num_microbatches: int) -> None:
        _check_batch(batch, mesh, num_microbatches)

    def denominator(self, batch: Batch) -> Array:
        return jnp.maximum(jnp.sum(example_weights(batch)), 1.0)

    def __call__(self, model, params, batch, static=None, *, deterministic=False, rngs=None) -> dict[str, Array]:
        logits = choice_logits(
            model, params, batch, length_penalty=self.length_penalty, answer_window=static,
            deterministic=deterministic, rngs=rngs,
        )
        return cloze_sums(logits, batch, self.loss)._asdict()


def make_eval_step(
    model_config: ModelConfig,
    mesh,
    *,
    loss: str = "cross_entropy",
    length_penalty: float = 0.0,
    rules: Any = sharding.LOGICAL_AXIS_RULES,
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """The jitted ``(params, batch, answer_window=None) -> outputs`` without dropout
    (``answer_window`` static, as in :func:`choice_logits`): ``choice_logits``
    ``[B, K]`` (replicated, so every process sees all rows) and the sums ``loss``,
    ``correct``, ``examples`` over the real labelled examples."""
    model = GLM(model_config)
    _, param_shardings = train_state.params_layout(model_config, mesh, rules)

    def eval_step(params, batch, answer_window=None):
        _check_batch(batch, mesh, 1)
        with train_state.tracing_under(mesh, rules):
            logits = choice_logits(model, params, batch, length_penalty=length_penalty, answer_window=answer_window)
            sums = cloze_sums(logits, batch, loss)
        return {"choice_logits": logits, **sums._asdict()}

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=train_state.replicated(mesh),
        static_argnums=2,
    )


def pad_rows(batch: Batch, rows: int) -> dict[str, np.ndarray]:
    """``batch`` with copies of its first row appended up to ``rows`` rows, marked as
    padding (``example_id`` and ``label`` -1), so that any batch fits the mesh."""
    n = len(batch["label"])
    if n == rows:
        return dict(batch)
    out = {k: np.concatenate([v, np.repeat(v[:1], rows - n, axis=0)]) for k, v in batch.items()}
    for key in ("example_id", "label"):
        if key in out:
            out[key][n:] = -1
    if "example_id" not in out:
        out["example_id"] = np.where(np.arange(rows) < n, np.arange(rows), -1).astype(np.int32)
    return out


def predict(
    eval_step: Callable, params: Any, batches: Iterable[Batch], mesh
) -> tuple[dict[int, int], dict[str, float]]:
    """Choices for every real row of ``batches`` (whole batches, the same on every
    process), and the summed eval sums.

    Returns:
      ``({example_id: argmax choice}, sums)``: ``loss``, ``correct`` and ``examples``
      over the labelled rows, ``predicted``: rows given a choice.
    """
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    choices: dict[int, int] = {}
    sums = {"loss": 0.0, "correct": 0.0, "examples": 0.0}
    for batch in batches:
        n = len(batch["label"])
        batch = pad_rows(batch, -(-n // shards) * shards)
        size = len(batch["label"])
        rows = multihost.process_batch_indices(mesh, size)
        local = {k: np.asarray(v)[rows] for k, v in batch.items()}
        window = answer_window(batch["loss_mask"]) if is_multi_token(batch) else None
        out = eval_step(params, multihost.global_batch_from_local(local, mesh, size), window)
        logits = np.asarray(out["choice_logits"])
        for key in sums:
            sums[key] += float(out[key])
        for example_id, row in zip(batch["example_id"], logits):
            if example_id >= 0:
                choices[int(example_id)] = int(np.argmax(row))
    sums["predicted"] = float(len(choices))
    return choices, sums


@functools.lru_cache(maxsize=4)
def steps_for(model_config, optimizer_config, mesh, loss, length_penalty, num_microbatches, seed,
              skip_nonfinite=False):
    """``(optimizer, train_step, eval_step)`` for an ``OptimizerConfig``, built once per
    settings in a process: a later run with the same settings (a restart, another
    output directory) finds its jitted steps compiled already."""
    optimizer, schedule = make_optimizer(optimizer_config)
    train_step = train.make_train_step(
        model_config, optimizer, mesh, loss=ChoiceLoss(loss, length_penalty), schedule=schedule,
        num_microbatches=num_microbatches, seed=seed, skip_nonfinite=skip_nonfinite,
    )
    return optimizer, train_step, eval_step_for(model_config, mesh, loss, length_penalty)


@functools.lru_cache(maxsize=4)
def eval_step_for(model_config: ModelConfig, mesh, loss: str = "cross_entropy", length_penalty: float = 0.0):
    """:func:`make_eval_step`, built once per settings in a process (pass the
    arguments positionally: the cache keys on how they are passed)."""
    return make_eval_step(model_config, mesh, loss=loss, length_penalty=length_penalty)


class ClozeObjective:
    """Cloze fine-tuning for :func:`glm_jax.finetune.run` (its ``Objective``): the
    choice loss (:class:`ChoiceLoss`) and the validation choices of
    :func:`predict`, whose mean choice loss is reported beside the task's metrics."""

    weight_key = ChoiceLoss.count
    loss_name = "choice loss"

    def __init__(self) -> None:
        self._eval_step = self._mesh = None

    def build(self, config: Any, mesh) -> tuple[Any, Callable]:
        """``(optimizer, train_step)`` for a resolved ``FinetuneRunConfig``."""
        ft = config.finetune
        optimizer, train_step, self._eval_step = steps_for(
            config.model, config.optimizer, mesh, ft.loss, ft.length_penalty, ft.num_microbatches, ft.seed,
            ft.on_nonfinite == "skip_step",
        )
        self._mesh = mesh
        return optimizer, train_step

    def static(self, batch: Batch) -> Any:
        # Multi-token rows need logits only over their answers (window_logits).
        return answer_window(batch["loss_mask"]) if is_multi_token(batch) else None

    def evaluate(self, params: Any, data: Any, output_dir: Optional[str]) -> tuple[dict[str, float], dict[str, float]]:
        """``(metrics, {"loss": mean choice loss})`` of ``data.evaluate`` (a ``ClozeData``)."""
        sums: dict[str, float] = {}

        def predict_fn(batches):
            choices, batch_sums = predict(self._eval_step, params, batches, self._mesh)
            sums.update(batch_sums)
            return choices

        scores = data.evaluate(predict_fn, output_dir)
        return scores, {"loss": sums["loss"] / max(sums["examples"], 1.0)}

