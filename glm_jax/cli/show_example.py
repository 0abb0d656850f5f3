"""``glm-jax show-example``: one sample of a registered task, as text and as a picture.

    glm-jax show-example --task glm_pretrain_token_embedded --index 0 --seq-len 64 --out example.png

The row, its text and its attention-mask picture are glm_jax/data/example_view.py's;
this module parses the options and prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, TextIO

from glm_jax.data.example_view import format_example, load_example, render_example


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``, else a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``show-example``'s options to ``parser``; returns it."""
    parser.add_argument("--task", default="glm_pretrain_token_embedded",
                        help="a registered seqio task: glm_pretrain_* (pretraining) or glm_superglue_* (cloze)")
    parser.add_argument("--split", default="train", help="the task's split to read (in order, unshuffled)")
    parser.add_argument("--index", type=int_at_least(0), default=0, help="which row of the split to show")
    parser.add_argument("--seq-len", type=int_at_least(8), default=64,
                        help="tokens per row, T (pretraining tasks; cloze tasks have their own length)")
    parser.add_argument("--pack", action="store_true", help="pack several examples per row, as data.pack=true does")
    parser.add_argument("--text-length", type=int_at_least(8), default=None,
                        help="cap each example's text, as data.text_length does (with --pack: several per row)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the blank choices (data.seed)")
    parser.add_argument("--candidate", type=int_at_least(0), default=0,
                        help="multi-token cloze tasks: which candidate's row to show")
    parser.add_argument("--out", default="example.png", help="PNG file for the attention-mask picture")
    parser.add_argument("--no-image", action="store_true", help="print the text only; write no PNG")
    parser.add_argument("--cell", type=int_at_least(1), default=None,
                        help="pixels per token in the picture (default: 720 // T, between 3 and 18)")
    return parser


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run ``glm-jax show-example`` with parsed ``args``; prints to ``out`` (stdout)."""
    out = out if out is not None else sys.stdout
    row, vocab = load_example(args.task, split=args.split, index=args.index, seq_len=args.seq_len,
                              pack=args.pack, seed=args.seed, candidate=args.candidate,
                              text_length=args.text_length)
    header = f"{args.task}, split {args.split}, row {args.index}" + (" (packed)" if args.pack else "")
    print(format_example(row, vocab, header), file=out)
    if not args.no_image:
        picture = render_example(row, vocab, args.out, title=header, cell=args.cell)
        print(f"\nattention mask written to {picture.path} ({picture.width}x{picture.height} px, "
              f"{picture.cell} px per token)", file=out)
    return 0
