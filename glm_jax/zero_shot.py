"""Zero-shot language modelling (spec 4.5): LAMBADA accuracy and perplexity.

The rows come from glm_jax/data/language_model.py (the official layouts); this
module scores them with a model: one jitted, sharded step gives every row's summed
negative log-likelihood over its loss tokens and whether every one of them is the
argmax. Rows are batched, padded to the mesh's batch shards with rows that score
nothing, and every process feeds its own rows of each batch (the scores come back
replicated, so every process sees all of them).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glm_jax import multihost, sharding
from glm_jax.data import language_model
from glm_jax.model import GLM, ModelConfig
from glm_jax.train_state import params_layout, replicated, tracing_under

Row = dict[str, np.ndarray]
ScoreStep = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def row_scores(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> dict[str, jax.Array]:
    """Per row: ``nll`` (summed over the loss tokens), ``all_correct`` (1.0 when
    every loss token is the argmax; rows without one count as correct, as in the
    official accuracy), ``tokens`` (loss tokens). Logits ``[B, T, V]``, the rest ``[B, T]``."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    right = (jnp.argmax(logits, axis=-1) == targets) | (mask == 0)
    return {
        "nll": -jnp.sum(target_log_prob * mask, axis=-1),
        "all_correct": jnp.all(right, axis=-1).astype(jnp.float32),
        "tokens": jnp.sum(mask, axis=-1),
    }


def make_score_step(model_config: ModelConfig, mesh, rules: Any = sharding.LOGICAL_AXIS_RULES) -> ScoreStep:
    """The jitted ``(params, batch) -> row scores`` (:func:`row_scores`), no dropout."""
    model = GLM(model_config)
    _, param_shardings = params_layout(model_config, mesh, rules)

    def score(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        inputs = {k: batch[k] for k in ("tokens", "position_ids", "block_position_ids", "sep")}
        with tracing_under(mesh, rules):
            logits = model.apply({"params": params}, **inputs, deterministic=True)
            return row_scores(logits, batch["targets"], batch["loss_mask"])

    return jax.jit(score, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def score_rows(score_step: ScoreStep, params: Any, rows: Iterable[Row], mesh, batch_size: int, *,
               total: int | None = None, print_fn: Callable[[str], None] = lambda _: None,
               log_every: int = 10) -> Iterator[dict[str, float]]:
    """Every row's scores, in order: ``batch_size`` rows at a time (rounded up to the
    mesh's batch shards), the last batch padded with rows that score nothing.
    Prints examples/s and the ETA every ``log_every`` batches when ``total`` is given."""
    shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    size = -(-batch_size // shards) * shards
    start, done, batches = time.perf_counter(), 0, 0
    iterator = iter(rows)
    while True:
        chunk = [row for _, row in zip(range(size), iterator)]
        if not chunk:
            return
        real = len(chunk)
        filler = {k: (np.zeros_like(v) if k == "loss_mask" else v) for k, v in chunk[0].items()}
        chunk += [filler] * (size - real)
        batch = {k: np.stack([row[k] for row in chunk]) for k in chunk[0]}
        local = {k: v[multihost.process_batch_indices(mesh, size)] for k, v in batch.items()}
        out = jax.device_get(score_step(params, multihost.global_batch_from_local(local, mesh, size)))
        for i in range(real):
            yield {k: float(v[i]) for k, v in out.items()}
        done, batches = done + real, batches + 1
        if total and (batches % log_every == 0 or done >= total):
            rate = done / max(time.perf_counter() - start, 1e-9)
            print_fn(f"scored {done}/{total} rows | {rate:.1f} rows/s | ETA {max(total - done, 0) / rate:.0f}s")


def lambada_accuracy(score_step: ScoreStep, params: Any, vocabulary: Any, texts: Sequence[str], mesh, *,
                     seq_length: int = 512, unidirectional: bool = False, batch_size: int = 8,
                     print_fn: Callable[[str], None] = lambda _: None) -> dict[str, float]:
    """LAMBADA last-word accuracy (percent) over ``texts``: an example is right when
    every token of its last word is the model's argmax."""
    ct = vocabulary.command_tokens
    rows = (language_model.lambada_row(*language_model.lambada_split(text, vocabulary), seq_length, ct,
                                       unidirectional=unidirectional) for text in texts)
    correct = sum(s["all_correct"] for s in score_rows(score_step, params, rows, mesh, batch_size,
                                                       total=len(texts), print_fn=print_fn))
    return {"accuracy": 100.0 * correct / len(texts), "correct": correct, "examples": float(len(texts))}


def perplexity(score_step: ScoreStep, params: Any, vocabulary: Any, documents: Sequence[str], num_words: int,
               mesh, *, seq_length: int = 1024, stride: int = 256, unidirectional: bool = False,
               batch_size: int = 8, print_fn: Callable[[str], None] = lambda _: None) -> dict[str, float]:
    """Token- and word-level perplexity of ``documents`` with overlapping windows
    (``language_model.perplexity_rows``); ``num_words`` counts the original words."""
    ct = vocabulary.command_tokens
    encoded = [list(vocabulary.encode(document)) for document in documents]
    num_tokens = sum(len(tokens) for tokens in encoded)
    total = sum(language_model.num_windows(len(tokens), seq_length, stride) for tokens in encoded)
    rows = (row for tokens in encoded
            for row in language_model.perplexity_rows(tokens, seq_length, stride, ct, unidirectional=unidirectional))
    nll = sum(s["nll"] for s in score_rows(score_step, params, rows, mesh, batch_size, total=total,
                                           print_fn=print_fn))
    return {**language_model.perplexities(nll, num_tokens, num_words), "tokens": float(num_tokens),
            "words": float(num_words)}
