"""The ``glm-jax`` command line.

Each subcommand lives next to the code it drives; this module only wires them up,
and imports heavy modules lazily so that ``glm-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import traceback
from typing import Callable, Optional, Sequence

from glm_jax import console


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official GLM checkpoint (.pt, pytorch_model.bin, safetensors) to a glm-jax model directory",
        description="Convert an official GLM checkpoint into a glm-jax model directory "
        "(orbax params + config.yaml, and with --tokenizer the tokenizer for generate and eval).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from glm_jax.convert.cli import add_convert_arguments, cli_convert

    add_convert_arguments(p)
    p.set_defaults(func=cli_convert)


def _add_forward(subparsers) -> None:
    p = subparsers.add_parser(
        "forward",
        help="run one forward pass of a model on a GLM sample and print its top predictions",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML config file (default: the tiny preset)")
    p.add_argument("--checkpoint", default=None,
                   help="glm-jax model directory, from `glm-jax convert` (default: random weights)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.dtype=bfloat16")

    def run(args) -> int:
        from glm_jax import forward_demo

        return forward_demo.main(args.config, args.checkpoint, args.overrides)

    p.set_defaults(func=run)


def _add_generate(subparsers) -> None:
    from glm_jax.generate_cli import add_generate_arguments, cli_generate

    p = subparsers.add_parser(
        "generate",
        help="fill [MASK]/[sMASK]/[gMASK] blanks in text with a trained or converted model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_generate_arguments(p)
    p.set_defaults(func=cli_generate)


def _add_train(subparsers) -> None:
    from glm_jax.train_cli import add_train_arguments, cli_train

    p = subparsers.add_parser(
        "train",
        help="pretrain a GLM (default: the embedded corpus, a few minutes on CPU) and export it",
        description="Pretrain a GLM from a YAML config; resumes from the run's latest checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=cli_train)


def _add_finetune(subparsers) -> None:
    from glm_jax.finetune_cli import add_finetune_arguments, cli_finetune

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model directory on a SuperGLUE task as cloze (spec 4.3), keeping the best epoch",
        description="Fine-tune on a SuperGLUE task as cloze: configs/finetune/<task>.yaml over the model "
        "directory's config; evaluates each epoch, exports the best model to <output_dir>/best, resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_finetune_arguments(p)
    p.set_defaults(func=cli_finetune)


def _add_eval(subparsers) -> None:
    from glm_jax.finetune_cli import add_eval_arguments, cli_eval

    p = subparsers.add_parser(
        "eval",
        help="score a model directory on a SuperGLUE task as cloze and write its predictions",
        description="Evaluate on a SuperGLUE task as cloze (seqio metrics); prints a metric table and "
        "writes the predictions with their example ids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_eval_arguments(p)
    p.set_defaults(func=cli_eval)


def _add_show_example(subparsers) -> None:
    from glm_jax.show_example import add_show_example_arguments, cli_show_example

    p = subparsers.add_parser(
        "show-example",
        help="print one sample of a registered task (Part A, Part B spans, positions) and draw its attention mask",
        description="Print one row of a registered seqio task as the model sees it (Part A with its blanks, "
        "each Part B span, a token table with position and block position ids and the loss mask) and "
        "draw its attention mask as a PNG with Part A, Part B and the spans marked.",
    )
    add_show_example_arguments(p)
    p.set_defaults(func=cli_show_example)


def _add_plot_metrics(subparsers) -> None:
    p = subparsers.add_parser(
        "plot-metrics",
        help="draw a run's loss (and accuracy) curves from its metrics.jsonl as a PNG",
        description="Draw the train and eval loss (and accuracy) of a run from <output_dir>/logs/metrics.jsonl; "
        "`glm-jax train` writes the same picture to logs/loss_curve.png at the end of a run.",
    )
    p.add_argument("run_dir", help="a run's output directory (train.output_dir), its logs/ directory, or a metrics.jsonl")
    p.add_argument("--out", default=None, help="the PNG to write (default: loss_curve.png beside metrics.jsonl)")

    def run(args) -> int:
        from glm_jax import plots

        print(f"curves written to {plots.plot_metrics(args.run_dir, args.out)}")
        return 0

    p.set_defaults(func=run)


_COMMANDS: tuple[Callable, ...] = (
    _add_train, _add_generate, _add_convert, _add_forward, _add_finetune, _add_eval, _add_show_example,
    _add_plot_metrics,
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, ``(default: X)``, or ``(required)``.

    A help text that states its default in words ("(default: the model directory's
    vocab.model)", "default: configs/...") keeps it instead of a bare "(default: None)".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if re.search(r"\(default\b|\bdefault:", text):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-jax",
        description="GLM (autoregressive blank infilling) in JAX/Flax.",
        epilog="`glm-jax COMMAND --help` lists a command's options with their defaults. "
        f"Exit codes: {EXIT_CODES_HELP}.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    for sub in subparsers.choices.values():
        sub.formatter_class = _HelpFormatter  # one rule for every command's defaults
        sub.add_argument(
            "--debug", action="store_true",
            help="show tracebacks and the native libraries' log lines (also: GLM_JAX_VERBOSE=1)",
        )
    return parser


# Documented in docs/checkpoints.md ("Exit codes"); tests/test_faults.py checks them.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: please report it with the --debug traceback
EXIT_USAGE = 2  # bad input: arguments, config, data, files, checkpoints, storage
EXIT_CODES_HELP = (
    "0 done; 1 internal error; 2 bad input or storage fault; 3 training diverged (NaN/inf); "
    "128+N stopped by signal N after saving (143: SIGTERM, 130: Ctrl-C)"
)


def error_line(error: BaseException) -> str:
    """One line for the user: the message with its continuation lines folded in."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # KeyError's str() adds quotes
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def exit_code_of(error: BaseException) -> int:
    """The exit code for an exception that ends a command."""
    from glm_jax.checkpointing import CheckpointError
    from glm_jax.nonfinite import EXIT_NONFINITE, NonFiniteError

    if isinstance(error, NonFiniteError):
        return EXIT_NONFINITE
    if isinstance(error, (ValueError, KeyError, OSError, CheckpointError)):
        return EXIT_USAGE
    return EXIT_INTERNAL


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or console.verbose_requested()
    if not debug:
        console.quiet_library_loggers()
        # TensorFlow (seqio's data pipeline) logs every CUDA probe at INFO; keep warnings.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.nullcontext() if debug else console.NativeLogFilter():
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("glm-jax: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (every error: one line; --debug adds the traceback)
            if debug:
                traceback.print_exc()
            code = exit_code_of(e)
            message = error_line(e)
            if code == EXIT_INTERNAL:
                message = f"internal error: {type(e).__name__}: {message} (rerun with --debug for the traceback)"
            print(f"glm-jax: error: {message}", file=sys.stderr)
            return code


def entry() -> None:
    """The ``glm-jax`` console script: :func:`main`, then exit with its code.

    A failed command exits at once, once its output is flushed (``os._exit``):
    its checkpoints are committed or abandoned by then (the loops wait for their
    last save), and a library thread left behind by the failure (an orbax save
    thread waiting on a write that never ends, a tf.data iterator whose
    finaliser needs the interpreter) must not keep the process alive.
    """
    code = main()
    if code == EXIT_OK:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
