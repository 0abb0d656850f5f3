"""The ``glm-jax`` command line: one table of commands, one module per command.

Every command lives in ``glm_jax/cli/<name>.py`` with ``add_arguments(parser)``
(its options) and ``run(args) -> exit code`` (parsing and printing only: the work
is the library's). :data:`TABLE` names each command's module, which is imported
only when that command is asked for: ``glm-jax --help`` imports no JAX, and
``glm-jax train`` never imports the converter.

:func:`main` turns every error into one line and an exit code (:data:`EXIT_USAGE`
for bad input, :data:`EXIT_INTERNAL` for a bug); :func:`entry` is the console
script (pyproject.toml), ``python -m glm_jax.cli`` the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import re
import sys
import traceback
from types import ModuleType
from typing import Iterable, Optional, Sequence

from glm_jax import console, host_memory


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``glm-jax`` command: the module holding ``add_arguments`` and ``run``, and
    the texts ``glm-jax --help`` shows without importing it."""

    module: str
    help: str
    description: Optional[str] = None


#: The commands, in the order ``glm-jax --help`` lists them.
TABLE: dict[str, Command] = {
    "train": Command(
        "glm_jax.cli.train",
        help="pretrain a GLM (default: the embedded corpus, a few minutes on CPU) and export it",
        description="Pretrain a GLM from a YAML config; resumes from the run's latest checkpoint.",
    ),
    "generate": Command(
        "glm_jax.cli.generate",
        help="fill [MASK]/[sMASK]/[gMASK] blanks in text with a trained or converted model",
    ),
    "convert": Command(
        "glm_jax.cli.convert",
        help="convert an official GLM checkpoint (.pt, pytorch_model.bin, safetensors) to a glm-jax model directory",
        description="Convert an official GLM checkpoint into a glm-jax model directory "
        "(orbax params + config.yaml, and with --tokenizer the tokenizer for generate and eval).",
    ),
    "forward": Command(
        "glm_jax.cli.forward",
        help="run one forward pass of a model on a GLM sample and print its top predictions",
    ),
    "finetune": Command(
        "glm_jax.cli.finetune",
        help="fine-tune a model directory on a SuperGLUE task as cloze (spec 4.3) or on a seq2seq task "
        "(spec 4.4), keeping the best epoch",
        description="Fine-tune on a SuperGLUE task as cloze, or on a conditional-generation task (cnn_dm, xsum, "
        "gigaword, squad_qg, yahoo_blank): configs/finetune/<task>.yaml over the model directory's config; "
        "evaluates each epoch, exports the best model to <output_dir>/best, resumes.",
    ),
    "eval": Command(
        "glm_jax.cli.evaluate",
        help="score a model directory on a SuperGLUE task as cloze, a seq2seq task by decoding (ROUGE/BLEU), "
        "or zero-shot on LAMBADA / perplexity",
        description="Evaluate on a SuperGLUE task as cloze (seqio metrics; prints a metric table and "
        "writes the predictions with their example ids), or zero-shot (spec 4.5): LAMBADA last-word "
        "accuracy or perplexity with overlapping windows.",
    ),
    "compile": Command(
        "glm_jax.cli.compile",
        help="compile a config's train step for a TPU slice (from any host, with libtpu) and say whether it fits",
        description="Compile the train step of a YAML config for a real TPU slice without a TPU (libtpu's "
        "topology devices) and report per chip: state, temporaries and total memory against HBM (FITS / DOES "
        "NOT FIT), model FLOPs, an estimated step time, the collectives, the compile time. Exit 4: does not fit.",
    ),
    "show-example": Command(
        "glm_jax.cli.show_example",
        help="print one sample of a registered task (Part A, Part B spans, positions) and draw its attention mask",
        description="Print one row of a registered seqio task as the model sees it (Part A with its blanks, "
        "each Part B span, a token table with position and block position ids and the loss mask) and "
        "draw its attention mask as a PNG with Part A, Part B and the spans marked.",
    ),
    "plot-metrics": Command(
        "glm_jax.cli.plot_metrics",
        help="draw a run's loss (and accuracy) curves from its metrics.jsonl as a PNG",
        description="Draw the train and eval loss (and accuracy) of a run from <output_dir>/logs/metrics.jsonl; "
        "`glm-jax train` writes the same picture to logs/loss_curve.png at the end of a run.",
    ),
}

# Documented in docs/checkpoints.md ("Exit codes"); tests/test_faults.py checks them.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: please report it with the --debug traceback
EXIT_USAGE = 2  # bad input: arguments, config, data, files, checkpoints, storage
EXIT_NONFINITE = 3  # training diverged; the same value as glm_jax.nonfinite.EXIT_NONFINITE
EXIT_INTERRUPTED = 130  # Ctrl-C outside a training loop (the loops save first, then exit 128 + signal)
EXIT_CODES_HELP = (
    "0 done; 1 internal error; 2 bad input or storage fault; 3 training diverged (NaN/inf); "
    "128+N stopped by signal N after saving (143: SIGTERM, 130: Ctrl-C)"
)


def load_command(name: str) -> ModuleType:
    """The module of command ``name`` (imported now: the one dynamic import of the CLI)."""
    return importlib.import_module(TABLE[name].module)


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


def build_parser(commands: Optional[Iterable[str]] = None) -> argparse.ArgumentParser:
    """The ``glm-jax`` parser.

    Args:
      commands: the commands whose modules are imported to add their options
        (default: all of them). The others are listed by name and help only, which
        is all ``glm-jax --help`` shows; :func:`main` loads just the command it runs.
    """
    loaded = set(TABLE) if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="glm-jax",
        description="GLM (autoregressive blank infilling) in JAX/Flax.",
        epilog="`glm-jax COMMAND --help` lists a command's options with their defaults. "
        f"Exit codes: {EXIT_CODES_HELP}.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in TABLE.items():
        sub = subparsers.add_parser(
            name, help=command.help, description=command.description, formatter_class=_HelpFormatter
        )
        if name in loaded:
            module = load_command(name)
            module.add_arguments(sub)
            sub.set_defaults(func=module.run)
        sub.add_argument(
            "--debug", action="store_true",
            help="show tracebacks and the native libraries' log lines (also: GLM_JAX_VERBOSE=1)",
        )
    return parser


def _command_of(argv: Sequence[str]) -> list[str]:
    """The command ``argv`` asks for, as a list of zero or one names: the first
    argument that is not an option (the top level has no option taking a value)."""
    name = next((a for a in argv if not a.startswith("-")), None)
    return [name] if name in TABLE else []


def error_line(error: BaseException) -> str:
    """One line for the user: the message with its continuation lines folded in."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])  # KeyError's str() adds quotes
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _loaded_class(module: str, name: str) -> tuple[type, ...]:
    """``module.name`` if that module is imported, else ``()``. An error of a module
    that never ran cannot have been raised, and importing it here would make every
    command (and ``--help``) pay for JAX and orbax."""
    found = getattr(sys.modules.get(module), name, None)
    return (found,) if isinstance(found, type) else ()


def exit_code_of(error: BaseException) -> int:
    """The exit code for an exception that ends a command."""
    if isinstance(error, _loaded_class("glm_jax.nonfinite", "NonFiniteError")):
        return EXIT_NONFINITE
    if isinstance(error, (ValueError, KeyError, OSError, *_loaded_class("glm_jax.checkpointing", "CheckpointError"))):
        return EXIT_USAGE
    return EXIT_INTERNAL


def _debug_requested(argv: Sequence[str]) -> bool:
    """``--debug`` in ``argv`` (read as argparse reads it, abbreviations included), or
    GLM_JAX_VERBOSE: known before the command's module, and the native libraries it
    loads, are imported."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--debug", action="store_true")
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:
        return console.verbose_requested()  # a malformed --debug: the real parser names it
    return known.debug or console.verbose_requested()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``glm-jax`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    A bad argument exits through argparse (``SystemExit(2)``); any other error is one
    ``glm-jax: error: ...`` line on stderr, with the traceback under ``--debug``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug_requested(argv)
    if not debug:
        console.quiet_library_loggers()
        # TensorFlow (seqio's data pipeline) logs every CUDA probe at INFO; keep warnings.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The command's module is imported inside the filter: the native libraries it
    # loads (TensorFlow, XLA) print their start-up notices on descriptor 2.
    with contextlib.nullcontext() if debug else console.NativeLogFilter():
        try:
            parser = build_parser(_command_of(argv))
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return EXIT_USAGE
            return args.func(args)
        except KeyboardInterrupt:
            print("glm-jax: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
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

    First, before any command imports JAX, glibc is set to keep the memory XLA:CPU
    frees after each step when the process runs on CPU (glm_jax/host_memory.py;
    ``GLM_JAX_HOST_MALLOC`` chooses; ``--debug`` or ``GLM_JAX_VERBOSE=1`` prints what was done).
    """
    try:
        outcome = host_memory.configure_process()
    except ValueError as e:
        print(f"glm-jax: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if _debug_requested(sys.argv[1:]):
        print(f"glm-jax: host memory: {outcome.reason}", file=sys.stderr)
    code = main()
    if code == EXIT_OK:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
