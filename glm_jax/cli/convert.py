"""``glm-jax convert``: an official checkpoint (and its tokenizer) to a model directory.

    glm-jax convert glm-large/mp_rank_00_model_states.pt out/glm-large --tokenizer bert --vocab-file vocab.txt
    glm-jax convert glm-10b/ out/glm-10b --tokenizer gpt2 --vocab-file vocab.json --merges-file merges.txt
    glm-jax convert glm-large-chinese/ out/glm-large-chinese --tokenizer chinese \\
        --vocab-file cog-pretrain.model --fix-command-token

The work is :func:`glm_jax.convert.convert_checkpoint`; this module parses the
options into its arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from glm_jax.convert import convert_checkpoint
from glm_jax.data.tokenizers import STORED_NAMES, TokenizerConfig

TOKENIZER_CHOICES = ("bert", "gpt2", "roberta", "chinese", "sentencepiece")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``convert``'s options to ``parser``; returns it."""
    parser.add_argument(
        "src", help="checkpoint file, or a directory holding mp_rank_XX_model_states.pt shards / "
        "pytorch_model.bin / *.safetensors",
    )
    parser.add_argument("out_dir", help="where to write the glm-jax model directory (must not exist or be empty)")
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="override the inferred max_position_embeddings (table rows - 1)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (default: config.json beside the weights, else hidden_size // 64)")
    parser.add_argument("--scan-layers", action="store_true", help="store the layers stacked for nn.scan")
    group = parser.add_argument_group(
        "tokenizer", "recorded in the model directory (tokenizer.yaml + the files) for generate and eval"
    )
    group.add_argument(
        "--tokenizer", choices=TOKENIZER_CHOICES, default=None,
        help="bert: GLM-Base/Large/Doc/410M/515M; roberta: GLM-RoBERTa; gpt2: GLM-2B/10B; "
        "chinese: GLM-Large-Chinese/10B-Chinese; sentencepiece: a glm-jax vocabulary",
    )
    group.add_argument(
        "--vocab-file", default=None,
        help="vocab.txt (bert), vocab.json (gpt2, roberta), cog-pretrain.model (chinese), a .model "
        "(sentencepiece), or the directory holding it",
    )
    group.add_argument("--merges-file", default=None, help="gpt2/roberta: merges.txt (default: beside vocab.json)")
    group.add_argument(
        "--task-mask", action=argparse.BooleanOptionalAction, default=None,
        help="the vocabulary has [gMASK]/[sMASK] (official --task-mask; default: on for gpt2 and chinese, "
        "off for bert and roberta)",
    )
    group.add_argument("--decoder-mask", action="store_true", help="the vocabulary has [dBLOCK]")
    group.add_argument(
        "--fix-command-token", action=argparse.BooleanOptionalAction, default=None,
        help="chinese, required: --fix-command-token for GLM-Large-Chinese and the Hugging Face "
        "glm-10b-chinese, --no-fix-command-token for the repo's GLM-10B-Chinese (gMASK = eop)",
    )
    group.add_argument(
        "--style", choices=("official", "hf"), default="official",
        help="official: reproduce the THUDM/GLM code; hf: the Hugging Face port (erf GELU, "
        "[CLS] x [SEP] inputs for bert, masked padding, no [eop] in scoring)",
    )
    return parser


def tokenizer_from_args(args: argparse.Namespace) -> Optional[TokenizerConfig]:
    """The :class:`glm_jax.data.tokenizers.TokenizerConfig` the options ask for, or None.

    Raises:
      ValueError: tokenizer options without ``--tokenizer``, or ``--tokenizer``
        without ``--vocab-file``.
    """
    if args.tokenizer is None:
        given = [
            flag for flag, value in (
                ("--vocab-file", args.vocab_file), ("--merges-file", args.merges_file),
                ("--task-mask", args.task_mask), ("--fix-command-token", args.fix_command_token),
                ("--decoder-mask", args.decoder_mask or None),
            ) if value is not None
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given without --tokenizer KIND")
        return None
    if args.vocab_file is None:
        raise ValueError(f"--tokenizer {args.tokenizer} needs --vocab-file")
    if args.tokenizer == "chinese" and args.fix_command_token is None:
        raise ValueError(
            "--tokenizer chinese needs --fix-command-token (GLM-Large-Chinese, and the Hugging Face "
            "glm-10b-chinese: gMASK 50009) or --no-fix-command-token (the repo's GLM-10B-Chinese: gMASK 50007 = eop)"
        )
    vocab_file = Path(args.vocab_file)
    if vocab_file.is_dir():
        # A model directory keeps a kind's vocabulary under the name an official release ships it with.
        vocab_file = vocab_file / STORED_NAMES[args.tokenizer][0]
    return TokenizerConfig(
        kind=args.tokenizer,
        vocab_file=str(vocab_file),
        merges_file=args.merges_file,
        task_mask=args.task_mask,
        decoder_mask=True if args.decoder_mask else None,
        fix_command_token=args.fix_command_token,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``glm-jax convert`` with parsed ``args``.

    Raises:
      ValueError / FileNotFoundError: bad arguments or inputs, named
        (glm_jax/cli/__init__.py turns them into one-line errors).
    """
    convert_checkpoint(
        args.src, args.out_dir, max_position_embeddings=args.max_position_embeddings,
        scan_layers=args.scan_layers, num_heads=args.num_heads,
        tokenizer=tokenizer_from_args(args), style=args.style,
    )
    return 0
