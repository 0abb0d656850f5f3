"""The ``glm-jax`` command line.

Each subcommand lives next to the code it drives; this module only wires them up,
and imports heavy modules lazily so that ``glm-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official GLM checkpoint (.pt, pytorch_model.bin, safetensors) to a glm-jax model directory",
        description="Convert an official GLM checkpoint into a glm-jax model directory (orbax params + config.yaml).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("src", help="checkpoint file, or a directory holding mp_rank_XX_model_states.pt shards / pytorch_model.bin / *.safetensors")
    p.add_argument("out_dir", help="where to write the glm-jax model directory (must not exist or be empty)")
    p.add_argument("--max-position-embeddings", type=int, default=None,
                   help="override the inferred max_position_embeddings (table rows - 1)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads (default: config.json beside the weights, else hidden_size // 64)")
    p.add_argument("--scan-layers", action="store_true", help="store the layers stacked for nn.scan")

    def run(args) -> int:
        from glm_jax import convert

        convert.convert_checkpoint(
            args.src, args.out_dir, max_position_embeddings=args.max_position_embeddings,
            scan_layers=args.scan_layers, num_heads=args.num_heads,
        )
        return 0

    p.set_defaults(func=run)


def _add_forward(subparsers) -> None:
    p = subparsers.add_parser(
        "forward",
        help="run one forward pass of a model on a GLM sample and print its top predictions",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML config file (defaults to the tiny preset)")
    p.add_argument("--checkpoint", default=None, help="glm-jax model directory (from `glm-jax convert`)")
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


_COMMANDS: tuple[Callable, ...] = (_add_train, _add_generate, _add_convert, _add_forward)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-jax",
        description="GLM (autoregressive blank infilling) in JAX/Flax.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # TensorFlow (seqio's data pipeline) logs every CUDA probe at INFO; keep warnings.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Input problems: one clear line, no traceback.
        print(f"glm-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
