"""``glm-jax generate``: fill the blanks of prompts with a converted GLM, or score
candidate fills.

    glm-jax generate --checkpoint DIR "Text with [MASK] and [MASK]."
    glm-jax generate --checkpoint DIR --score " Paris" --score " Rome" "The capital of France is [MASK]."

The vocabulary is the model directory's (``glm_jax.model_dir.vocabulary_for``:
tokenizer.yaml, or a bare vocab.model), or a sentencepiece model given with
``--vocab``. Inputs follow the directory's input style (official, or hf for the
Hugging Face port's rules; glm_jax/decoding/prompt_layout.py), which ``--input-style``
overrides. The work is glm_jax/decoding/text_prompts.py's; this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from glm_jax import model_dir
from glm_jax.data import tokenizers
from glm_jax.decoding import prompt_layout, text_prompts
from glm_jax.decoding.settings import DecodeSettings


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``generate``'s options to ``parser``; returns it."""
    parser.add_argument(
        "prompts", nargs="*",
        help="prompts; blanks are written [MASK], [sMASK] or [gMASK] (text without one gets [gMASK] appended)",
    )
    parser.add_argument("--checkpoint", required=True, help="glm-jax model directory (from `glm-jax convert`)")
    parser.add_argument(
        "--vocab", default=None,
        help="sentencepiece model of a glm-jax vocabulary (default: the model directory's tokenizer)",
    )
    parser.add_argument(
        "--input-style", choices=prompt_layout.INPUT_STYLES, default=None,
        help="build inputs as the official code (official) or the Hugging Face port (hf) does "
        "(default: the model directory's tokenizer.yaml, else official)",
    )
    parser.add_argument(
        "--context-length", type=int, default=None,
        help="pad each context to this many tokens: official style attends to the padding (as the "
        "official seq2seq code pads its sources); hf masks it, which changes nothing",
    )
    parser.add_argument(
        "--score", action="append", default=None, metavar="CANDIDATE",
        help="instead of generating, score this candidate fill of each prompt's blank (repeatable): "
        "sum and mean log-probability (official: the candidate + [eop] in the last blank; hf: the "
        "candidate alone in the first blank); candidates are encoded as written, so give BPE words "
        "their leading space",
    )
    parser.add_argument("--input-file", default=None, help="read prompts from this file, one per line ('-': stdin)")
    parser.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="greedy",
                        help="greedy: the most likely token; sample: temperature/top-k/top-p; beam: beam search")
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


def settings_from_args(args: argparse.Namespace) -> DecodeSettings:
    """The :class:`~glm_jax.decoding.DecodeSettings` the arguments ask for (it checks them)."""
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


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """Run ``glm-jax generate`` with parsed ``args``; prints each result to ``out`` (stdout).

    Raises:
      ValueError / FileNotFoundError: bad arguments, named (glm_jax/cli/__init__.py
        turns them into one-line errors).
    """
    out = out if out is not None else sys.stdout  # looked up now: callers may redirect it
    settings = settings_from_args(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.context_length is not None and args.context_length < 1:
        raise ValueError(f"--context-length must be >= 1, got {args.context_length}")
    prompts = read_prompts(args.prompts, args.input_file)
    model_dir.check_model_dir(args.checkpoint)
    vocab, kind, recorded_style = model_dir.vocabulary_for(args.checkpoint, args.vocab)
    style = prompt_layout.input_style(args.input_style or recorded_style, kind)
    config, params = model_dir.load_model_dir(args.checkpoint)
    tokenizers.check_command_ids_fit(vocab, config.vocab_size, args.vocab or f"of {args.checkpoint}", args.checkpoint)
    index = 0
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        texts, contexts = text_prompts.encode_prompts(
            vocab, batch, style, context_length=args.context_length, first=start + 1
        )
        if args.score is not None:
            records = text_prompts.score_records(params, config, vocab, batch, contexts, args.score, style)
        else:
            records = text_prompts.fill_records(
                params, config, vocab, batch, texts, contexts, settings, seed=args.seed + start
            )
        for record in records:
            index += 1
            print_record(index, record, args.json, out)
    return 0


def print_record(index: int, record: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """One prompt's result: a JSON line, or the prompt and its fills (or scores) as text."""
    if as_json:
        print(json.dumps(record, ensure_ascii=False), file=out)
        return
    print(f"[{index}] {record['prompt']}", file=out)
    if "candidates" in record:
        for cand, total, mean in zip(record["candidates"], record["sum_logprob"], record["mean_logprob"]):
            print(f"  score {total:9.4f} (mean {mean:8.4f}): {cand!r}", file=out)
        print(f"  best: {record['best']!r}", file=out)
        return
    print(f"  filled: {record['text']}", file=out)
    for i, span in enumerate(record["spans"], 1):
        print(f"  span {i}: {span}", file=out)
    if not record["complete"]:
        print("  (incomplete: --max-new-tokens ran out before every blank was closed)", file=out)
