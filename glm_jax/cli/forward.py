"""``glm-jax forward``: one forward pass over the spec's worked blank-infilling example.

It shows the GLM sample layout (spec 2.2) and runs the model on it
(glm_jax/model/worked_example.py): a text of seven tokens ``[CLS] x1 .. x6`` whose
spans ``x3`` and ``x5 x6`` are masked, Part B shuffled. With ``--checkpoint`` it
uses converted weights; otherwise a randomly initialised model.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from glm_jax import config as config_lib
from glm_jax import model_dir
from glm_jax.model.worked_example import forward_pass


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``forward``'s options to ``parser``; returns it."""
    parser.add_argument("--config", default=None, help="YAML config file (default: the tiny preset)")
    parser.add_argument("--checkpoint", default=None,
                        help="glm-jax model directory, from `glm-jax convert` (default: random weights)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.dtype=bfloat16")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``glm-jax forward`` with parsed ``args``: the layout table and argmax ids."""
    if args.checkpoint:
        model_config, params = model_dir.load_model_dir(args.checkpoint)
        if args.config or args.overrides:
            model_config = config_lib.apply_overrides(
                config_lib.Config(model=model_config), list(args.overrides)
            ).model
    else:
        model_config = config_lib.load_config(args.config, list(args.overrides)).model
        params = None
    result = forward_pass(model_config, params)
    batch, logits = result.batch, result.logits

    n_params = sum(x.size for x in jax.tree.leaves(result.params))
    print(f"model: {model_config.num_layers} layers, hidden {model_config.hidden_size}, "
          f"{n_params:,} parameters ({'converted' if args.checkpoint else 'random init'})")
    print("position  token  pos  block  part  argmax")
    for t in range(batch["tokens"].shape[1]):
        part = "A" if t < batch["sep"][0] else "B"
        print(f"{t:8d} {batch['tokens'][0, t]:6d} {batch['position_ids'][0, t]:4d} "
              f"{batch['block_position_ids'][0, t]:6d}  {part:>4}  {int(np.argmax(logits[0, t])):6d}")
    print(f"logits {tuple(logits.shape)} {logits.dtype}; first call (compile + run) {result.seconds:.2f}s")
    return 0
