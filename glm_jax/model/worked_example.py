"""The spec's worked example of blank infilling (spec 2.2) as a model batch, and one
forward pass over it (``glm-jax forward``).

The text is ``[CLS] x1 .. x6``; the spans ``x3`` and ``x5 x6`` are masked in Part A
and appear in Part B in the shuffled order ``x5 x6``, ``x3``::

    position  0      1   2   3       4   5       6      7   8   9      10
    token     [CLS]  x1  x2  [MASK]  x4  [MASK]  [sop]  x5  x6  [sop]  x3
    pos       0      1   2   3       4   5       5      5   5   3      3
    block     0      0   0   0       0   0       1      2   3   1      2
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from glm_jax.model.config import ModelConfig
from glm_jax.model.glm import GLM


def worked_example(cls_id: int, mask_id: int, sop_id: int, text_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """The spec's example: text ``[CLS] x1..x6``, spans (3,4) and (5,7), order (5,7), (3,4).

    Returns a batch of one: tokens, position_ids, block_position_ids ``[1, 11]``, sep ``[1]``.
    """
    x = list(text_ids)  # x1..x6
    tokens = [cls_id, x[0], x[1], mask_id, x[3], mask_id, sop_id, x[4], x[5], sop_id, x[2]]
    position_ids = [0, 1, 2, 3, 4, 5, 5, 5, 5, 3, 3]
    block_position_ids = [0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    as_batch = lambda v: np.asarray([v], np.int32)  # noqa: E731
    return dict(
        tokens=as_batch(tokens),
        position_ids=as_batch(position_ids),
        block_position_ids=as_batch(block_position_ids),
        sep=np.asarray([6], np.int32),
    )


@dataclasses.dataclass(frozen=True)
class ForwardPass:
    """One forward pass over the worked example.

    Attributes:
      batch: the :func:`worked_example` batch (tokens etc. ``[1, 11]``, sep ``[1]``).
      logits: ``[1, 11, vocab_size]``.
      params: the parameters used (the given ones, or a random init).
      seconds: the first call's time, compilation included.
    """

    batch: dict[str, np.ndarray]
    logits: Any
    params: Any
    seconds: float


def forward_pass(config: ModelConfig, params: Optional[Any] = None) -> ForwardPass:
    """Run ``GLM(config)`` on the worked example, with ``params`` or (None) a random
    init from ``PRNGKey(0)``. The top ids of the vocabulary stand in for the command
    tokens (any vocabulary has them); ``x1..x6`` are ids 10..15."""
    v = config.vocab_size
    batch = worked_example(cls_id=v - 3, mask_id=v - 2, sop_id=v - 1, text_ids=range(10, 16))
    model = GLM(config)
    if params is None:
        params = nn.unbox(model.init(jax.random.PRNGKey(0), **batch)["params"])
    start = time.perf_counter()
    logits = jax.block_until_ready(jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch))
    return ForwardPass(batch, logits, params, time.perf_counter() - start)
