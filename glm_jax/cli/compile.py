"""``glm-jax compile``: compile a config's train step for a TPU slice and say whether
it fits, from any host (glm_jax/aot.py).

    glm-jax compile --config pretrain/glm_10b_tpu_v5p_128 --topology v5p-128 [--num-slices 2] [key=value ...]

Needs libtpu (``pip install 'glm-jax[tpu]'``); no TPU is touched. Exit 0 when the
step fits, 4 when it does not (so scripts can gate a launch on it), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from glm_jax import aot
from glm_jax import config as config_lib

EXIT_DOES_NOT_FIT = 4


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``compile``'s options to ``parser``; returns it."""
    parser.add_argument("--config", required=True, help="a training YAML (a path, or a name such as pretrain/glm_large)")
    parser.add_argument("--topology", required=True, choices=sorted(aot.SLICES), help="the TPU slice to compile for")
    parser.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (mesh.dcn_shape)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.num_microbatches=2")
    return parser


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax compile`` with parsed ``args``."""
    config = config_lib.load_config(args.config, list(args.overrides))
    try:
        report = aot.compile_train_step(config, args.topology, args.num_slices)
    except aot.NeedsLibtpu as e:
        raise ValueError(str(e)) from None
    if args.json:
        print_fn(json.dumps({**{k: v for k, v in vars(report).items() if k != "collectives"},
                             "collectives": {k: list(v) for k, v in report.collectives.items()}}))
    else:
        print_fn(f"# {args.config} compiled for {args.num_slices} x {args.topology}\n{report.table(config)}")
    return 0 if report.fits else EXIT_DOES_NOT_FIT
