"""Named model architectures: the official GLM zoo, plus a tiny model for tests.

Values come from ../shared/docs/glm_spec.md section 1.1 (layers, hidden, heads, and
max_position_embeddings from the official config scripts; padded vocab from the
tokenizer's size rounded up to a multiple of 128). Every official model uses the
ModelConfig defaults for everything else (FFN 4h, LayerNorm eps 1e-5, tanh GELU,
dropout 0.1), so a preset only pins the shape.

A preset is only an architecture: numerics (dtype, scan_layers, remat_policy) are
run-level choices made in a YAML config or an override on top of it.
"""

from __future__ import annotations

import types
from typing import Mapping

from glm_jax.model.config import ModelConfig

# Padded vocabularies (spec 2.1): the tokenizer plus command tokens, rounded up to 128.
BERT_VOCAB = 30592  # BERT wordpiece, 30522 tokens
GPT2_VOCAB = 50304  # GPT-2 BPE (and its RoBERTa vocab), 50257 / 50265 tokens
CHINESE_VOCAB = 50048  # Chinese SentencePiece cog-pretrain.model, 50000 pieces


def _glm(layers: int, hidden: int, heads: int, max_pos: int, vocab: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        max_position_embeddings=max_pos,
    )


# Read-only, so that no caller can change a preset for everyone else.
PRESETS: Mapping[str, ModelConfig] = types.MappingProxyType(
    {
        # BERT-vocabulary models (English, max_pos 512).
        "glm_base": _glm(12, 768, 12, 512, BERT_VOCAB),
        "glm_large": _glm(24, 1024, 16, 512, BERT_VOCAB),
        "glm_doc": _glm(24, 1024, 16, 512, BERT_VOCAB),  # GLM-Large shape, document-level objective
        "glm_410m": _glm(30, 1024, 16, 512, BERT_VOCAB),
        "glm_515m": _glm(30, 1152, 18, 512, BERT_VOCAB),
        # GPT-2 BPE models (English).
        "glm_roberta_large": _glm(24, 1024, 16, 512, GPT2_VOCAB),
        "glm_2b": _glm(36, 2048, 32, 1024, GPT2_VOCAB),
        "glm_10b": _glm(48, 4096, 64, 1024, GPT2_VOCAB),
        # Chinese SentencePiece models.
        "glm_large_chinese": _glm(24, 1024, 16, 1024, CHINESE_VOCAB),
        "glm_10b_chinese": _glm(48, 4096, 64, 1024, CHINESE_VOCAB),
        # The shape of the official tiny fixture (fixtures/official_glm_tiny/config.json);
        # small enough that tests run it on CPU in milliseconds.
        "glm_tiny": _glm(2, 64, 4, 32, 128),
    }
)


def get_preset(name: str) -> ModelConfig:
    """The ModelConfig registered under ``name``.

    Raises:
      ValueError: ``name`` is not a preset; the message lists the valid names.
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name, e.g. a list from YAML
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}") from None
