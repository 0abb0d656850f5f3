"""``glm-jax generate``: fill the blanks of prompts with a converted GLM.

    glm-jax generate --checkpoint DIR --vocab spm.model "Text with [MASK] and [MASK]."

:func:`add_generate_arguments` adds the options to an argparse (sub)parser and
:func:`cli_generate` runs them; glm_jax/cli.py wires both. This module imports
nothing heavy at import time, so that ``glm-jax --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``generate``'s arguments to ``parser``; returns it."""
    parser.add_argument(
        "prompts", nargs="*",
        help="prompts; blanks are written [MASK], [sMASK] or [gMASK] (text without one gets [gMASK] appended)",
    )
    parser.add_argument("--checkpoint", required=True, help="glm-jax model directory (from `glm-jax convert`)")
    parser.add_argument(
        "--vocab", default=None,
        help="sentencepiece model of the GLM vocabulary (default: the model directory's vocab.model)",
    )
    parser.add_argument("--input-file", default=None, help="read prompts from this file, one per line ('-': stdin)")
    parser.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="tokens sampled per prompt over all its blanks, each blank's [eop] included")
    parser.add_argument("--min-length", type=int, default=0, help="tokens per blank before [eop] is allowed")
    parser.add_argument("--temperature", type=float, default=1.0, help="sample: logits are divided by this")
    parser.add_argument("--top-k", type=int, default=0, help="sample: keep the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus mass to keep (1: all)")
    parser.add_argument("--num-beams", type=int, default=None, help="beam: beam width (default 4)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam: hypothesis score = sum_logprob / length ** length_penalty")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="forbid repeating n-grams of this size (0: off)")
    parser.add_argument("--beam-sample", action="store_true",
                        help="beam: sample the 2K candidates (the official default) instead of taking the top 2K")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of text")
    return parser


def settings_from_args(args: argparse.Namespace):
    """The :class:`~glm_jax.decoding.DecodeSettings` the arguments ask for."""
    from glm_jax.decoding.settings import DecodeSettings

    return DecodeSettings(
        strategy=args.strategy,
        max_new_tokens=args.max_new_tokens,
        min_length=args.min_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=(4 if args.strategy == "beam" else 1) if args.num_beams is None else args.num_beams,
        length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        beam_sample=args.beam_sample,
    )


def read_prompts(prompts: Sequence[str], input_file: Optional[str]) -> list[str]:
    """Prompts from the command line, then from ``input_file`` (one per non-empty line)."""
    out = list(prompts)
    if input_file is not None:
        if input_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            path = Path(input_file)
            if not path.is_file():
                raise FileNotFoundError(f"--input-file {input_file} does not exist")
            lines = path.read_text(encoding="utf-8").splitlines()
        out.extend(line for line in lines if line.strip())
    if not out:
        raise ValueError("no prompts: give them as arguments or with --input-file")
    return out


def load_vocabulary(path: str) -> Any:
    """``tasks.vocab.GLMVocabulary`` over the sentencepiece model at ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--vocab {path} does not exist")
    from tasks.vocab import GLMVocabulary

    return GLMVocabulary(path)


def cli_generate(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run ``glm-jax generate`` with parsed ``args``; prints each result to ``out``.

    Raises:
      ValueError / FileNotFoundError: bad arguments, named (glm_jax/cli.py turns
        them into one-line errors).
    """
    out = out if out is not None else sys.stdout  # looked up now: callers may redirect it
    settings = settings_from_args(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    prompts = read_prompts(args.prompts, args.input_file)
    if args.vocab is None:
        from glm_jax.model_dir import vocab_file

        found = vocab_file(args.checkpoint)
        if found is None:
            raise ValueError(f"{args.checkpoint} has no vocab.model: pass --vocab SPM_MODEL")
        args.vocab = str(found)
    vocab = load_vocabulary(args.vocab)

    from glm_jax.decoding.infill import infill_text
    from glm_jax.model_dir import load_model_dir

    config, params = load_model_dir(args.checkpoint)
    ct = vocab.command_tokens
    ids = (ct.pad, ct.eos, ct.cls, ct.mask, ct.sop, ct.eop, ct.unk, ct.smask, ct.gmask)
    largest = max(i for i in ids if i is not None)
    if largest >= config.vocab_size:
        raise ValueError(
            f"the vocabulary {args.vocab} uses ids up to {largest} but the model at {args.checkpoint} "
            f"has vocab_size={config.vocab_size}"
        )
    index = 0
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        for result in infill_text(params, config, vocab, batch, settings, seed=args.seed + start):
            index += 1
            _print_result(index, result, args.json, out)
    return 0


def _print_result(index: int, result: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        record = {
            "prompt": result.prompt,
            "text": result.text,
            "spans": list(result.spans),
            "complete": result.complete,
            "score": result.generation.score,
        }
        print(json.dumps(record, ensure_ascii=False), file=out)
        return
    print(f"[{index}] {result.prompt}", file=out)
    print(f"  filled: {result.text}", file=out)
    for i, span in enumerate(result.spans, 1):
        print(f"  span {i}: {span}", file=out)
    if not result.complete:
        print("  (incomplete: --max-new-tokens ran out before every blank was closed)", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m glm_jax.generate_cli ...``, until glm_jax/cli.py wires the subcommand."""
    parser = argparse.ArgumentParser(prog="glm-jax generate", description=__doc__.splitlines()[0])
    add_generate_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cli_generate(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"glm-jax generate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
