"""``glm-jax eval``: score a model directory on a SuperGLUE task as cloze.

    glm-jax eval --task rte --checkpoint runs/finetune/rte/best [--split validation] [--data-dir D]

It reads the same run config as ``glm-jax finetune`` (for a fine-tuned model
directory, the one stored in it), so it scores exactly as fine-tuning did; prints a
metric table and writes the predictions with their example ids. The scoring is
:func:`glm_jax.finetune_setup.evaluate_checkpoint`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from glm_jax import finetune_setup, model_dir, sharding
from glm_jax.cli import superglue_options


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``eval``'s options to ``parser``; returns it."""
    superglue_options.add_task_arguments(parser)
    parser.add_argument("--split", default="validation", help="validation, train or test (test: predictions only)")
    parser.add_argument(
        "--output-dir", default=None, help="where the predictions file goes (default: <checkpoint>_eval)"
    )
    return parser


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax eval`` with parsed ``args``; the table goes to ``print_fn``."""
    config, _, source = superglue_options.load_run_config(args, stored=True)
    ft = config.finetune
    print_fn(f"evaluating {args.checkpoint} on {ft.task} {args.split} with the settings of {source}")
    task_name = finetune_setup.register_task(config, model_dir.load_vocabulary(args.checkpoint))
    # The mesh of the machine at hand: a stored run config may come from another.
    explicit_mesh = any(o.strip().startswith("mesh.") for o in args.overrides)
    mesh = sharding.mesh_from_config(config.mesh if explicit_mesh else sharding.MeshConfig())
    output_dir = Path(args.output_dir or f"{str(args.checkpoint).rstrip('/')}_eval")
    scores, sums = finetune_setup.evaluate_checkpoint(config, args.checkpoint, task_name, args.split,
                                                      str(output_dir), mesh)
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
