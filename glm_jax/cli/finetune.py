"""``glm-jax finetune``: fine-tune a model directory on a SuperGLUE task as cloze,
or on a conditional-generation task (spec 4.4).

    glm-jax finetune --task rte --checkpoint runs/embedded_default/model [--data-dir D] [key=value ...]
    glm-jax finetune --task xsum --checkpoint DIR --data-dir xsum/   # train.source, train.target, val.*

The run config is ``configs/finetune/<task>.yaml`` (or ``--config``) over the model
directory's config (glm_jax/finetune_setup.py); the task is registered in seqio
(glm_jax/data/superglue/) with the model directory's tokenizer and the data folder
(official JSONL layout) or, without ``--data-dir``, TFDS ``super_glue``. The loop
is :func:`glm_jax.finetune.run`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from glm_jax import finetune, finetune_setup, model_dir, run_dir, sharding
from glm_jax.checkpointing import preempted_exit_code
from glm_jax.cli import superglue_options


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``finetune``'s options to ``parser``; returns it."""
    superglue_options.add_task_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="run directory (default: the config's finetune.output_dir)")
    parser.add_argument(
        "--preempted-exit-code", type=int, default=None,
        help="exit code after a preemption signal was handled by saving (default: 128 + the signal: 143 "
        "for SIGTERM, 130 for Ctrl-C)",
    )
    return parser


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax finetune`` with parsed ``args``; progress goes to ``print_fn``."""
    config, _, source = superglue_options.load_run_config(args, output_dir=args.output_dir)
    output_dir = Path(config.finetune.output_dir)
    run_dir.check_writable(config.finetune.output_dir, "finetune.output_dir")
    model_dir.remove_stale_exports(output_dir / finetune.BEST_DIR)  # a killed export's leftovers
    print_fn(f"# resolved config ({source} over {args.checkpoint})\n{config}")
    vocabulary = model_dir.load_vocabulary(args.checkpoint)
    task_name = finetune_setup.register_task(config, vocabulary)
    data = finetune_setup.task_data(config, task_name, sharding.mesh_from_config(config.mesh))
    result = finetune.run(
        config, data, lambda shardings: model_dir.load_model_dir(args.checkpoint, shardings=shardings)[1],
        objective=finetune_setup.objective_for(config, vocabulary, print_fn),
        tokenizer=finetune_setup.absolute_tokenizer(args.checkpoint), print_fn=print_fn,
    )
    if result.stopped_early:
        return preempted_exit_code() if args.preempted_exit_code is None else args.preempted_exit_code
    if result.best is not None:
        print_fn(f"try:\n  glm-jax eval --task {config.finetune.task} --checkpoint {output_dir / finetune.BEST_DIR}"
                 + (f" --data-dir {config.finetune.data_dir}" if config.finetune.data_dir else ""))
    return 0
