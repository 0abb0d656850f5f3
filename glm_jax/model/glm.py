"""GLM in Flax Linen: a Pre-LN Transformer with 2D positions and the Part A / Part B mask.

Spec sections 1.2-1.6 (../shared/docs/glm_spec.md). One layer is

    x = x + Dropout(Dense(Attention(LN1(x))))
    x = x + Dropout(W2(gelu(W1(LN2(x)))))

and the logits are ``LN_final(x) @ word_embeddings.T`` (tied, no bias), in float32.

Parameter layout (glm_jax/convert/param_map.py maps the official names onto it):

    word_embeddings/embedding                      [vocab, embed]
    position_embeddings/embedding                  [max_pos + 1, embed]
    block_position_embeddings/embedding            [max_pos + 1, embed]
    layers_{i}/input_layernorm/{scale,bias}        [embed]
    layers_{i}/attention/query_key_value/kernel    [embed, 3, heads, head_dim]   (Q | K | V)
    layers_{i}/attention/query_key_value/bias      [3, heads, head_dim]
    layers_{i}/attention/dense/kernel              [heads, head_dim, embed]
    layers_{i}/attention/dense/bias                [embed]
    layers_{i}/post_attention_layernorm/{scale,bias}
    layers_{i}/mlp/dense_h_to_4h/{kernel [embed, mlp], bias [mlp]}
    layers_{i}/mlp/dense_4h_to_h/{kernel [mlp, embed], bias [embed]}
    final_layernorm/{scale,bias}

With ``scan_layers`` the ``layers_{i}`` subtrees become one ``layers`` subtree whose
leaves have a leading ``[num_layers]`` axis (see :func:`stack_layers`).

Incremental decoding (``decode=True``) keeps a key/value cache in the flax ``cache``
collection; see :func:`init_cache` and the "KV cache" section below.

Every parameter carries logical axis names (vocab, embed, position, qkv, heads, kv,
mlp, norm, layers); glm_jax/sharding.py maps them onto the device mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from glm_jax.model import attention, masks
from glm_jax.model.config import ModelConfig
from glm_jax.model.layer_norm import LayerNorm
from glm_jax.model.materialize import materialize_gradient
from glm_jax.model.projection import Projection, param_init

# The official code fills masked scores with the fp16 minimum, not -inf (spec 1.8).
MASK_VALUE = attention.MASK_VALUE

Array = jnp.ndarray

# Logical axes of the per-layer cached keys/values [batch, cache_len, heads, head_dim]:
# the same names as the attention activations, so the cache is split like them
# (batch over data/fsdp, heads over tensor) with no new sharding rule.
CACHE_KV_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
CACHE_VALID_AXES = ("activation_batch", "activation_length")


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
    return nn.with_logical_constraint(x, axes)


def layer_norm(config: ModelConfig, name: str) -> LayerNorm:
    """LayerNorm with the config's eps, float32 statistics and the two-pass variance
    torch computes; its gradient is written out (glm_jax/model/layer_norm.py)."""
    return LayerNorm(epsilon=config.layernorm_epsilon, dtype=jnp.dtype(config.dtype),
                     param_dtype=jnp.dtype(config.param_dtype), name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    The QKV kernel ``[embed, 3, heads, head_dim]`` is the official ``[3h, h]`` fused
    weight transposed and split, so heads can be sharded without reordering. The
    attention itself runs on ``config.attention_backend`` (glm_jax/model/attention.py);
    decode mode always runs the dense "xla" reference over the cache.
    """

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, pattern: attention.AttentionPattern, cache_index: Optional[Array] = None) -> Array:
        """Attend.

        Args:
          x: ``[batch, q_len, embed]``.
          pattern: from :func:`attention.make_pattern` for the configured backend; in
            decode mode its ``mask`` is ``[batch, 1, q_len, cache_len]`` bool.
          cache_index: decode mode only: int scalar, the cache slot of x's first token.

        In decode mode the first call (from :func:`init_cache`) only creates
        ``cached_key`` / ``cached_value`` ``[batch, cache_len, heads, head_dim]``
        sized by x; later calls write x's keys and values at ``cache_index`` and
        attend over the whole cache.
        """
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        out_std = cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
        qkv = Projection(
            cfg,
            "btd,dxhk->btxhk",
            (cfg.hidden_size, 3, cfg.num_heads, cfg.head_dim),
            ("embed", "qkv", "heads", "kv"),
            ("qkv", "heads", "kv"),
            cfg.init_std,
            name="query_key_value",
        )(x)
        qkv = checkpoint_name(qkv, "qkv")
        qkv = _constrain(qkv, ("activation_batch", "activation_length", None, "activation_heads", "activation_kv"))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [batch, T, heads, head_dim]

        # The official code scales K (not the scores) by 1/sqrt(d) before Q K^T.
        key = key / jnp.asarray(math.sqrt(cfg.head_dim), dtype)
        if self.decode:
            key, value = self._update_cache(key, value, cache_index)
        backend = "xla" if self.decode else cfg.attention_backend
        rate = 0.0 if self.deterministic else cfg.attention_dropout
        if backend == "xla":
            keep = attention.dropout_keep(self.make_rng("dropout"), rate, query, key) if rate > 0 else None
            context = attention.xla_attention(query, key, value, pattern.mask, keep, rate)
        else:
            context = attention.attend(
                backend, query, key, value, pattern, block_size=cfg.attention_block_size, dropout_rate=rate,
                dropout_rng=self.make_rng("dropout") if rate > 0 else None,
            )
        context = _constrain(context, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))

        out = Projection(
            cfg,
            "bthk,hkd->btd",
            (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
            ("heads", "kv", "embed"),
            ("norm",),
            out_std,
            name="dense",
        )(context)
        out = checkpoint_name(out, "attention_out")
        return nn.Dropout(rate=cfg.hidden_dropout)(out, deterministic=self.deterministic)

    def _update_cache(self, key: Array, value: Array, cache_index: Optional[Array]) -> tuple[Array, Array]:
        """Write ``[batch, q_len, heads, head_dim]`` keys/values at ``cache_index``;
        return the whole cache. Keys are cached already scaled by 1/sqrt(d): the
        per-token computation is then exactly the full forward's (spec 1.7)."""
        initialized = self.has_variable("cache", "cached_key")
        init = nn.with_logical_partitioning(jnp.zeros, CACHE_KV_AXES)
        cached_key = self.variable("cache", "cached_key", init, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", init, value.shape, value.dtype)
        if not initialized:  # the sizing pass of init_cache: plain attention
            return key, value
        if cache_index is None:
            raise ValueError("SelfAttention(decode=True) needs cache_index once the cache exists")
        start = (0, cache_index, 0, 0)
        key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype), start)
        key, value = _constrain(key, CACHE_KV_AXES), _constrain(value, CACHE_KV_AXES)
        cached_key.value, cached_value.value = key, value
        return key, value


class MLP(nn.Module):
    """``Dropout(W2(gelu(W1 x + b1)) + b2)`` with W1: embed -> mlp, W2: mlp -> embed."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        out_std = cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
        h = Projection(
            cfg, "btd,df->btf", (cfg.hidden_size, cfg.mlp_dim), ("embed", "mlp"), ("mlp",), cfg.init_std,
            name="dense_h_to_4h",
        )(x)
        h = _constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        # tanh GELU is what the official weights were trained with (spec 1.4).
        # Rematerialised: the backward keeps only the input (not tanh's output as well)
        # and re-evaluates the activation, elementwise work fused into its gradient.
        h = jax.checkpoint(functools.partial(jax.nn.gelu, approximate=cfg.activation == "gelu_tanh"))(h)
        h = checkpoint_name(h, "mlp_hidden")
        out = Projection(
            cfg, "btf,fd->btd", (cfg.mlp_dim, cfg.hidden_size), ("mlp", "embed"), ("norm",), out_std,
            name="dense_4h_to_h",
        )(h)
        return nn.Dropout(rate=cfg.hidden_dropout)(out, deterministic=self.deterministic)


class TransformerLayer(nn.Module):
    """One Pre-LN layer. Returns ``(x, None)`` so that ``nn.scan`` can stack it."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, pattern: attention.AttentionPattern, cache_index: Optional[Array] = None):
        cfg = self.config
        # Store the residual stream's gradient here, not re-derived per layer (materialize.py).
        x = materialize_gradient(_constrain(x, ("activation_batch", "activation_length", "activation_embed")))
        h = layer_norm(cfg, "input_layernorm")(x)
        x = x + SelfAttention(cfg, self.deterministic, self.decode, name="attention")(h, pattern, cache_index)
        x = materialize_gradient(x)
        h = layer_norm(cfg, "post_attention_layernorm")(x)
        x = x + MLP(cfg, self.deterministic, name="mlp")(h)
        return x, None


def _remat_policy(name: str):
    """Map a config name onto a jax checkpoint policy (None = save nothing)."""
    policies = jax.checkpoint_policies
    return {
        "full": None,
        "dots": policies.dots_saveable,
        "dots_no_batch": policies.checkpoint_dots_with_no_batch_dims,
        # Keep the projections' outputs; recompute attention scores, GELU and norms.
        "minimal": policies.save_only_these_names("qkv", "attention_out", "mlp_hidden"),
    }[name]


class GLM(nn.Module):
    """The GLM language model: tokens and 2D positions in, float32 logits out."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        position_ids: Array,
        block_position_ids: Array,
        *,
        sep: Optional[Array] = None,
        attention_mask: Optional[Array] = None,
        segment_ids: Optional[Array] = None,
        part_a: Optional[Array] = None,
        deterministic: bool = True,
        decode: bool = False,
        valid: Optional[Array] = None,
        return_hidden: bool = False,
        **unused_features: Any,
    ) -> Array:
        """Compute logits.

        Args:
          tokens: ``[batch, T]`` int token ids (Part A, then Part B inputs).
          position_ids: ``[batch, T]`` int; Part B tokens carry their mask's position.
          block_position_ids: ``[batch, T]`` int; 0 in Part A, 1..len+1 inside a span.
          sep / attention_mask / segment_ids + part_a: the attention pattern, exactly
            one form; see glm_jax/model/masks.py. Decode mode takes ``sep`` only.
          deterministic: disable dropout (pass False and a 'dropout' rng to train).
          decode: incremental decoding with the key/value cache in the ``cache``
            collection (apply with ``mutable=['cache']``; see "KV cache" below).
          valid: decode mode only: ``[batch, T]`` bool, False for padding tokens,
            which no later token may attend to. Default: all True.
          return_hidden: return the final layernorm's output ``[batch, T, embed]`` instead
            of logits, for losses that project only what they read (sparse_logits.py).
          unused_features: other batch features (targets, loss_mask, ...), ignored,
            so that ``model.apply(variables, **batch)`` works.

        Returns:
          ``[batch, T, vocab]`` float32 logits (or the hidden states, see above).

        KV cache. The ``cache`` collection holds ``cache_index`` (int scalar: slots
        written so far), ``key_valid [batch, cache_len]`` and, per layer,
        ``cached_key`` / ``cached_value`` ``[batch, cache_len, heads, head_dim]``.
        Each decode call writes its T tokens at slots ``cache_index ..
        cache_index + T - 1`` (the same slots for every row) and advances the index
        by T. Slot numbers are storage only: positions come from ``position_ids``,
        so a batch of contexts of different lengths is prefilled right-padded, with
        ``valid`` False on the padding. The mask is :func:`masks.cache_mask`: this
        call's first ``sep`` tokens are a bidirectional Part A, everything else sees
        every valid cached slot and this call's tokens causally. A prefill is one
        call with the whole context (``sep`` = context lengths); a decode step is a
        call with T = 1 and ``sep = 0``. Writing past ``cache_len`` is not checked
        here (XLA clamps the slot): callers size the cache.
        """
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        cache_index = None
        if decode:
            mask, cache_index = self._decode_mask(tokens.shape, sep, attention_mask, segment_ids, valid)
            pattern = attention.AttentionPattern(mask=mask)
        else:
            if valid is not None:
                raise ValueError("valid (padding flags) is only used with decode=True")
            # Dense backends get the [batch, 1, T, T] mask, built once for all layers; the
            # block backends get per-token segment ids and Part A flags instead.
            pattern = attention.make_pattern(
                cfg.attention_backend, tokens.shape[1],
                sep=sep, attention_mask=attention_mask, segment_ids=segment_ids, part_a=part_a,
            )

        def embed(name: str, rows: int, axes: tuple[str, str]) -> nn.Embed:
            return nn.Embed(
                num_embeddings=rows,
                features=cfg.hidden_size,
                dtype=dtype,
                param_dtype=param_dtype,
                embedding_init=param_init(cfg.init_std, axes),
                name=name,
            )

        word_embeddings = embed("word_embeddings", cfg.vocab_size, ("vocab", "embed"))
        x = word_embeddings(tokens)
        x = x + embed("position_embeddings", cfg.position_table_size, ("position", "embed"))(position_ids)
        x = x + embed("block_position_embeddings", cfg.position_table_size, ("position", "embed"))(
            block_position_ids
        )
        x = nn.Dropout(rate=cfg.embedding_dropout)(x, deterministic=deterministic)
        x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))

        layer_cls = TransformerLayer
        # Rematerialisation only pays off in a backward pass, which decoding never takes.
        if cfg.remat_policy != "none" and not decode:
            layer_cls = nn.remat(
                layer_cls,
                policy=_remat_policy(cfg.remat_policy),
                # Under scan the loop already blocks CSE across layers (flax docs).
                prevent_cse=not cfg.scan_layers,
            )
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                # A scanned cache stacks per-layer keys/values on a leading axis too.
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            stack = stack(cfg, deterministic, decode, name="layers")
            x, _ = stack(x, pattern, cache_index) if decode else stack(x, pattern)
        else:
            for i in range(cfg.num_layers):
                layer = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")
                x, _ = layer(x, pattern, cache_index) if decode else layer(x, pattern)

        x = layer_norm(cfg, "final_layernorm")(x)
        if return_hidden:
            return _constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        # Tied output head, no bias; accumulate in float32 so bf16 runs give fp32 logits.
        embedding = word_embeddings.embedding.astype(dtype)
        logits = jnp.einsum("btd,vd->btv", x, embedding, preferred_element_type=jnp.float32)
        return _constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

    def _decode_mask(
        self,
        shape: tuple[int, int],
        sep: Optional[Array],
        attention_mask: Optional[Array],
        segment_ids: Optional[Array],
        valid: Optional[Array],
    ) -> tuple[Array, Optional[Array]]:
        """Decode mode: the mask over the cache, and the slot of the first new token.

        Creates ``cache_index`` and ``key_valid`` on the sizing pass (the cache is as
        long as that pass's tokens), where it returns the ordinary sep mask.
        """
        if sep is None or attention_mask is not None or segment_ids is not None:
            raise ValueError("decode=True takes the attention pattern as sep (Part A length per row) only")
        batch, q_len = shape
        valid = jnp.ones(shape, bool) if valid is None else jnp.asarray(valid, bool)
        if valid.shape != shape:
            raise ValueError(f"valid must have the tokens' shape {shape}, got {valid.shape}")
        initialized = self.has_variable("cache", "cache_index")
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        key_valid = self.variable(
            "cache", "key_valid", nn.with_logical_partitioning(jnp.zeros, CACHE_VALID_AXES), shape, jnp.bool_
        )
        if not initialized:
            return masks.sep_mask(sep, q_len), None
        cache_index = index.value
        key_valid.value = _constrain(
            jax.lax.dynamic_update_slice(key_valid.value, valid, (0, cache_index)), CACHE_VALID_AXES
        )
        index.value = cache_index + q_len
        return masks.cache_mask(key_valid.value, cache_index, q_len, sep), cache_index


def cache_shapes(config: ModelConfig, batch_size: int, cache_length: int) -> dict:
    """Shapes of the decode cache, as logically partitioned ``ShapeDtypeStruct`` boxes.

    ``nn.get_partition_spec`` of the result gives the cache's logical specs (for
    ``glm_jax.sharding.logical_sharding``). Nothing is computed or allocated.
    """
    if batch_size <= 0 or cache_length <= 0:
        raise ValueError(f"batch_size and cache_length must be positive, got {batch_size} and {cache_length}")
    tokens = jnp.zeros((batch_size, cache_length), jnp.int32)
    sep = jnp.zeros((batch_size,), jnp.int32)

    def sizing_pass():
        variables = GLM(config).init(jax.random.PRNGKey(0), tokens, tokens, tokens, sep=sep, decode=True)
        return variables["cache"]

    return jax.eval_shape(sizing_pass)


def init_cache(config: ModelConfig, batch_size: int, cache_length: int) -> dict:
    """An empty decode cache for ``batch_size`` rows of ``cache_length`` slots.

    Returns the ``cache`` collection for ``GLM(config).apply({'params': ..., 'cache':
    cache}, ..., decode=True, mutable=['cache'])``: ``cache_index`` 0, no valid slot,
    zero keys/values ``[batch, cache_length, heads, head_dim]`` per layer (stacked
    ``[num_layers, ...]`` under ``scan_layers``) in the compute dtype.
    """
    shapes = nn.unbox(cache_shapes(config, batch_size, cache_length))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cache_batch_axis(path: tuple, leaf: Any) -> Optional[int]:
    """The batch axis of one cache leaf (None for ``cache_index``), for reordering
    rows (beam search) or repeating them. Keys/values are ``[..., batch, len, heads,
    head_dim]`` with an optional leading layer axis; ``key_valid`` is ``[batch, len]``."""
    name = getattr(path[-1], "key", None)
    if name in ("cached_key", "cached_value"):
        return leaf.ndim - 4
    if name == "key_valid":
        return 0
    if name == "cache_index":
        return None
    raise ValueError(f"unknown cache entry {jax.tree_util.keystr(path)}")


def map_cache_rows(cache: dict, fn: Callable[[Array, int], Array]) -> dict:
    """Apply ``fn(array, batch_axis)`` to every cache leaf that has a batch axis,
    e.g. ``jnp.take(x, rows, axis)`` to reorder beams or ``jnp.repeat`` to copy rows."""

    def apply(path, leaf):
        axis = cache_batch_axis(path, leaf)
        return leaf if axis is None else fn(leaf, axis)

    return jax.tree_util.tree_map_with_path(apply, cache)


def layer_names(num_layers: int) -> list[str]:
    return [f"layers_{i}" for i in range(num_layers)]


def stack_layers(params: dict, num_layers: int) -> dict:
    """Unscanned params (``layers_{i}``) -> scanned params (``layers`` with a leading axis)."""
    params = dict(params)
    per_layer = [params.pop(name) for name in layer_names(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    return params


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Scanned params (``layers`` with a leading axis) -> unscanned (``layers_{i}``)."""
    params = dict(params)
    stacked = params.pop("layers")
    for i, name in enumerate(layer_names(num_layers)):
        params[name] = jax.tree.map(functools.partial(lambda i, x: x[i], i), stacked)
    return params
