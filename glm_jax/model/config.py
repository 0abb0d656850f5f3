"""The model's hyperparameters: one frozen, typed dataclass.

Facts come from ../shared/docs/glm_spec.md section 1: FFN = 4h, head dim = h / heads,
LayerNorm eps 1e-5, tanh GELU, dropout 0.1 everywhere, position tables with
``max_position_embeddings + 1`` rows, N(0, 0.02) init.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from glm_jax.typed_config import require_divisible, require_positive

ACTIVATIONS = ("gelu_tanh", "gelu_exact")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "minimal")
# See glm_jax/model/attention.py: "xla" is the dense reference (the official numerics);
# "dot_product_attention" is jax.nn.dot_product_attention (cuDNN on GPU) with the same
# mask; "blockwise" (plain JAX) and "pallas" (a Pallas kernel) skip fully masked
# blocks of the Part A / Part B pattern, read from sep or segment_ids + part_a.
ATTENTION_BACKENDS = ("xla", "dot_product_attention", "blockwise", "pallas")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a GLM.

    Attributes:
      vocab_size: rows of the word embedding (already padded to a multiple of 128,
        as the official code pads it); also the logits' last dimension.
      hidden_size: model width h.
      num_layers: transformer layers L.
      num_heads: attention heads; head_dim = hidden_size // num_heads.
      max_position_embeddings: the longest position id + 1 would overflow this;
        both position tables have ``max_position_embeddings + 1`` rows.
      intermediate_size: FFN width; None means 4 * hidden_size (every official model).
      layernorm_epsilon: 1e-5 in every official model.
      activation: "gelu_tanh" (the official training code) or "gelu_exact"
        (the Hugging Face port, spec section 1.4).
      embedding_dropout, attention_dropout, hidden_dropout: dropout rates (spec 1.5).
      init_std: std of the N(0, std) initialisers; output projections use
        init_std / sqrt(2 * num_layers).
      dtype: compute dtype of activations and matmuls.
      param_dtype: storage dtype of the parameters.
      scan_layers: stack the layers' parameters on a leading axis and run them with
        ``nn.scan`` (faster compiles for deep models).
      remat_policy: what the backward pass keeps; see glm_jax/model/glm.py.
      attention_backend: how attention is computed, one of ATTENTION_BACKENDS; "xla"
        is the dense reference. "dot_product_attention" has no attention dropout, and
        "pallas" none yet (a ValueError when training with attention_dropout > 0);
        "blockwise" and "pallas" take no explicit attention_mask. Decoding always
        uses "xla".
      attention_block_size: query and key tile size of the "blockwise" and "pallas"
        backends (a multiple of 8; the Pallas GPU kernel needs a power of two >= 16).
        It also sets the blockwise attention-dropout pattern.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    intermediate_size: Optional[int] = None
    layernorm_epsilon: float = 1e-5
    activation: str = "gelu_tanh"
    embedding_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.1
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_backend: str = "xla"
    attention_block_size: int = 128

    def __post_init__(self):
        require_positive(
            "model", self, "vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"
        )
        require_divisible("model", self, "hidden_size", "num_heads")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if self.attention_block_size <= 0 or self.attention_block_size % 8:
            raise ValueError(f"model.attention_block_size must be a positive multiple of 8, "
                             f"got {self.attention_block_size}")
        for name in ("embedding_dropout", "attention_dropout", "hidden_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {rate}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def position_table_size(self) -> int:
        """Rows of the position and block-position tables (spec 1.1: max_pos + 1)."""
        return self.max_position_embeddings + 1

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model.{name} must be one of {choices}, got {value!r}")


# Fields that do not shape the parameters (numerics and regularisation): a run may
# resume or fine-tune with other values; every other field must match the weights.
RUNTIME_FIELDS = (
    "embedding_dropout", "attention_dropout", "hidden_dropout", "dtype", "remat_policy", "attention_backend",
    "attention_block_size",
)


def architecture_changes(new: ModelConfig, old: ModelConfig) -> list[str]:
    """``"model.<field>: <new> (was <old>)"`` for every field outside
    :data:`RUNTIME_FIELDS` where ``new`` differs from ``old``."""
    return [
        f"model.{f.name}: {getattr(new, f.name)!r} (was {getattr(old, f.name)!r})"
        for f in dataclasses.fields(ModelConfig)
        if f.name not in RUNTIME_FIELDS and getattr(new, f.name) != getattr(old, f.name)
    ]
