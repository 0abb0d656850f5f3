"""``glm-jax train``: pretrain (or continue) a GLM from a config.

With no ``--config`` it runs the embedded default (configs/pretrain_embedded.yaml):
a small GLM pretrained on the corpus every Python installation carries, then
exported as a model directory that ``glm-jax generate`` reads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

DEFAULT_CONFIG = "pretrain_embedded"


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help="YAML config: a path, or a name under configs/ (e.g. pretrain/glm_large)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 model.dtype=bfloat16")
    parser.add_argument("--no-export", action="store_true", help="do not write <output_dir>/model at the end")
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


def check_vocabulary(vocabulary, config) -> None:
    """The data's token ids must index the model's embedding table."""
    if vocabulary.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"data.task={config.data.task!r} has a vocabulary of {vocabulary.vocab_size} ids, more than "
            f"model.vocab_size={config.model.vocab_size}: set model.vocab_size to at least {vocabulary.vocab_size}")


def cli_train(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    from glm_jax import config as config_lib
    from glm_jax import multihost

    multihost.initialize(
        args.coordinator_address, args.num_processes, args.process_id, auto_detect=args.auto_distributed
    )
    import jax

    from glm_jax import data, sharding, trainer

    config = config_lib.load_config(args.config, list(args.overrides))
    vocabulary = data.vocabulary_of(config.data.task)
    check_vocabulary(vocabulary, config)
    is_main = jax.process_index() == 0
    if is_main:
        print_fn(f"# resolved config ({args.config})\n{config_lib.to_yaml(config)}")
    mesh = sharding.mesh_from_config(config.mesh)
    local_batch = len(multihost.process_batch_indices(mesh, config.train.global_batch_size))
    start = time.perf_counter()
    result = trainer.run(
        config,
        data.train_batches(config.data, local_batch),
        eval_data=lambda: data.eval_batches(config.data, local_batch),
        print_fn=print_fn if is_main else (lambda _: None),
    )
    elapsed = time.perf_counter() - start
    losses = [r["loss"] for r in result.history if "loss" in r]
    if is_main and losses:
        print_fn(
            f"trained steps {result.start_step}->{result.final_step} in {elapsed:.0f}s; "
            f"loss {losses[0]:.3f} (first interval) -> {losses[-1]:.3f} (last)"
        )
    if result.stopped_early or args.no_export:
        return 0
    host_params = multihost.gather_to_host(result.state.params)  # every process takes part
    if not is_main:
        return 0
    from glm_jax.model_dir import replace_model_dir, tokenizer_of

    # The checkpoints remain the source of truth; the export is replaced whole.
    model_dir = replace_model_dir(Path(config.train.output_dir) / "model", config.model, host_params,
                                  tokenizer=tokenizer_of(vocabulary))
    print_fn(f"model written to {model_dir}; try:\n  glm-jax generate --checkpoint {model_dir} "
             "\"The [MASK] statement is used to leave a loop.\"")
    return 0
