"""``glm-jax finetune`` and ``glm-jax eval``: SuperGLUE as cloze from a model directory.

    glm-jax finetune --task rte --checkpoint runs/embedded_default/model [--data-dir D] [key=value ...]
    glm-jax eval --task rte --checkpoint runs/finetune/rte/best [--split validation] [--data-dir D]

Both read ``configs/finetune/<task>.yaml`` (or ``--config``) on top of the model
directory's config, so evaluation scores exactly as fine-tuning did (pattern,
sequence length, WSC's length penalty, eval batch size). The tasks are
registered in seqio (tasks/superglue) with the model directory's tokenizer and
the data folder (official JSONL layout) or, without ``--data-dir``, TFDS
``super_glue``. :class:`SuperGLUEData` connects such a task to
:func:`glm_jax.finetune.run`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

# The tasks a run registers get this prefix (glm_finetune_rte, glm_finetune_rte_pattern4).
TASK_PREFIX = "glm_finetune"


class SuperGLUEData:
    """A registered tasks/superglue cloze task as :class:`glm_jax.finetune.ClozeData`.

    Args:
      task_name: the seqio task (``tasks.superglue.task_name("rte", pattern_id)``).
      config: the run's ``finetune`` section (splits, batch sizes, seed).
      mesh: the run's mesh: with several processes each reads its own shard.
    """

    def __init__(self, task_name: str, config: Any, mesh: Any):
        from glm_jax import multihost
        from tasks import superglue

        self.task_name = task_name
        self.config = config
        self.info = superglue.task_info(task_name)
        self.local_batch = len(multihost.process_batch_indices(mesh, config.batch_size))

    @staticmethod
    def _processes() -> tuple[int, int]:
        import jax

        return jax.process_index(), jax.process_count()

    def steps_per_epoch(self) -> int:
        # As tasks.superglue.cloze_batches counts them with drop_remainder.
        examples = self.info.num_examples(self.config.train_split) // self._processes()[1]
        return examples // self.local_batch

    def train_batches(self, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        import seqio

        from tasks import superglue

        index, count = self._processes()
        return superglue.cloze_batches(
            self.task_name, self.config.train_split, batch_size=self.local_batch, shuffle=True,
            seed=self.config.seed + epoch, drop_remainder=True,
            shard=seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None,
        )

    def evaluate(
        self, predict_fn: Callable, output_dir: Optional[str], split: Optional[str] = None
    ) -> dict[str, float]:
        from tasks import superglue

        return superglue.evaluate(
            self.task_name, split or self.config.eval_split, predict_fn, output_dir=output_dir,
            batch_size=self.config.eval_batch_size,
        )


# --------------------------------------------------------------------- arguments


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="boolq, cb, copa, multirc, record, rte, wic or wsc")
    parser.add_argument("--checkpoint", required=True, help="glm-jax model directory (from train, convert or finetune)")
    parser.add_argument(
        "--config", default=None,
        help="fine-tuning YAML (a path or a name under configs/); default: configs/finetune/<task>.yaml",
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="folder in the official SuperGLUE JSONL layout (RTE/train.jsonl, val.jsonl, ...); "
        "default: the config's finetune.data_dir, else TFDS super_glue (prepared)",
    )
    parser.add_argument("--pattern-id", type=int, default=None, help="pattern of spec 4.2 (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.epochs=3 model.dtype=bfloat16")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_common(parser)
    parser.set_defaults(command="finetune")
    parser.add_argument("--output-dir", default=None, help="run directory (default: the config's finetune.output_dir)")
    parser.add_argument(
        "--preempted-exit-code", type=int, default=None,
        help="exit code after a preemption signal was handled by saving (default: 128 + the signal: 143 "
        "for SIGTERM, 130 for Ctrl-C)",
    )
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _add_common(parser)
    parser.set_defaults(command="eval")
    parser.add_argument("--split", default="validation", help="validation, train or test (test: predictions only)")
    parser.add_argument(
        "--output-dir", default=None, help="where the predictions file goes (default: <checkpoint>_eval)"
    )
    return parser


# ------------------------------------------------------------------------ set-up


def load_run_config(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """``(FinetuneRunConfig, the model directory's ModelConfig, the YAML's name)``:
    the YAML over the model directory's config, then the overrides, then the flags.

    The YAML is ``--config``; else, for ``eval`` of a fine-tuned model directory,
    the run config stored in it (same task only); else configs/finetune/<task>.yaml.
    """
    from glm_jax import config as config_lib
    from glm_jax import model_dir
    from glm_jax.finetune import FinetuneRunConfig, check_same_architecture

    from tasks.superglue.readers import TASKS

    if args.task.lower() not in {t.lower() for t in TASKS}:
        known = ", ".join(t.lower() for t in TASKS)
        raise ValueError(f"--task {args.task}: not a SuperGLUE task; expected one of {known}")
    model_dir.check_model_dir(args.checkpoint)
    pretrained = model_dir.read_config(Path(args.checkpoint) / model_dir.CONFIG_FILE)
    source = args.config or _stored_config(args) or f"finetune/{args.task.lower()}"
    flags = [f"finetune.task={args.task.lower()}"]
    if args.data_dir is not None:
        flags.append(f"finetune.data_dir={_yaml_str(args.data_dir)}")
    if args.pattern_id is not None:
        flags.append(f"finetune.pattern_id={args.pattern_id}")
    if args.command == "finetune" and args.output_dir is not None:
        flags.append(f"finetune.output_dir={_yaml_str(args.output_dir)}")
    config = config_lib.load_config_as(
        FinetuneRunConfig, source, [*args.overrides, *flags],
        base={"model": config_lib.to_dict(pretrained)},
        base_where=str(Path(args.checkpoint) / model_dir.CONFIG_FILE),
    )
    check_same_architecture(config.model, pretrained, args.checkpoint)
    return config, pretrained, source


def _stored_config(args: argparse.Namespace) -> Optional[str]:
    """``glm-jax eval`` of a fine-tuned model: the run config stored beside its
    weights, if it is for the task asked for."""
    import yaml

    from glm_jax.finetune import RUN_CONFIG

    path = Path(args.checkpoint) / RUN_CONFIG
    if args.command != "eval" or not path.is_file():
        return None
    try:
        task = (yaml.safe_load(path.read_text()) or {}).get("finetune", {}).get("task")
    except (yaml.YAMLError, AttributeError):
        return None  # not ours to judge: the default config is used instead
    return str(path) if task == args.task.lower() else None


def _yaml_str(text: str) -> str:
    """A path as a YAML string scalar in a key=value override, whatever it contains."""
    import json

    return json.dumps(text)


def register_task(config: Any, vocabulary: Any) -> str:
    """Register ``config.finetune``'s task (data folder or TFDS, pattern, length) with
    ``vocabulary`` under :data:`TASK_PREFIX`, replacing an earlier registration; returns
    the seqio task name."""
    from tasks import superglue

    ft = config.finetune
    superglue.register_superglue_tasks(
        vocabulary=vocabulary, data_dir=ft.data_dir, prefix=TASK_PREFIX, tasks=[ft.task],
        pattern_ids=[] if ft.pattern_id is None else [ft.pattern_id], max_seq_length=ft.max_seq_length,
        overwrite=True,
    )
    name = superglue.task_name(ft.task, ft.pattern_id, TASK_PREFIX)
    check_task_fits(superglue.task_info(name), config.model)
    return name


def check_task_fits(info: Any, model: Any) -> None:
    """Problems that would otherwise surface late: inside the tf.data pipeline (a long
    traceback, sometimes a hang at teardown) or as NaN logits from position ids beyond
    the model's position table, which train and evaluate silently."""
    if info.max_seq_length > model.max_position_embeddings:
        raise ValueError(
            f"finetune.max_seq_length={info.max_seq_length} ({info.task}'s rows) exceeds the model's "
            f"max_position_embeddings={model.max_position_embeddings}: set finetune.max_seq_length to at most "
            f"{model.max_position_embeddings}")
    if not info.multi_token:
        info.verbalizer_ids()  # raises, naming the task and pattern, if the label words collide


def absolute_tokenizer(checkpoint: str) -> Any:
    """The model directory's TokenizerConfig with absolute file paths (to copy into an
    exported model), or None when it records none."""
    from glm_jax import model_dir

    tokenizer = model_dir.read_tokenizer(checkpoint)
    if tokenizer is None:
        return None
    files = tokenizer.files(base=checkpoint)
    return dataclasses.replace(
        tokenizer, vocab_file=str(files["vocab_file"].resolve()),
        merges_file=str(files["merges_file"].resolve()) if "merges_file" in files else None,
    )


# ------------------------------------------------------------------------ commands


def cli_finetune(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    from glm_jax import finetune, model_dir, run_dir, sharding
    from glm_jax.checkpointing import preempted_exit_code

    config, _, source = load_run_config(args)
    run_dir.check_writable(config.finetune.output_dir, "finetune.output_dir")
    model_dir.remove_stale_exports(Path(config.finetune.output_dir) / finetune.BEST_DIR)  # a killed export's leftovers
    print_fn(f"# resolved config ({source} over {args.checkpoint})\n{config}")
    vocabulary = model_dir.load_vocabulary(args.checkpoint)
    task_name = register_task(config, vocabulary)
    mesh = sharding.mesh_from_config(config.mesh)
    data = SuperGLUEData(task_name, config.finetune, mesh)
    result = finetune.run(
        config, data, lambda shardings: model_dir.load_model_dir(args.checkpoint, shardings=shardings)[1],
        tokenizer=absolute_tokenizer(args.checkpoint), print_fn=print_fn,
    )
    if result.stopped_early:
        return preempted_exit_code() if args.preempted_exit_code is None else args.preempted_exit_code
    if result.best is not None and not result.stopped_early:
        print_fn(f"try:\n  glm-jax eval --task {config.finetune.task} --checkpoint "
                 f"{Path(config.finetune.output_dir) / finetune.BEST_DIR}"
                 + (f" --data-dir {config.finetune.data_dir}" if config.finetune.data_dir else ""))
    return 0


def cli_eval(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    from glm_jax import cloze, model_dir, sharding, train

    config, _, source = load_run_config(args)
    ft = config.finetune
    print_fn(f"evaluating {args.checkpoint} on {ft.task} {args.split} with the settings of {source}")
    vocabulary = model_dir.load_vocabulary(args.checkpoint)
    task_name = register_task(config, vocabulary)
    # The mesh of the machine at hand: a stored run config may come from another.
    explicit_mesh = any(o.strip().startswith("mesh.") for o in args.overrides)
    mesh = sharding.mesh_from_config(config.mesh if explicit_mesh else sharding.MeshConfig())
    _, param_shardings = train.params_layout(config.model, mesh)
    _, params = model_dir.load_model_dir(args.checkpoint, shardings=param_shardings)
    eval_step = cloze.eval_step_for(config.model, mesh, ft.loss, ft.length_penalty)
    sums: dict[str, float] = {}

    def predict_fn(batches):
        choices, batch_sums = cloze.predict(eval_step, params, batches, mesh)
        sums.update(batch_sums)
        return choices

    output_dir = Path(args.output_dir or f"{str(args.checkpoint).rstrip('/')}_eval")
    data = SuperGLUEData(task_name, ft, mesh)
    scores = data.evaluate(predict_fn, str(output_dir), split=args.split)
    print_fn(metric_table(ft.task, args.split, scores, sums))
    print_fn(f"predictions: {output_dir / f'{task_name}_{args.split}_predictions.jsonl'}")
    return 0


def metric_table(task: str, split: str, scores: dict[str, float], sums: dict[str, float]) -> str:
    """A plain-text table: one row per metric (percentages), then the example count."""
    rows = [("task", "split", "metric", "value")]
    rows += [(task, split, name, f"{value:.2f}") for name, value in scores.items()]
    if not scores:
        rows.append((task, split, "(no labels)", "-"))
    rows.append((task, split, "examples", f"{int(sums.get('predicted', 0))}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
