"""Public entry points: load an official checkpoint, export one, convert to a model dir."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import ml_dtypes
import numpy as np

from glm_jax import model_dir
from glm_jax.convert import param_map, sources
from glm_jax.data import tokenizers
from glm_jax.data.tokenizers import TokenizerConfig
from glm_jax.model.config import ModelConfig

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

EXPORT_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
EXPORT_SUFFIXES = (".pt", ".bin", ".safetensors", ".npz")


def load_official(
    path: PathLike,
    *,
    num_heads: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
    scan_layers: bool = False,
) -> tuple[ModelConfig, dict[str, Any]]:
    """Read an official GLM checkpoint as a ModelConfig and glm-jax params.

    Args:
      path: a checkpoint file or directory in any layout that
        :mod:`glm_jax.convert.sources` understands: ``mp_rank_XX_model_states.pt``
        (one file, or a directory of model-parallel shards to merge), an official
        save directory with ``latest_checkpointed_iteration.txt``, Hugging Face
        ``pytorch_model.bin`` / ``*.safetensors`` (sharded or not), or an ``.npz``
        holding a flat state dict.
      num_heads: attention heads. Shapes cannot tell; default: ``num_attention_heads``
        from a ``config.json`` next to the weights, else ``hidden_size // 64`` (all
        official models have 64-dim heads).
      max_position_embeddings: resize both position tables to this + 1 rows
        (truncate, or extend with N(0, 0.02) rows as the official finetuning code
        does); default: keep the stored size.
      scan_layers: return the layers stacked on a leading axis (``params['layers']``)
        for ``ModelConfig.scan_layers=True``.

    Returns:
      ``(config, params)``: params is a nested dict of float32 numpy arrays in the
      layout of glm_jax/model/glm.py (fp16/bf16 checkpoints are upcast).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: unrecognised layout, or keys/shapes that do not form a GLM; every
        missing, unexpected or mis-shaped key is listed with its expected shape.
    """
    raw = sources.read_checkpoint(path)
    source = raw.source
    if raw.hints_file is not None and raw.hints:
        logger.info("%s: using %s from %s", source, raw.hints, raw.hints_file)
    if num_heads is not None and raw.hints.get("num_attention_heads", num_heads) != num_heads:
        logger.warning(
            "%s: num_heads=%d overrides num_attention_heads=%d from %s",
            source, num_heads, raw.hints["num_attention_heads"], raw.hints_file,
        )
    config = param_map.infer_config(raw.state_dict, num_heads=num_heads, hints=raw.hints, source=source)
    param_map.check_state_dict(raw.state_dict, config, source)

    state_dict = raw.state_dict
    if max_position_embeddings is not None and max_position_embeddings != config.max_position_embeddings:
        if max_position_embeddings <= 0:
            raise ValueError(f"max_position_embeddings must be positive, got {max_position_embeddings}")
        grows = max_position_embeddings > config.max_position_embeddings
        logger.warning(
            "%s: resizing the position tables from %d to %d positions%s",
            source, config.max_position_embeddings, max_position_embeddings,
            f" (new rows drawn from N(0, {config.init_std}))" if grows else "",
        )
        param_map.resize_position_tables(state_dict, max_position_embeddings, config.init_std)
        config = config.replace(max_position_embeddings=max_position_embeddings)

    params = param_map.to_params(state_dict, config)
    if scan_layers:
        params = param_map.stack_layers(params, config.num_layers)
        config = config.replace(scan_layers=True)
    return config, params


def export_official(
    config: ModelConfig,
    params: Mapping[str, Any],
    path: PathLike,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write glm-jax params as an official GLM state dict; returns ``path``.

    The file format follows ``path``'s suffix:

    * ``.pt``: ``torch.save({'module': state_dict})``, the official
      ``mp_rank_00_model_states.pt`` layout (needs torch: ``pip install 'glm-jax[torch]'``);
    * ``.bin``: ``torch.save(state_dict)``, the Hugging Face ``pytorch_model.bin``
      layout (needs torch);
    * ``.safetensors``: the flat state dict, readable by ``safetensors`` with torch,
      numpy or JAX (no torch needed);
    * ``.npz``: the flat state dict via ``numpy.savez`` (no torch; float32/float16 only,
      as npz cannot store bfloat16).

    Args:
      config: the model's config.
      params: Flax params, unscanned (``layers_{i}``) or scanned (``layers``), numpy
        or jax arrays; the transforms are reshapes and transposes only, so a float32
        export of converted params reproduces the original tensors bit for bit.
      dtype: "float32", "float16" or "bfloat16".
      overwrite: replace an existing file (default: refuse).

    Raises:
      ValueError: unknown dtype or suffix, an existing file, params that do not
        match ``config``, or torch missing for ``.pt`` / ``.bin``.
    """
    path = Path(path)
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    if path.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"{path}: unsupported suffix {path.suffix!r}; use one of {EXPORT_SUFFIXES}")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; pass overwrite=True to replace it")
    if path.suffix == ".npz" and dtype == "bfloat16":
        raise ValueError(f"{path}: .npz cannot store bfloat16; use .safetensors or .pt")
    torch = _import_torch(path) if path.suffix in (".pt", ".bin") else None

    params = nn.unbox(dict(params))
    if "layers" in params:
        params = param_map.unstack_layers(params, config.num_layers)
    param_map.check_params(params, config, what="params to export")
    state_dict = param_map.to_state_dict(params, config, EXPORT_DTYPES[dtype])

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        # "format": "pt" lets Hugging Face transformers load the file as torch weights.
        save_file(state_dict, path, metadata={"format": "pt"})
    elif path.suffix == ".npz":
        # savez appends ".npz" to names without it; ours has it, so the name is kept.
        np.savez(path, **state_dict)
    else:
        tensors = {k: _to_torch(torch, v) for k, v in state_dict.items()}
        torch.save({"module": tensors} if path.suffix == ".pt" else tensors, path)
    return path


def convert_checkpoint(
    src: PathLike,
    out_dir: PathLike,
    *,
    max_position_embeddings: Optional[int] = None,
    scan_layers: bool = False,
    num_heads: Optional[int] = None,
    tokenizer: Optional["TokenizerConfig"] = None,
    style: str = "official",
) -> ModelConfig:
    """Convert an official checkpoint into a glm-jax model directory; returns its config.

    ``out_dir`` is checked first (it must not exist or be empty), and so are the
    tokenizer files, so a mistake there does not cost a long load. Prints one
    summary line (config, parameter count, tokenizer).

    Args:
      src, max_position_embeddings, scan_layers, num_heads: see :func:`load_official`.
      tokenizer: the tokenizer to record with the model
        (``glm_jax.data.tokenizers.TokenizerConfig``, file paths as they are now; the
        files are copied in). Its padded size must equal the checkpoint's vocab_size.
      style: ``"official"`` reproduces the THUDM/GLM code (tanh GELU, official
        inputs); ``"hf"`` the Hugging Face port (``activation="gelu_exact"`` and
        ``input_style: hf``, which needs ``tokenizer``).

    Raises:
      ValueError / FileNotFoundError: a bad output directory, checkpoint or
        tokenizer, or a tokenizer whose size does not fit the checkpoint.
    """
    if style not in tokenizers.INPUT_STYLES:
        raise ValueError(f"style must be one of {tokenizers.INPUT_STYLES}, got {style!r}")
    if style == "hf":
        if tokenizer is None:
            raise ValueError("style 'hf' needs a tokenizer: the input style is recorded in its tokenizer.yaml")
        tokenizer = dataclasses.replace(tokenizer, input_style="hf")
    out = model_dir.ensure_empty_dir(out_dir)
    if tokenizer is not None:
        tokenizers.build_vocabulary(tokenizer)  # missing or malformed files fail before the load
    config, params = load_official(
        src, num_heads=num_heads, max_position_embeddings=max_position_embeddings, scan_layers=scan_layers
    )
    if style == "hf":
        config = config.replace(activation="gelu_exact")  # the port's erf GELU (spec 1.4, 1.10)
    model_dir.save_model_dir(out, config, params, tokenizer=tokenizer)
    count = sum(math.prod(np.shape(v)) for _, v in param_map.flatten(params))
    recorded = "no tokenizer" if tokenizer is None else f"tokenizer {tokenizer.kind} ({tokenizer.input_style} inputs)"
    print(
        f"converted {src} -> {out}: {param_map.describe(config)} scan_layers={config.scan_layers} "
        f"activation={config.activation}, {count:,} parameters (float32), {recorded}"
    )
    return config


def _import_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"{path}: writing {path.suffix} files needs torch (pip install 'glm-jax[torch]'); "
            "or export to .safetensors / .npz, which do not"
        ) from None
    return torch


def _to_torch(torch: Any, array: np.ndarray) -> Any:
    if not array.flags.writeable:  # views of jax arrays are read-only; torch wants to own writable memory
        array = array.copy()
    if array.dtype == EXPORT_DTYPES["bfloat16"]:
        # torch cannot take ml_dtypes arrays; move the bits through int16.
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
