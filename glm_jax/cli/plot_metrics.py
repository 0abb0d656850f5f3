"""``glm-jax plot-metrics``: a run's loss (and accuracy) curves from its metrics.jsonl,
drawn by :func:`glm_jax.plots.plot_metrics`."""

from __future__ import annotations

import argparse

from glm_jax import plots


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``plot-metrics``'s options to ``parser``; returns it."""
    parser.add_argument("run_dir", help="a run's output directory (train.output_dir), its logs/ directory, or a metrics.jsonl")
    parser.add_argument("--out", default=None, help="the PNG to write (default: loss_curve.png beside metrics.jsonl)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``glm-jax plot-metrics`` with parsed ``args``; prints where the PNG went."""
    print(f"curves written to {plots.plot_metrics(args.run_dir, args.out)}")
    return 0
