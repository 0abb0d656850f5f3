"""``glm-jax generate``: fill the blanks of prompts with a converted GLM, or score
candidate fills.

    glm-jax generate --checkpoint DIR "Text with [MASK] and [MASK]."
    glm-jax generate --checkpoint DIR --score " Paris" --score " Rome" "The capital of France is [MASK]."

The vocabulary is the model directory's (``glm_jax.model_dir.load_vocabulary``:
tokenizer.yaml, or a bare vocab.model), or a sentencepiece model given with
``--vocab``. Inputs follow the directory's input style (official, or hf for the
Hugging Face port's rules; glm_jax/decoding/layout.py), which ``--input-style``
overrides.

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
        help="sentencepiece model of a glm-jax vocabulary (default: the model directory's tokenizer)",
    )
    parser.add_argument(
        "--input-style", choices=("official", "hf"), default=None,
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
    """``tasks.vocab.GLMVocabulary`` over the sentencepiece model at ``path`` (``--vocab``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--vocab {path} does not exist")
    from tasks.vocab import GLMVocabulary

    return GLMVocabulary(path)


def resolve_vocabulary(args: argparse.Namespace) -> tuple[Any, str, str]:
    """``(vocabulary, tokenizer kind, recorded input style)`` for the arguments:
    ``--vocab`` if given, else the model directory's tokenizer."""
    if args.vocab is not None:
        return load_vocabulary(args.vocab), "sentencepiece", "official"
    from glm_jax import model_dir

    tokenizer = model_dir.read_tokenizer(args.checkpoint)
    if tokenizer is None:
        raise ValueError(
            f"{args.checkpoint} records no tokenizer: pass --vocab SPM_MODEL, or convert the checkpoint "
            "with `glm-jax convert SRC OUT --tokenizer KIND --vocab-file FILE`"
        )
    return model_dir.load_vocabulary(args.checkpoint), tokenizer.kind, tokenizer.input_style


def check_fits(vocab: Any, vocab_size: int, where: str, checkpoint: str) -> None:
    """Every id the vocabulary can produce must have an embedding row."""
    ct = vocab.command_tokens
    ids = (ct.pad, ct.eos, ct.cls, ct.mask, ct.sop, ct.eop, ct.unk, ct.smask, ct.gmask, ct.sep)
    largest = max(i for i in ids if i is not None)
    size = getattr(vocab, "vocab_size", None)
    if largest >= vocab_size or (size is not None and size > vocab_size):
        raise ValueError(
            f"the vocabulary {where} (vocab_size={size}, command ids up to {largest}) does not fit the model "
            f"at {checkpoint}, which has vocab_size={vocab_size}"
        )


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
    if args.context_length is not None and args.context_length < 1:
        raise ValueError(f"--context-length must be >= 1, got {args.context_length}")
    prompts = read_prompts(args.prompts, args.input_file)
    from glm_jax.model_dir import check_model_dir

    check_model_dir(args.checkpoint)
    vocab, kind, recorded_style = resolve_vocabulary(args)

    from glm_jax.decoding import layout
    from glm_jax.model_dir import load_model_dir

    style = layout.input_style(args.input_style or recorded_style, kind)
    config, params = load_model_dir(args.checkpoint)
    check_fits(vocab, config.vocab_size, args.vocab or f"of {args.checkpoint}", args.checkpoint)
    ct = vocab.command_tokens
    candidates = None if args.score is None else [list(vocab.encode(c)) for c in args.score]
    index = 0
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        texts = [list(vocab.encode(p)) for p in batch]
        contexts = []
        for i, ids in enumerate(texts):
            try:
                contexts.append(layout.build_context(ids, ct, style, pad_to=args.context_length))
            except ValueError as e:
                raise ValueError(f"prompt {start + i + 1}: {e}") from None
        if candidates is not None:
            records = _score(params, config, vocab, batch, contexts, candidates, args.score, style)
        else:
            records = _generate(params, config, vocab, batch, texts, contexts, settings, args.seed + start)
        for record in records:
            index += 1
            _print_record(index, record, args.json, out)
    return 0


def _generate(params, config, vocab, prompts, texts, contexts, settings, seed) -> list[dict[str, Any]]:
    from glm_jax.decoding import layout
    from glm_jax.decoding.infill import generate

    ct = vocab.command_tokens
    records = []
    for prompt, ids, g in zip(prompts, texts, generate(params, config, contexts, ct, settings, seed=seed)):
        # The filled text from [CLS] + text only: the context's end token and padding
        # ([SEP] with hf BERT inputs) are not part of what the user wrote.
        text_part = [ct.cls, *layout.with_blank(ids, ct)]
        filled = layout.fill_blanks(text_part, g.blank_positions, g.spans, ct)
        records.append({
            "prompt": prompt,
            "text": vocab.decode(filled),
            "spans": [vocab.decode(list(s)) for s in g.spans],
            "complete": g.complete,
            "score": g.score,
            "tokens": list(g.tokens),
        })
    return records


def _score(params, config, vocab, prompts, contexts, candidates, candidate_texts, style) -> list[dict[str, Any]]:
    from glm_jax.decoding import layout
    from glm_jax.decoding.scoring import score_batch

    ct = vocab.command_tokens
    blanks = []
    for i, context in enumerate(contexts):
        try:
            blanks.append(layout.scored_blank(context, ct, style))
        except ValueError as e:
            raise ValueError(f"prompt {prompts[i]!r}: {e}") from None
    results = score_batch(
        params, config, contexts, [candidates] * len(contexts), ct,
        blank_positions=blanks, append_eop=style.append_eop,
    )
    return [
        {
            "prompt": prompt,
            "candidates": list(candidate_texts),
            "sum_logprob": [float(x) for x in sums],
            "mean_logprob": [float(x) for x in means],
            "best": candidate_texts[int(sums.argmax())],
        }
        for prompt, (sums, means) in zip(prompts, results)
    ]


def _print_record(index: int, record: dict[str, Any], as_json: bool, out: TextIO) -> None:
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
