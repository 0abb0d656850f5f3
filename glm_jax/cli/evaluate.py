"""``glm-jax eval``: score a model directory on a SuperGLUE task as cloze, on a
conditional-generation task by decoding (spec 4.4), or on a zero-shot
language-modelling task (spec 4.5).

    glm-jax eval --task rte --checkpoint runs/finetune/rte/best [--split validation] [--data-dir D]
    glm-jax eval --task xsum --checkpoint runs/finetune/xsum/best [--data-dir D]
    glm-jax eval --task lambada --checkpoint DIR --data-file lambada_test.jsonl [--unidirectional]
    glm-jax eval --task wikitext103 --checkpoint DIR --data-file wiki.test.tokens [--stride 256]
    glm-jax eval --task lm --checkpoint DIR --data-file documents.txt

It reads the same run config as ``glm-jax finetune`` (for a fine-tuned model
directory, the one stored in it), so it scores exactly as fine-tuning did; prints a
metric table and writes the predictions with their example ids. The scoring is
:func:`glm_jax.finetune_setup.evaluate_checkpoint` (SuperGLUE, seq2seq) and
:mod:`glm_jax.zero_shot` (LAMBADA, perplexity); this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from glm_jax import blank_report, finetune_setup, model_dir, sharding, zero_shot
from glm_jax.cli import superglue_options
from glm_jax.data import corpus, language_model
from glm_jax.data.text_files import numbered_lines


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``eval``'s options to ``parser``; returns it."""
    superglue_options.add_task_arguments(parser)
    parser.add_argument("--split", default="validation", help="validation, train or test (test: predictions only)")
    parser.add_argument(
        "--output-dir", default=None, help="where the predictions file goes (default: <checkpoint>_eval)"
    )
    add_zero_shot_arguments(parser)
    return parser


ZERO_SHOT_TASKS = ("lambada", "wikitext103", "lm", "blanks")


def add_zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "zero-shot language modelling (--task lambada | wikitext103 | lm; spec 4.5) and held-out blanks "
        "(--task blanks: the model's guesses against a word-frequency baseline)")
    group.add_argument("--data-file", default=None,
                       help="lambada: JSON lines with a 'text' field (default: TFDS lambada, prepared); "
                       "wikitext103: a raw token file (wiki.test.tokens); lm: plain text, one document per line")
    group.add_argument("--seq-length", type=int, default=None,
                       help="row length (default: 512 for lambada, 1024 for perplexity)")
    group.add_argument("--stride", type=int, default=256,
                       help="perplexity: tokens scored per window after the first (official overlapping_eval)")
    group.add_argument("--unidirectional", action="store_true",
                       help="read the context left to right in Part B (the official --unidirectional)")
    group.add_argument("--batch-size", type=int, default=8, help="rows per scoring batch")
    group.add_argument("--num-blanks", type=int, default=200,
                       help="blanks: held-out sentences scored (the first of the file or split, in order)")


def run_blanks(args: argparse.Namespace, print_fn: Callable[[str], None]) -> int:
    """The held-out blanks report (glm_jax/blank_report.py): the embedded corpus'
    validation split against a baseline counted on its train split, or the lines of
    ``--data-file`` (the baseline then counted on the same lines)."""
    config, params = model_dir.load_model_dir(args.checkpoint)
    vocabulary = model_dir.load_vocabulary(args.checkpoint)
    if args.data_file is None:
        embedded = corpus.embedded_corpus()
        held_out = [d.text for d in embedded.documents("validation")]
        training = [d.text for d in embedded.documents("train")]
        where = "the embedded corpus (validation split; baseline counted on its train split)"
    else:
        if not Path(args.data_file).is_file():
            raise FileNotFoundError(f"--data-file {args.data_file} does not exist")
        held_out = training = [line for _, line in numbered_lines(args.data_file) if line]
        where = f"{args.data_file} (baseline counted on the same lines)"
    print_fn(f"blanks from {where}")
    blank_report.run(params, config, vocabulary, held_out, training, count=args.num_blanks, print_fn=print_fn,
                     batch_size=args.batch_size)
    return 0


def run_zero_shot(args: argparse.Namespace, print_fn: Callable[[str], None]) -> int:
    """LAMBADA accuracy or perplexity of ``args.checkpoint`` on ``args.data_file``."""
    if args.task == "blanks":
        return run_blanks(args, print_fn)
    if args.data_file is None and args.task != "lambada":
        raise ValueError(f"--task {args.task} needs --data-file (TFDS has no {args.task} data set)")
    if args.data_file is not None and not Path(args.data_file).is_file():
        raise FileNotFoundError(f"--data-file {args.data_file} does not exist")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    config, params = model_dir.load_model_dir(args.checkpoint)
    vocabulary = model_dir.load_vocabulary(args.checkpoint)
    seq_length = args.seq_length or (512 if args.task == "lambada" else 1024)
    mesh = sharding.mesh_from_config(sharding.MeshConfig())
    step = zero_shot.make_score_step(config, mesh)
    layout = "unidirectional" if args.unidirectional else "bidirectional"
    if args.task == "lambada":
        if args.data_file is None:
            texts, where = language_model.read_lambada_tfds("test"), "TFDS lambada test (the original release)"
        else:
            texts, where = language_model.read_lambada(args.data_file), args.data_file
        print_fn(f"LAMBADA: {len(texts)} passages from {where}, {layout}, rows of {seq_length}")
        scores = zero_shot.lambada_accuracy(step, params, vocabulary, texts, mesh, seq_length=seq_length,
                                            unidirectional=args.unidirectional, batch_size=args.batch_size,
                                            print_fn=print_fn)
    else:
        if args.task == "wikitext103":
            text, words = language_model.read_wikitext(args.data_file)
            documents = [text]
        else:
            documents, words = language_model.read_documents(args.data_file)
        print_fn(f"perplexity: {len(documents)} document(s) from {args.data_file}, {layout}, windows of "
                 f"{seq_length - 1} tokens every {args.stride}")
        scores = zero_shot.perplexity(step, params, vocabulary, documents, words, mesh, seq_length=seq_length,
                                      stride=args.stride, unidirectional=args.unidirectional,
                                      batch_size=args.batch_size, print_fn=print_fn)
    rows = [("task", "metric", "value")] + [(args.task, k, f"{v:.4f}") for k, v in scores.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print_fn("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    return 0


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> int:
    """Run ``glm-jax eval`` with parsed ``args``; the table goes to ``print_fn``."""
    if args.task in ZERO_SHOT_TASKS:
        return run_zero_shot(args, print_fn)
    config, _, source = superglue_options.load_run_config(args, stored=True)
    ft = config.finetune
    print_fn(f"evaluating {args.checkpoint} on {ft.task} {args.split} with the settings of {source}")
    task_name = finetune_setup.register_task(config, model_dir.load_vocabulary(args.checkpoint))
    # The mesh of the machine at hand: a stored run config may come from another.
    explicit_mesh = any(o.strip().startswith("mesh.") for o in args.overrides)
    mesh = sharding.mesh_from_config(config.mesh if explicit_mesh else sharding.MeshConfig())
    output_dir = Path(args.output_dir or f"{str(args.checkpoint).rstrip('/')}_eval")
    scores, sums = finetune_setup.evaluate_checkpoint(config, args.checkpoint, task_name, args.split,
                                                      str(output_dir), mesh, print_fn)
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
