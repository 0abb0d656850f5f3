"""The official GLM state dict <-> glm-jax params mapping, in one table.

:func:`entries` lists, for a config, every official key with its torch shape, the
Flax parameter path it maps to with its shape, and the two (exact, reshape/transpose
only) transforms between them. Validation, import and export all read that table,
so they cannot drift apart. The Flax layout is documented in glm_jax/model/glm.py;
tests check this table against ``GLM.init`` itself.

Torch Linear weights are ``[out, in]``; Flax kernels are ``[in, ..., out, ...]``:

    attention.query_key_value.weight [3h, h]  -> kernel [h, 3, heads, head_dim]   (W.T, split Q|K|V, heads)
    attention.query_key_value.bias   [3h]     -> bias   [3, heads, head_dim]
    attention.dense.weight           [h, h]   -> kernel [heads, head_dim, h]      (W.T, split input into heads)
    mlp.dense_h_to_4h.weight         [F, h]   -> kernel [h, F]                    (W.T)
    mlp.dense_4h_to_h.weight         [h, F]   -> kernel [F, h]                    (W.T)
    LayerNorm weight / bias                   -> scale / bias
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Optional

import numpy as np

from glm_jax.model.config import ModelConfig

FlaxPath = tuple[str, ...]
Transform = Callable[[np.ndarray], np.ndarray]

# Every official model has 64-dim heads (spec 1.1).
OFFICIAL_HEAD_DIM = 64

_LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: official key and shape, Flax path and shape, and the transforms."""

    key: str
    torch_shape: tuple[int, ...]
    path: FlaxPath
    flax_shape: tuple[int, ...]
    to_flax: Transform
    to_torch: Transform


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def _reshape(shape: tuple[int, ...]) -> Transform:
    return lambda x: x.reshape(shape)


def _transpose_then(shape: tuple[int, ...]) -> Transform:
    return lambda x: np.ascontiguousarray(x.T).reshape(shape)


def _reshape_then_transpose(shape: tuple[int, ...]) -> Transform:
    return lambda x: np.ascontiguousarray(x.reshape(shape).T)


def _plain(key: str, path: FlaxPath, shape: tuple[int, ...]) -> Entry:
    return Entry(key, shape, path, shape, _same, _same)


def _layer_norm(key: str, path: FlaxPath, h: int) -> list[Entry]:
    return [_plain(f"{key}.weight", path + ("scale",), (h,)), _plain(f"{key}.bias", path + ("bias",), (h,))]


def _layer_entries(config: ModelConfig, i: int) -> list[Entry]:
    h, heads, d, f = config.hidden_size, config.num_heads, config.head_dim, config.mlp_dim
    k, p = f"transformer.layers.{i}", (f"layers_{i}",)
    attn, mlp = p + ("attention",), p + ("mlp",)
    return [
        *_layer_norm(f"{k}.input_layernorm", p + ("input_layernorm",), h),
        Entry(
            f"{k}.attention.query_key_value.weight", (3 * h, h),
            attn + ("query_key_value", "kernel"), (h, 3, heads, d),
            _transpose_then((h, 3, heads, d)), _reshape_then_transpose((h, 3 * h)),
        ),
        Entry(
            f"{k}.attention.query_key_value.bias", (3 * h,),
            attn + ("query_key_value", "bias"), (3, heads, d),
            _reshape((3, heads, d)), _reshape((3 * h,)),
        ),
        Entry(
            f"{k}.attention.dense.weight", (h, h),
            attn + ("dense", "kernel"), (heads, d, h),
            _transpose_then((heads, d, h)), _reshape_then_transpose((h, h)),
        ),
        _plain(f"{k}.attention.dense.bias", attn + ("dense", "bias"), (h,)),
        *_layer_norm(f"{k}.post_attention_layernorm", p + ("post_attention_layernorm",), h),
        Entry(
            f"{k}.mlp.dense_h_to_4h.weight", (f, h),
            mlp + ("dense_h_to_4h", "kernel"), (h, f),
            _transpose, _transpose,
        ),
        _plain(f"{k}.mlp.dense_h_to_4h.bias", mlp + ("dense_h_to_4h", "bias"), (f,)),
        Entry(
            f"{k}.mlp.dense_4h_to_h.weight", (h, f),
            mlp + ("dense_4h_to_h", "kernel"), (f, h),
            _transpose, _transpose,
        ),
        _plain(f"{k}.mlp.dense_4h_to_h.bias", mlp + ("dense_4h_to_h", "bias"), (h,)),
    ]


def entries(config: ModelConfig) -> list[Entry]:
    """Every parameter of ``config``'s model, unscanned (``layers_{i}``) Flax paths."""
    h, rows = config.hidden_size, config.position_table_size
    out = [
        _plain("word_embeddings.weight", ("word_embeddings", "embedding"), (config.vocab_size, h)),
        _plain("transformer.position_embeddings.weight", ("position_embeddings", "embedding"), (rows, h)),
        _plain("transformer.block_position_embeddings.weight", ("block_position_embeddings", "embedding"), (rows, h)),
    ]
    for i in range(config.num_layers):
        out += _layer_entries(config, i)
    out += _layer_norm("transformer.final_layernorm", ("final_layernorm",), h)
    return out


# ----------------------------------------------------------------------------- inference


def infer_config(
    state_dict: Mapping[str, Any],
    *,
    num_heads: Optional[int] = None,
    hints: Optional[Mapping[str, int]] = None,
    source: str = "checkpoint",
) -> ModelConfig:
    """Read the architecture off the tensor shapes.

    vocab_size and hidden_size come from ``word_embeddings.weight [V, h]``; num_layers
    from the largest ``transformer.layers.{i}`` index; max_position_embeddings from
    the position table's rows - 1; intermediate_size from ``dense_h_to_4h`` (None when
    it is 4h). Shapes cannot tell the head count: ``num_heads``, else the sidecar's
    ``num_attention_heads`` hint, else ``hidden_size // 64`` (every official model).

    Raises ValueError naming ``source`` and the key when a tensor needed here is
    missing or has the wrong rank, or a hint contradicts the shapes.
    """
    hints = dict(hints or {})

    def shape_of(key: str, rank: int) -> tuple[int, ...]:
        value = state_dict.get(key)
        if value is None:
            raise ValueError(f"{source}: missing key {key} (needed to infer the model size)")
        if not isinstance(value, np.ndarray) or value.ndim != rank:
            got = list(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"{source}: {key} should be a {rank}-D tensor, got {got}")
        return value.shape

    vocab_size, hidden_size = shape_of("word_embeddings.weight", 2)
    rows = shape_of("transformer.position_embeddings.weight", 2)[0]
    layer_ids = {int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))}
    if not layer_ids:
        raise ValueError(f"{source}: no transformer.layers.{{i}}.* keys")
    num_layers = max(layer_ids) + 1
    mlp_key = "transformer.layers.0.mlp.dense_h_to_4h.weight"
    mlp_dim = shape_of(mlp_key, 2)[0] if mlp_key in state_dict else 4 * hidden_size

    inferred = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": vocab_size,
        "max_sequence_length": rows - 1,  # the HF config's name for max_position_embeddings
    }
    for name, value in inferred.items():
        if name in hints and hints[name] != value:
            raise ValueError(f"{source}: config.json says {name}={hints[name]}, but the tensors give {value}")
    if num_heads is None:
        num_heads = hints.get("num_attention_heads", max(1, hidden_size // OFFICIAL_HEAD_DIM))
    if num_heads <= 0 or hidden_size % num_heads:
        raise ValueError(f"{source}: hidden size {hidden_size} is not divisible into {num_heads} heads")
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=rows - 1,
        intermediate_size=None if mlp_dim == 4 * hidden_size else mlp_dim,
    )


def check_state_dict(state_dict: Mapping[str, Any], config: ModelConfig, source: str) -> None:
    """Require exactly the keys and shapes of ``config``'s model; report every problem at once.

    Raises ValueError listing each missing key (with its expected shape), each
    unexpected key, each mis-shaped tensor (expected vs actual) and each value that
    is not a floating-point tensor.
    """
    expected = {e.key: e.torch_shape for e in entries(config)}
    problems = []
    for key, shape in expected.items():
        if key not in state_dict:
            problems.append(f"missing key {key} (expected shape {list(shape)})")
            continue
        value = state_dict[key]
        if not isinstance(value, np.ndarray):
            problems.append(f"{key}: expected a tensor of shape {list(shape)}, got {value!r}")
        elif value.shape != shape:
            problems.append(f"{key}: expected shape {list(shape)}, got {list(value.shape)}")
        elif not _is_float(value.dtype):
            problems.append(f"{key}: expected a floating-point tensor, got dtype {value.dtype}")
    for key in state_dict:
        if key not in expected:
            value = state_dict[key]
            what = f"shape {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
            problems.append(f"unexpected key {key} ({what})")
    if problems:
        raise ValueError(
            f"{source} does not match {describe(config)} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )


def _is_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 is not a numpy floating subtype, so ask for its kind too.
    return np.issubdtype(dtype, np.floating) or dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def describe(config: ModelConfig) -> str:
    """One line: ``GLM L=24 h=1024 heads=16 ffn=4096 vocab=30592 max_pos=512``."""
    return (
        f"GLM L={config.num_layers} h={config.hidden_size} heads={config.num_heads} ffn={config.mlp_dim} "
        f"vocab={config.vocab_size} max_pos={config.max_position_embeddings}"
    )


# ----------------------------------------------------------------------------- conversion


def to_params(state_dict: dict[str, np.ndarray], config: ModelConfig) -> dict[str, Any]:
    """Official state dict (validated) -> unscanned float32 Flax params (nested numpy).

    Consumes ``state_dict``: entries are popped as they are converted, so a big
    fp16 checkpoint never exists in both precisions at once.
    """
    params: dict[str, Any] = {}
    for entry in entries(config):
        value = entry.to_flax(np.asarray(state_dict.pop(entry.key), dtype=np.float32))
        _set(params, entry.path, value)
    return params


def to_state_dict(params: Mapping[str, Any], config: ModelConfig, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Unscanned Flax params -> official state dict of contiguous ``dtype`` arrays."""
    out = {}
    for entry in entries(config):
        value = np.asarray(_get(params, entry.path))
        out[entry.key] = np.ascontiguousarray(entry.to_torch(value).astype(dtype, copy=False))
    return out


def check_params(params: Mapping[str, Any], config: ModelConfig, what: str = "params") -> None:
    """Require exactly the unscanned Flax params of ``config``; report every problem at once."""
    expected = {e.path: e.flax_shape for e in entries(config)}
    actual = dict(flatten(params))
    problems = [f"missing {'/'.join(p)} (expected shape {list(s)})" for p, s in expected.items() if p not in actual]
    problems += [f"unexpected {'/'.join(p)}" for p in actual if p not in expected]
    problems += [
        f"{'/'.join(p)}: expected shape {list(s)}, got {list(np.shape(actual[p]))}"
        for p, s in expected.items()
        if p in actual and tuple(np.shape(actual[p])) != s
    ]
    if problems:
        raise ValueError(f"{what} do not match {describe(config)}:\n  " + "\n  ".join(problems))


def resize_position_tables(
    state_dict: dict[str, np.ndarray], max_position_embeddings: int, init_std: float, seed: int = 0
) -> None:
    """Give both position tables ``max_position_embeddings + 1`` rows, in place.

    Shrinking keeps the first rows (exact for every position that still fits).
    Growing keeps the stored rows and draws the new ones from N(0, init_std), which
    is what the official ``train_utils.load_pretrained`` does when finetuning with a
    longer context (spec 1.9); ``seed`` makes it reproducible.
    """
    rng = np.random.default_rng(seed)
    rows = max_position_embeddings + 1
    for key in ("transformer.position_embeddings.weight", "transformer.block_position_embeddings.weight"):
        table = state_dict[key]
        if rows <= table.shape[0]:
            state_dict[key] = table[:rows]
        else:
            extra = rng.normal(0.0, init_std, size=(rows - table.shape[0], table.shape[1])).astype(table.dtype)
            state_dict[key] = np.concatenate([table, extra], axis=0)


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any], prefix: FlaxPath = ()) -> list[tuple[FlaxPath, Any]]:
    """Nested dict -> ``[(path, leaf)]`` in insertion order."""
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += flatten(value, prefix + (key,))
        else:
            out.append((prefix + (key,), value))
    return out


def _set(tree: dict[str, Any], path: FlaxPath, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping[str, Any], path: FlaxPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def stack_layers(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """``layers_{i}`` subtrees -> one ``layers`` subtree with a leading ``[num_layers]`` axis.

    The numpy twin of ``glm_jax.model.stack_layers``: it stays on the host, so a
    converted 10B model never has to fit on one accelerator.
    """
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    per_layer = [dict(flatten(params[f"layers_{i}"])) for i in range(num_layers)]
    stacked: dict[str, Any] = {}
    for path in per_layer[0]:
        _set(stacked, path, np.stack([layer[path] for layer in per_layer]))
    out["layers"] = stacked
    return out


def unstack_layers(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Inverse of :func:`stack_layers` (numpy views, no copies)."""
    out = {k: v for k, v in params.items() if k != "layers"}
    leaves = [(path, np.asarray(value)) for path, value in flatten(params["layers"])]
    for path, value in leaves:
        if np.shape(value)[:1] != (num_layers,):
            raise ValueError(
                f"layers/{'/'.join(path)}: expected a leading axis of {num_layers} layers, "
                f"got shape {list(np.shape(value))}"
            )
    for i in range(num_layers):
        layer: dict[str, Any] = {}
        for path, value in leaves:
            _set(layer, path, value[i])
        out[f"layers_{i}"] = layer
    return out
