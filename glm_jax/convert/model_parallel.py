"""Merge the per-rank state dicts of a model-parallel GLM checkpoint (spec 1.9).

The official code (Megatron ``mpu``) splits parameters across ``p`` ranks:

* column-parallel (output features split, dim 0): ``word_embeddings.weight``
  (vocab rows), ``mlp.dense_h_to_4h.{weight,bias}``, and ``attention.query_key_value``;
* row-parallel (input features split, dim 1): ``attention.dense.weight`` and
  ``mlp.dense_4h_to_h.weight``;
* replicated: everything else (position tables, LayerNorms, the row-parallel biases).

The fused QKV is split with ``stride=3``: rank ``r`` holds ``[Q_r; K_r; V_r]``, each
``h/p`` rows. Concatenating the ranks naively would give ``[Q_0; K_0; V_0; Q_1; ...]``;
the merged weight must be ``[Q_0; Q_1; ...; K_0; K_1; ...; V_0; V_1; ...]``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

_QKV = re.compile(r"^transformer\.layers\.\d+\.attention\.query_key_value\.(weight|bias)$")
_COLUMN = re.compile(r"^(word_embeddings\.weight|transformer\.layers\.\d+\.mlp\.dense_h_to_4h\.(weight|bias))$")
_ROW = re.compile(r"^transformer\.layers\.\d+\.(attention\.dense|mlp\.dense_4h_to_h)\.weight$")


def split_kind(key: str) -> str:
    """How ``key`` is split across ranks: ``"qkv"``, ``"column"``, ``"row"`` or ``"replicated"``."""
    if _QKV.match(key):
        return "qkv"
    if _COLUMN.match(key):
        return "column"
    if _ROW.match(key):
        return "row"
    return "replicated"


def merge(shards: Sequence[Mapping[str, Any]], *, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Merge per-rank state dicts (normalised keys) into the model-parallel = 1 state dict.

    Args:
      shards: one state dict per rank, rank order.
      names: per-rank file names for error messages.

    Raises:
      ValueError: naming the key and rank when the ranks disagree on keys, a split
        tensor's shapes don't line up, or a replicated tensor differs between ranks.
    """
    names = list(names) if names is not None else [f"rank {r}" for r in range(len(shards))]
    if len(shards) == 1:
        return dict(shards[0])
    keys = list(shards[0])
    problems = []
    for rank, shard in enumerate(shards[1:], start=1):
        missing, extra = set(keys) - set(shard), set(shard) - set(keys)
        if missing or extra:
            problems.append(
                f"{names[rank]} lacks {sorted(missing)} / has extra {sorted(extra)} compared with {names[0]}"
            )
    if problems:
        raise ValueError("model-parallel shards disagree on keys:\n  " + "\n  ".join(problems))

    merged = {}
    for key in keys:
        parts = [shard[key] for shard in shards]
        bad = [names[r] for r, p in enumerate(parts) if not isinstance(p, np.ndarray)]
        if bad:
            raise ValueError(f"{key} is not a tensor in {bad}")
        merged[key] = _merge_one(key, parts, names)
    return merged


def _merge_one(key: str, parts: list[np.ndarray], names: list[str]) -> np.ndarray:
    kind = split_kind(key)
    shapes = [p.shape for p in parts]
    if kind == "replicated":
        for rank, part in enumerate(parts[1:], start=1):
            if part.shape != parts[0].shape or not np.array_equal(part, parts[0]):
                raise ValueError(
                    f"{key} should be replicated across model-parallel ranks, but {names[rank]} "
                    f"(shape {list(part.shape)}) differs from {names[0]} (shape {list(parts[0].shape)})"
                )
        return parts[0]
    axis = 1 if kind == "row" else 0
    other = [tuple(np.delete(s, axis)) if len(s) > axis else None for s in shapes]
    if any(len(s) <= axis for s in shapes) or len(set(other)) != 1:
        raise ValueError(f"{key}: shard shapes {[list(s) for s in shapes]} cannot be joined on dim {axis}")
    if kind == "qkv":
        if any(s[0] % 3 for s in shapes):
            raise ValueError(f"{key}: per-rank rows {[s[0] for s in shapes]} are not divisible by 3 (Q|K|V)")
        # Each rank is [Q_r; K_r; V_r]: gather the Q thirds of all ranks, then K, then V.
        thirds = [np.split(p, 3, axis=0) for p in parts]
        return np.concatenate([t[i] for i in range(3) for t in thirds], axis=0)
    return np.concatenate(parts, axis=axis)
