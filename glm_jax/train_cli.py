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


def import_task_modules(modules) -> None:
    """Imports each module that registers tasks (T5X's ``MIXTURE_OR_TASK_MODULE``):
    a dotted name on ``sys.path`` (the working directory included), or a ``.py`` file."""
    import importlib
    import importlib.util
    import sys

    for module in modules:
        try:
            if module.endswith(".py"):
                path = Path(module)
                if not path.is_file():
                    raise FileNotFoundError(f"--task-module {module}: no such file")
                spec = importlib.util.spec_from_file_location(path.stem, path)
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = loaded
                spec.loader.exec_module(loaded)
            else:
                if "" not in sys.path and "." not in sys.path:
                    sys.path.insert(0, "")  # a console script's sys.path lacks the working directory
                importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--task-module {module}: cannot import it: {e}") from None


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

    from glm_jax import data, run_dir, sharding, trainer
    from glm_jax import model_dir as model_dir_lib
    from glm_jax.checkpointing import preempted_exit_code

    config = config_lib.load_config(args.config, list(args.overrides))
    import_task_modules(args.task_module)
    data.register_tasks(config.data)
    is_main = jax.process_index() == 0
    output_dir = Path(config.train.output_dir)
    checkpoint_dir = config.checkpoint.directory or str(output_dir / "checkpoints")
    # Before any work: where the run writes, and whether this directory's run may go on.
    if is_main:
        run_dir.check_writable(output_dir, "train.output_dir")
        if config.checkpoint.directory:
            run_dir.check_writable(checkpoint_dir, "checkpoint.directory")
    latest = run_dir.check_resume(output_dir, checkpoint_dir, config.model, config.train.steps)
    vocabulary = data.vocabulary_of(config.data.task)
    check_vocabulary(vocabulary, config)
    data.check_splits(config.data)
    if is_main:
        print_fn(f"# resolved config ({args.config})\n{config_lib.to_yaml(config)}")
    model_path = output_dir / "model"
    if is_main:
        model_dir_lib.remove_stale_exports(model_path)  # what a killed export left behind
    if latest == config.train.steps and not args.no_export and model_dir_lib.is_model_dir(model_path):
        print_fn(f"nothing to train: {output_dir} is already at train.steps={latest} and its model is in "
                 f"{model_path}; raise train.steps to continue, or choose a new train.output_dir")
        return 0
    mesh = sharding.mesh_from_config(config.mesh)
    local_batch = len(multihost.process_batch_indices(mesh, config.train.global_batch_size))
    start = time.perf_counter()
    eval_data = None
    if config.data.eval_split is not None:
        eval_data = lambda: data.eval_batches(config.data, local_batch)  # noqa: E731
    result = trainer.run(
        config,
        data.train_batches(config.data, local_batch),
        eval_data=eval_data,
        print_fn=print_fn if is_main else (lambda _: None),
    )
    elapsed = time.perf_counter() - start
    losses = [r["loss"] for r in result.history if "loss" in r]
    if is_main and losses:
        print_fn(
            f"trained steps {result.start_step}->{result.final_step} in {elapsed:.0f}s; "
            f"loss {losses[0]:.3f} (first interval) -> {losses[-1]:.3f} (last)"
        )
    if result.stopped_early:
        return preempted_exit_code() if args.preempted_exit_code is None else args.preempted_exit_code
    if args.no_export:
        return 0
    host_params = multihost.gather_to_host(result.state.params)  # every process takes part
    if not is_main:
        return 0
    # The checkpoints remain the source of truth; the export is replaced whole, and
    # only by the model this run trained (the non-finite guard checked it at the
    # final save; check_resume refused another architecture).
    model_path = model_dir_lib.replace_model_dir(model_path, config.model, host_params,
                                                 tokenizer=model_dir_lib.tokenizer_of(vocabulary))
    print_fn(f"model written to {model_path}; try:\n  glm-jax generate --checkpoint {model_path} "
             "\"The [MASK] statement is used to leave a loop.\"")
    return 0
