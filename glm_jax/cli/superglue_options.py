"""The options ``glm-jax finetune`` and ``glm-jax eval`` share: the task (SuperGLUE
or seq2seq), the model directory, the run config and the data."""

from __future__ import annotations

import argparse

from glm_jax import finetune_setup
from glm_jax.finetune import FinetuneRunConfig
from glm_jax.model import ModelConfig


def add_task_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the shared options to ``parser``; returns it."""
    parser.add_argument(
        "--task", required=True,
        help="SuperGLUE: boolq, cb, copa, multirc, record, rte, wic, wsc; seq2seq (spec 4.4): cnn_dm, cnn_dm_org, "
        "xsum, gigaword, squad_qg, yahoo_blank; eval also: lambada, wikitext103, lm",
    )
    parser.add_argument("--checkpoint", required=True, help="glm-jax model directory (from train, convert or finetune)")
    parser.add_argument(
        "--config", default=None,
        help="fine-tuning YAML (a path or a name under configs/); default: configs/finetune/<task>.yaml",
    )
    parser.add_argument(
        "--data-dir", default=None,
        help="folder in the official layout: SuperGLUE JSONL (RTE/train.jsonl, val.jsonl, ...), seq2seq "
        "{train,val,test}.source/.target (squad_qg: train.json, dev.json, test.json); default: the config's "
        "finetune.data_dir, else TFDS (super_glue, cnn_dailymail, xsum, gigaword, squad; prepared)",
    )
    parser.add_argument("--pattern-id", type=int, default=None, help="pattern of spec 4.2 (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.epochs=3 model.dtype=bfloat16")
    return parser


def load_run_config(
    args: argparse.Namespace, *, output_dir: str | None = None, stored: bool = False
) -> tuple[FinetuneRunConfig, ModelConfig, str]:
    """:func:`glm_jax.finetune_setup.load_run_config` of the shared options."""
    return finetune_setup.load_run_config(
        args.task, args.checkpoint, config=args.config, data_dir=args.data_dir, pattern_id=args.pattern_id,
        output_dir=output_dir, overrides=list(args.overrides), stored=stored,
    )
