"""Find and read an official GLM state dict, whatever layout it is stored in.

Understood layouts (spec 1.9, 1.10):

* a file: ``*.pt`` / ``*.bin`` (torch zip or legacy format, either ``{'module': sd}``
  as the official code saves it or a bare state dict as ``pytorch_model.bin`` is),
  ``*.safetensors``, ``*.npz`` (a flat state dict), or a Hugging Face shard index
  ``*.index.json``;
* a directory holding ``mp_rank_XX_model_states.pt`` (one per model-parallel rank,
  merged here), ``model.safetensors[.index.json]``, ``pytorch_model.bin[.index.json]``,
  or exactly one checkpoint file;
* an official save directory: ``latest_checkpointed_iteration.txt`` names the
  sub-directory (``<iteration>``, ``iter_<7 digits>`` or ``release``) to read.

Keys are normalised: the ``glm.`` / ``module.`` / ``model.`` prefixes are stripped,
``prompt_spell.*`` (P-tuning) is dropped, and so are the ``pool_layer.*`` /
``multichoice_head.*`` heads of ``GLMForSequenceClassification`` (with a log line).
A ``config.json`` next to the weights (Hugging Face style) supplies hints such as
``num_attention_heads``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from glm_jax.convert import model_parallel
from glm_jax.convert.torch_pickle import LazyTensor, TorchCheckpoint

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

STRIPPED_PREFIXES = ("glm.", "module.", "model.")
IGNORED_PREFIXES = ("prompt_spell.",)  # P-tuning prompt encoder (spec 1.9)
HEAD_PREFIXES = ("pool_layer.", "multichoice_head.")  # GLMForSequenceClassification heads

TRACKER_FILE = "latest_checkpointed_iteration.txt"
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".pt", ".bin", ".safetensors", ".npz")
SIDECAR_CONFIG = "config.json"
_MP_SHARD = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


@dataclasses.dataclass
class RawCheckpoint:
    """A normalised, model-parallel-merged official state dict, in its stored dtypes.

    Attributes:
      state_dict: official key (e.g. ``transformer.layers.0.attention.dense.weight``)
        -> array, or a non-array value the caller must reject.
      files: the files read (one per model-parallel rank, or per HF shard).
      hints: architecture facts from a ``config.json`` sidecar
        (``num_attention_heads``, ``hidden_size``, ``num_layers``, ``vocab_size``,
        ``max_sequence_length``), where present.
      hints_file: that sidecar, for error messages.
    """

    state_dict: dict[str, Any]
    files: tuple[Path, ...]
    hints: dict[str, int]
    hints_file: Optional[Path]

    @property
    def source(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0].parent} ({len(self.files)} files)"


def read_checkpoint(path: PathLike) -> RawCheckpoint:
    """Locate, read, normalise and (for model-parallel shards) merge a checkpoint.

    Raises:
      FileNotFoundError: ``path`` (or a file an index names) does not exist.
      ValueError: the layout is not recognised, or the contents are inconsistent;
        the message names the file and key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    files = locate(path)
    if len(files) == 1 and files[0].name.endswith(".index.json"):
        state_dict, read = _read_hf_index(files[0])
    else:
        read = tuple(files)
        shards = [normalize_keys(_read_file(f), f) for f in files]
        state_dict = shards[0] if len(shards) == 1 else model_parallel.merge(shards, names=[str(f) for f in files])
    hints, hints_file = _read_sidecar([files[0].parent, path if path.is_dir() else path.parent])
    return RawCheckpoint(state_dict, read, hints, hints_file)


def locate(path: Path) -> list[Path]:
    """The checkpoint file(s) that ``path`` stands for (several = model-parallel ranks)."""
    if path.is_file():
        match = _MP_SHARD.match(path.name)
        if match:
            siblings = sorted(p.name for p in path.parent.glob("mp_rank_*_model_states.pt"))
            if len(siblings) > 1:
                raise ValueError(
                    f"{path} is one of {len(siblings)} model-parallel shards ({', '.join(siblings)}); "
                    f"pass the directory {path.parent} to merge them"
                )
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path} is neither a file nor a directory")

    tracker = path / TRACKER_FILE
    if tracker.is_file():
        return locate(_tracked_dir(tracker))

    shards = {int(m.group(1)): p for p in path.iterdir() if (m := _MP_SHARD.match(p.name))}
    if shards:
        missing = sorted(set(range(max(shards) + 1)) - set(shards))
        if missing:
            raise ValueError(
                f"{path}: model-parallel shards for ranks {missing} are missing (found ranks {sorted(shards)})"
            )
        return [shards[r] for r in range(len(shards))]

    for name in HF_INDEX_FILES + HF_WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]

    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(candidates) == 1:
        return candidates
    if not candidates and (path / "release").is_dir():
        return locate(path / "release")
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
    raise ValueError(
        f"{path}: cannot tell which GLM checkpoint this directory holds. Expected mp_rank_XX_model_states.pt, "
        f"{', '.join(HF_INDEX_FILES + HF_WEIGHT_FILES)}, {TRACKER_FILE}, or exactly one "
        f"{'/'.join(CHECKPOINT_SUFFIXES)} file; found: {shown or 'nothing'}"
    )


def _tracked_dir(tracker: Path) -> Path:
    """The sub-directory that an official ``latest_checkpointed_iteration.txt`` points at."""
    tag = tracker.read_text().strip()
    names = [tag]
    if tag.isdigit():
        # GLM writes str(iteration); Megatron-style trees use iter_0000100.
        names.append(f"iter_{int(tag):07d}")
    for name in names:
        if (tracker.parent / name).is_dir():
            return tracker.parent / name
    raise FileNotFoundError(
        f"{tracker} says {tag!r}, but none of {[str(tracker.parent / n) for n in names]} is a directory"
    )


def _read_file(path: Path) -> dict[str, Any]:
    """One checkpoint file -> its flat state dict (keys as stored)."""
    suffix = path.suffix
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    with TorchCheckpoint(path) as ckpt:
        return ckpt.materialize(_state_dict_in(ckpt.root, path))


def _read_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file, its header and lengths checked (the library checks that
    every tensor lies inside the file; an empty or truncated file fails there)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes): not a safetensors file")
    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}); "
                         "it is damaged or truncated: re-download or re-copy it") from None


def _state_dict_in(root: Any, path: Path) -> Mapping[str, Any]:
    """The state dict inside an unpickled torch file: ``root['module']`` or ``root`` itself."""
    if isinstance(root, Mapping):
        module = root.get("module")
        if isinstance(module, Mapping):
            return module
        tensors = [v for v in root.values() if isinstance(v, (LazyTensor, np.ndarray))]
        if tensors and all(isinstance(k, str) for k in root):
            return root
        keys = sorted(map(str, root))[:12]
        raise ValueError(f"{path}: expected {{'module': state_dict}} or a state dict, found a dict with keys {keys}")
    raise ValueError(f"{path}: expected {{'module': state_dict}} or a state dict, found {type(root).__name__}")


def _read_hf_index(index: Path) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """A sharded Hugging Face checkpoint: read every shard its weight_map names."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a Hugging Face shard index (need a 'weight_map' object): {e}") from e
    shard_names = sorted(set(weight_map.values()))
    state_dict: dict[str, Any] = {}
    files = []
    for name in shard_names:
        shard = index.parent / name
        if not shard.is_file():
            raise FileNotFoundError(f"{index} names shard {name}, which does not exist at {shard}")
        raw = _read_file(shard)
        listed = [k for k, v in weight_map.items() if v == name]
        absent = [k for k in listed if k not in raw]
        if absent:
            raise ValueError(f"{index} puts {absent[:5]} in {shard}, but that shard lacks them")
        for key, value in normalize_keys(raw, shard).items():
            if key in state_dict:
                raise ValueError(f"{index}: key {key!r} appears in more than one shard (again in {shard})")
            state_dict[key] = value
        files.append(shard)
    return state_dict, tuple(files)


def normalize_keys(state_dict: Mapping[str, Any], source: PathLike) -> dict[str, Any]:
    """Strip the known prefixes and drop parameters that are not the language model.

    Raises ValueError (naming both keys) if two keys become the same after stripping.
    """
    out: dict[str, Any] = {}
    original: dict[str, str] = {}
    heads: list[str] = []
    for key, value in state_dict.items():
        name = key
        while name.startswith(STRIPPED_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(IGNORED_PREFIXES):
            continue
        if name.startswith(HEAD_PREFIXES):
            heads.append(key)
            continue
        if name in out:
            raise ValueError(f"{source}: keys {original[name]!r} and {key!r} both mean {name!r}")
        out[name], original[name] = value, key
    if heads:
        logger.warning(
            "%s: ignoring %d classification-head parameters (%s); only the language model is converted",
            source, len(heads), ", ".join(heads),
        )
    return out


_HINT_KEYS = ("num_attention_heads", "hidden_size", "num_layers", "vocab_size", "max_sequence_length")


def _read_sidecar(dirs: Sequence[Path]) -> tuple[dict[str, int], Optional[Path]]:
    """Integer architecture hints from the first ``config.json`` found in ``dirs``."""
    for d in dirs:
        candidate = d / SIDECAR_CONFIG
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text())
        except json.JSONDecodeError as e:
            logger.warning("%s: not valid JSON, ignored (%s)", candidate, e)
            continue
        if not isinstance(data, dict):
            continue
        hints = {k: data[k] for k in _HINT_KEYS if isinstance(data.get(k), int) and not isinstance(data[k], bool)}
        return hints, candidate
    return {}, None
