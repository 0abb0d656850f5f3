"""``glm-jax compile``: compile a config's train step for a TPU slice and say whether
it fits, from any host (glm_jax/aot.py).

    glm-jax compile --config pretrain/glm_10b_tpu_v5p_128 --topology v5p-128 [--num-slices 2] [key=value ...]
    glm-jax compile --config pretrain/glm_10b --topology v5p-128 --search [--max-compiles 8]
    glm-jax compile --config pretrain/glm_10b --topology v5p-128 --decode-batch 64 [--context-length 512]

``--search`` compiles remat / microbatch / mesh candidates in order of estimated step
time until one fits (glm_jax/fit_search.py) and prints what it tried.

Needs libtpu (``pip install 'glm-jax[tpu]'``); no TPU is touched. Exit 0 when the
step fits, 4 when it does not (so scripts can gate a launch on it), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from glm_jax import aot, fit_search
from glm_jax import config as config_lib

EXIT_DOES_NOT_FIT = 4


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``compile``'s options to ``parser``; returns it."""
    parser.add_argument("--config", required=True, help="a training YAML (a path, or a name such as pretrain/glm_large)")
    parser.add_argument("--topology", required=True, choices=sorted(aot.SLICES), help="the TPU slice to compile for")
    parser.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN (mesh.dcn_shape)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object instead of a table")
    parser.add_argument("--search", action="store_true",
                        help="search remat policy, microbatches and the fsdp x tensor split for the fastest "
                             "estimated step that fits")
    parser.add_argument("--max-compiles", type=int, default=8, help="with --search: compile at most this many")
    parser.add_argument("--decode-batch", type=int, default=None, metavar="N",
                        help="compile generation instead: prefill N contexts, then one cached token")
    parser.add_argument("--context-length", type=int, default=None, metavar="T",
                        help="with --decode-batch: tokens per context (default: data.sequence_length)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="with --decode-batch: cache slots after the context")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.num_microbatches=2")
    return parser


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax compile`` with parsed ``args``."""
    config = config_lib.load_config(args.config, list(args.overrides))
    if args.search and args.decode_batch is not None:
        raise ValueError("--search looks for a train step that fits; drop --decode-batch")
    if args.search:
        return _search(args, config, print_fn)
    try:
        if args.decode_batch is not None:
            report = aot.compile_decode_step(
                config, args.topology, args.num_slices, batch_size=args.decode_batch,
                context_length=config.data.sequence_length if args.context_length is None else args.context_length,
                max_new_tokens=args.max_new_tokens)
        else:
            report = aot.compile_train_step(config, args.topology, args.num_slices)
    except aot.NeedsLibtpu as e:
        raise ValueError(str(e)) from None
    if args.json:
        print_fn(json.dumps({**{k: v for k, v in vars(report).items() if k != "collectives"},
                             "collectives": {k: list(v) for k, v in report.collectives.items()}}))
    else:
        print_fn(f"# {args.config} compiled for {args.num_slices} x {args.topology}\n{report.table(config)}")
    return 0 if report.fits else EXIT_DOES_NOT_FIT


def _search(args: argparse.Namespace, config: config_lib.Config, print_fn: Callable[[str], None]) -> int:
    if args.json:
        raise ValueError("--search prints a table; drop --json")
    try:
        result = fit_search.search(config, args.topology, args.num_slices, max_compiles=args.max_compiles,
                                   progress=print_fn)
    except aot.NeedsLibtpu as e:
        raise ValueError(str(e)) from None
    print_fn(f"# {args.config} searched for {args.num_slices} x {args.topology} "
             f"(estimates at {aot.ASSUMED_MFU:.0%} MFU, ICI {aot.SLICES[args.topology].ici_bytes_per_second / 1e9:.0f} "
             "GB/s per chip)")
    print_fn(result.table())
    if result.best is None:
        return EXIT_DOES_NOT_FIT
    best_config = config_lib.apply_overrides(config, result.best.candidate.overrides())
    print_fn(f"\n{result.best.report.table(best_config)}")
    return 0
