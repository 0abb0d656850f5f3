"""``glm-jax train``: pretrain (or continue) a GLM from a config.

With no ``--config`` it runs the embedded default (configs/pretrain_embedded.yaml):
a small GLM pretrained on the corpus every Python installation carries, then
exported as a model directory that ``glm-jax generate`` reads. The work is
glm_jax/pretrain_setup.py's and glm_jax/pretrain.py's; this module parses and prints.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from glm_jax import config as config_lib
from glm_jax import multihost, pretrain, pretrain_setup
from glm_jax.checkpointing import preempted_exit_code
from glm_jax.data import pipeline

DEFAULT_CONFIG = "pretrain_embedded"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``train``'s options to ``parser``; returns it."""
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help="YAML config: a path, or a name under configs/ (e.g. pretrain/glm_large)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 model.dtype=bfloat16")
    parser.add_argument("--no-export", action="store_true", help="do not write <output_dir>/model at the end")
    parser.add_argument(
        "--preempted-exit-code", type=int, default=None,
        help="exit code after a preemption signal was handled by saving (default: 128 + the signal: 143 "
        "for SIGTERM, 130 for Ctrl-C; 0 makes a preempted run look finished to a scheduler)",
    )
    parser.add_argument(
        "--task-module", action="append", default=[],
        help="import this module (a dotted name, or a .py file) first, to register your seqio tasks and "
        "mixtures for data.task; may be repeated (default: none)",
    )
    group = parser.add_argument_group("multi-host (jax.distributed)")
    group.add_argument("--coordinator-address", default=None,
                       help="host:port of process 0's coordinator (default: none, a single-process run)")
    group.add_argument("--num-processes", type=int, default=None,
                       help="processes in the run; give it with --coordinator-address and --process-id")
    group.add_argument("--process-id", type=int, default=None,
                       help="this process's rank, 0 .. num-processes - 1")
    group.add_argument(
        "--auto-distributed", action="store_true",
        help="let jax.distributed detect the cluster (TPU pods, SLURM, ...)",
    )
    return parser


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax train`` with parsed ``args``; progress goes to ``print_fn`` (process 0 only)."""
    # First, before any JAX computation: join the other processes, if any.
    multihost.initialize(
        args.coordinator_address, args.num_processes, args.process_id, auto_detect=args.auto_distributed
    )
    config = config_lib.load_config(args.config, list(args.overrides))
    pipeline.import_task_modules(args.task_module, "--task-module")
    setup = pretrain_setup.prepare(config)
    say = print_fn if setup.is_main else (lambda _: None)
    say(f"# resolved config ({args.config})\n{config_lib.to_yaml(config)}")
    if pretrain_setup.finished(setup, config, export=not args.no_export):
        print_fn(f"nothing to train: {setup.output_dir} is already at train.steps={setup.latest} and its model is "
                 f"in {setup.model_path}; raise train.steps to continue, or choose a new train.output_dir")
        return 0
    start = time.perf_counter()
    train_data, eval_data = pretrain_setup.batches(config)
    result = pretrain.run(config, train_data, eval_data=eval_data, print_fn=say)
    elapsed = time.perf_counter() - start
    losses = [r["loss"] for r in result.history if "loss" in r]
    if losses:
        say(f"trained steps {result.start_step}->{result.final_step} in {elapsed:.0f}s; "
            f"loss {losses[0]:.3f} (first interval) -> {losses[-1]:.3f} (last)")
    if result.stopped_early:
        return preempted_exit_code() if args.preempted_exit_code is None else args.preempted_exit_code
    if args.no_export:
        return 0
    model_path = pretrain_setup.export(setup, config, result.state.params)  # every process takes part
    if model_path is not None:
        say(f"model written to {model_path}; try:\n  glm-jax generate --checkpoint {model_path} "
            "\"The [MASK] statement is used to leave a loop.\"")
    return 0
