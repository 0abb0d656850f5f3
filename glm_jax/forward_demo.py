"""``glm-jax forward``: one forward pass over the spec's worked blank-infilling example.

It shows the GLM sample layout (spec 2.2) and runs the model on it: a text of seven
tokens ``[CLS] x1 .. x6`` whose spans ``x3`` and ``x5 x6`` are masked, Part B shuffled.
With ``--checkpoint`` it uses converted weights; otherwise a randomly initialised model.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np


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


def main(config_path: Optional[str], checkpoint: Optional[str], overrides: Sequence[str]) -> int:
    import flax.linen as nn
    import jax

    from glm_jax import config as config_lib
    from glm_jax.model import GLM

    if checkpoint:
        from glm_jax.model_dir import load_model_dir

        model_config, params = load_model_dir(checkpoint)
        if config_path or overrides:
            model_config = config_lib.apply_overrides(
                config_lib.Config(model=model_config), list(overrides)
            ).model
    else:
        model_config = config_lib.load_config(config_path, list(overrides)).model
        params = None

    v = model_config.vocab_size
    # Ids chosen inside any vocabulary: the top ids stand in for the command tokens.
    batch = worked_example(cls_id=v - 3, mask_id=v - 2, sop_id=v - 1, text_ids=range(10, 16))
    model = GLM(model_config)
    if params is None:
        params = nn.unbox(model.init(jax.random.PRNGKey(0), **batch)["params"])
    start = time.perf_counter()
    logits = jax.block_until_ready(jax.jit(lambda p, b: model.apply({"params": p}, **b))(params, batch))
    elapsed = time.perf_counter() - start

    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"model: {model_config.num_layers} layers, hidden {model_config.hidden_size}, "
          f"{n_params:,} parameters ({'converted' if checkpoint else 'random init'})")
    print("position  token  pos  block  part  argmax")
    for t in range(batch["tokens"].shape[1]):
        part = "A" if t < batch["sep"][0] else "B"
        print(f"{t:8d} {batch['tokens'][0, t]:6d} {batch['position_ids'][0, t]:4d} "
              f"{batch['block_position_ids'][0, t]:6d}  {part:>4}  {int(np.argmax(logits[0, t])):6d}")
    print(f"logits {tuple(logits.shape)} {logits.dtype}; first call (compile + run) {elapsed:.2f}s")
    return 0
