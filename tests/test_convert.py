"""glm_jax.convert: reading, validating, merging and exporting official GLM checkpoints.

Parity is against logits that the official PyTorch GLM computed on the tiny
fixture (conftest.official_dir / official_io).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from glm_jax import cli
from glm_jax.convert import (
    convert_checkpoint,
    export_official,
    infer_config,
    param_map,
    load_official,
    load_torch_checkpoint,
    merge_model_parallel,
)
from glm_jax.convert.torch_pickle import Opaque, view_storage
from glm_jax.model import GLM, ModelConfig
from glm_jax.model_dir import abstract_params, load_model_dir

TOL = 5e-5  # max |logit - official logit|; float32 reduction-order noise is ~3e-6
HEADS = 4  # the fixture's head count (head_dim 16, unlike the official 64)


@pytest.fixture(scope="module")
def official_sd(official_dir) -> dict[str, np.ndarray]:
    """The fixture's state dict, from the npz twin of model_states.pt."""
    with np.load(official_dir / "state_dict.npz") as npz:
        return {k: npz[k] for k in npz.files}


@functools.cache
def _forward(config: ModelConfig):
    def forward(params, tokens, pos, **mask):
        return GLM(config).apply({"params": params}, tokens, pos[:, 0], pos[:, 1], **mask)

    return jax.jit(forward)


def parity(config: ModelConfig, params, io: dict) -> dict[str, float]:
    """Max |logits - official| for the sep, explicit-mask and mems cases of io.npz."""
    forward = _forward(config)
    tokens, pos = io["sep_input_ids"], io["sep_position_ids"]
    diffs = {
        "sep": np.abs(forward(params, tokens, pos, sep=io["sep_sep"]) - io["sep_logits"]).max(),
        "mask": np.abs(
            forward(params, tokens, pos, attention_mask=io["mask_attention_mask"]) - io["mask_logits"]
        ).max(),
    }
    # Mems: the official model ran the first P tokens, cached them, then one new
    # token that sees the whole prefix and itself. One forward over prefix + new
    # token with the equivalent mask gives both sets of logits.
    p = int(io["mem_prefix_len"])
    tokens = np.concatenate([tokens[:, :p], io["mem_new_ids"]], axis=1)
    pos = np.concatenate([pos[:, :, :p], io["mem_new_position_ids"]], axis=2)
    sep = np.minimum(io["sep_sep"], p)
    q, k = np.arange(p + 1)[:, None], np.arange(p + 1)[None, :]
    mask = (k <= q)[None] | (k < sep[:, None, None])  # [batch, P+1, P+1]
    mask[:, p, :] = True
    logits = np.asarray(forward(params, tokens, pos, attention_mask=mask))
    diffs["mem_prefix"] = np.abs(logits[:, :p] - io["mem_prefix_logits"]).max()
    diffs["mem_step"] = np.abs(logits[:, p:] - io["mem_step_logits"]).max()
    return {k: float(v) for k, v in diffs.items()}


def assert_parity(config, params, io) -> dict[str, float]:
    diffs = parity(config, params, io)
    print("parity max abs diff:", diffs)
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def write_npz(path: Path, sd: dict) -> Path:
    np.savez(path, **sd)
    return path


# ------------------------------------------------------------------- the torch reader


def test_reader_matches_torch_load(official_dir):
    torch = pytest.importorskip("torch")
    ours = load_torch_checkpoint(official_dir / "model_states.pt")
    theirs = torch.load(official_dir / "model_states.pt", weights_only=True)
    assert list(ours) == ["module"] and list(ours["module"]) == list(theirs["module"])
    assert_same_state_dict(ours["module"], {k: v.numpy() for k, v in theirs["module"].items()})


def test_reader_dtypes_views_and_foreign_objects(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "f16": base.half(),
        "bf16": (base / 7).bfloat16(),
        "i64": torch.arange(5),
        "bool": base > 10,
        "transposed": base.t(),  # non-contiguous view of a storage
        "slice": base[1:3, 2:5],  # offset view, storage shared with "transposed"
        "param": torch.nn.Parameter(base[0].clone()),
        "args": argparse.Namespace(lr=0.1, name="glm"),
        "np_rng_state": np.random.RandomState(0).get_state(),
        "optimizer": torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.5, momentum=0.9).state_dict(),
    }
    torch.save(obj, tmp_path / "mixed.pt")
    ours = load_torch_checkpoint(tmp_path / "mixed.pt")

    np.testing.assert_array_equal(ours["f16"], base.half().numpy())
    assert ours["bf16"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(ours["bf16"].view(np.int16), (base / 7).bfloat16().view(torch.int16).numpy())
    np.testing.assert_array_equal(ours["i64"], np.arange(5))
    np.testing.assert_array_equal(ours["bool"], base.numpy() > 10)
    np.testing.assert_array_equal(ours["transposed"], base.numpy().T)
    assert ours["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(ours["slice"], base.numpy()[1:3, 2:5])
    np.testing.assert_array_equal(ours["param"], base.numpy()[0])
    # Foreign classes are inert placeholders that still show what was pickled.
    assert isinstance(ours["args"], Opaque) and ours["args"].qualname == "argparse.Namespace"
    assert ours["args"].state == {"lr": 0.1, "name": "glm"}
    assert ours["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_reader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"module": Exploit()}, protocol=2))
    loaded = load_torch_checkpoint(path)
    assert not marker.exists()
    assert isinstance(loaded["module"], Opaque) and loaded["module"].qualname in ("posix.system", "nt.system")
    with pytest.raises(ValueError, match=r"evil\.pt: expected \{'module': state_dict\}"):
        load_official(path)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"evil\.pt: cannot unpickle archive/data\.pkl"):
        load_torch_checkpoint(path)


def test_reader_rejects_truncated_storage(tmp_path, official_dir):
    path = tmp_path / "truncated.pt"
    with zipfile.ZipFile(official_dir / "model_states.pt") as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:100] if info.filename.endswith("/data/0") else data)
    with pytest.raises(ValueError, match=r"truncated\.pt: storage record model_states/data/0 holds 100 bytes, "
                                         r"but 8192 x float32 needs 32768"):
        load_official(path)


def test_view_storage_bounds_checked():
    storage = np.arange(10.0)
    np.testing.assert_array_equal(view_storage(storage, 1, (3, 2), (3, 1), "s"), [[1, 2], [4, 5], [7, 8]])
    with pytest.raises(ValueError, match=r"reaches element 11, but the storage has 10"):
        view_storage(storage, 5, (3,), (3,), "s")
    with pytest.raises(ValueError, match="negative"):
        view_storage(storage, 0, (2,), (-1,), "s")


def test_legacy_torch_format(tmp_path, official_dir, official_sd, monkeypatch):
    torch = pytest.importorskip("torch")
    path = tmp_path / "legacy.pt"
    torch.save({"module": {k: torch.from_numpy(v) for k, v in official_sd.items()}}, path,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert_same_state_dict(load_torch_checkpoint(path)["module"], official_sd)
    monkeypatch.setitem(sys.modules, "torch", None)  # simulate an install without torch
    with pytest.raises(ValueError, match=r"legacy\.pt .*pip install 'glm-jax\[torch\]'"):
        load_torch_checkpoint(path)


# ------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "name, scan", [("model_states.pt", False), ("state_dict.npz", False), ("model_states.pt", True)]
)
def test_parity_with_official_logits(official_dir, official_io, name, scan):
    config, params = load_official(official_dir / name, scan_layers=scan)
    # num_heads=4 comes from the fixture's config.json (shapes cannot tell).
    assert config == ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=HEADS,
                                 max_position_embeddings=32, scan_layers=scan)
    assert all(v.dtype == np.float32 for _, v in param_map.flatten(params))
    if scan:
        assert params["layers"]["attention"]["query_key_value"]["kernel"].shape == (2, 64, 3, HEADS, 16)
    assert_parity(config, params, official_io)


def test_layout_table_matches_model_init():
    # Non-default head count and FFN width, so a transposed axis would show.
    config = ModelConfig(vocab_size=256, hidden_size=96, num_layers=3, num_heads=6,
                         max_position_embeddings=40, intermediate_size=200)
    expected = {
        "/".join(str(k.key) for k in keys): leaf.shape
        for keys, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
    }
    table = {"/".join(e.path): e.flax_shape for e in param_map.entries(config)}
    assert table == expected


def test_infer_config_from_shapes(official_sd):
    assert infer_config(official_sd).num_heads == 1  # no hints: hidden // 64
    wide = dict(official_sd)
    for i in range(2):
        wide[f"transformer.layers.{i}.mlp.dense_h_to_4h.weight"] = np.zeros((100, 64), np.float32)
    config = infer_config(wide, num_heads=HEADS)
    assert (config.intermediate_size, config.mlp_dim, config.num_heads) == (100, 100, HEADS)
    assert infer_config(official_sd, num_heads=HEADS).intermediate_size is None
    with pytest.raises(ValueError, match="not divisible into 5 heads"):
        infer_config(official_sd, num_heads=5)
    with pytest.raises(ValueError, match="config.json says hidden_size=128, but the tensors give 64"):
        infer_config(official_sd, hints={"hidden_size": 128}, source="config.json")


def test_heads_default_without_sidecar(tmp_path, official_sd, official_io):
    path = write_npz(tmp_path / "sd.npz", official_sd)
    assert load_official(path)[0].num_heads == 1
    config, params = load_official(path, num_heads=HEADS)
    assert_parity(config, params, official_io)


# ------------------------------------------------------------------- validation


def test_missing_key_is_named(tmp_path, official_sd):
    sd = dict(official_sd)
    del sd["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    message = r"missing key transformer\.layers\.1\.mlp\.dense_4h_to_h\.bias \(expected shape \[64\]\)"
    with pytest.raises(ValueError, match=message):
        load_official(write_npz(tmp_path / "sd.npz", sd), num_heads=HEADS)


def test_every_problem_reported_at_once(tmp_path, official_sd):
    sd = dict(official_sd)
    sd["transformer.layers.0.attention.dense.weight"] = np.zeros((64, 65), np.float32)
    del sd["transformer.final_layernorm.bias"]
    sd["transformer.layers.0.extra.weight"] = np.zeros(3, np.float32)
    sd["transformer.layers.1.input_layernorm.bias"] = np.zeros(64, np.int32)
    with pytest.raises(ValueError) as info:
        load_official(write_npz(tmp_path / "sd.npz", sd), num_heads=HEADS)
    message = str(info.value)
    assert "sd.npz does not match GLM L=2 h=64 heads=4 ffn=256 vocab=128 max_pos=32 (4 problem(s))" in message
    assert "transformer.layers.0.attention.dense.weight: expected shape [64, 64], got [64, 65]" in message
    assert "missing key transformer.final_layernorm.bias (expected shape [64])" in message
    assert "unexpected key transformer.layers.0.extra.weight (shape [3])" in message
    assert "transformer.layers.1.input_layernorm.bias: expected a floating-point tensor, got dtype int32" in message


def test_missing_embedding_is_named(tmp_path, official_sd):
    sd = {k: v for k, v in official_sd.items() if k != "word_embeddings.weight"}
    with pytest.raises(ValueError, match=r"missing key word_embeddings\.weight"):
        load_official(write_npz(tmp_path / "sd.npz", sd))


def test_sidecar_contradiction_is_named(tmp_path, official_sd):
    write_npz(tmp_path / "sd.npz", official_sd)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "num_layers": 3}))
    with pytest.raises(ValueError, match="config.json says num_layers=3, but the tensors give 2"):
        load_official(tmp_path)


# ------------------------------------------------------------------- dtypes, prefixes, formats


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_checkpoint_is_upcast(tmp_path, official_sd, dtype):
    half = {k: v.astype(dtype) for k, v in official_sd.items()}
    save_file(half, tmp_path / "model.safetensors")
    config, params = load_official(tmp_path, num_heads=HEADS)
    embedding = params["word_embeddings"]["embedding"]
    assert embedding.dtype == np.float32
    np.testing.assert_array_equal(embedding, half["word_embeddings.weight"].astype(np.float32))
    assert not np.array_equal(embedding, official_sd["word_embeddings.weight"])  # the rounding is real


def test_half_precision_torch_checkpoint(tmp_path, official_sd, official_io):
    torch = pytest.importorskip("torch")
    torch.save({"module": {k: torch.from_numpy(v).half() for k, v in official_sd.items()}}, tmp_path / "fp16.pt")
    config, params = load_official(tmp_path / "fp16.pt", num_heads=HEADS)
    kernel = params["layers_0"]["mlp"]["dense_h_to_4h"]["kernel"]
    assert kernel.dtype == np.float32
    expected = official_sd["transformer.layers.0.mlp.dense_h_to_4h.weight"].astype(np.float16).astype(np.float32).T
    np.testing.assert_array_equal(kernel, expected)
    assert max(parity(config, params, official_io).values()) < 0.05  # fp16-rounded weights, same model


def test_hf_prefix_and_safetensors(tmp_path, official_sd, official_io):
    save_file({f"glm.{k}": v for k, v in official_sd.items()}, tmp_path / "model.safetensors")
    config, params = load_official(tmp_path / "model.safetensors", num_heads=HEADS)
    assert_parity(config, params, official_io)


def test_classification_checkpoint_heads_ignored(tmp_path, official_sd, caplog):
    sd = {f"model.{k}": v for k, v in official_sd.items()}
    sd["pool_layer.weight"] = np.zeros((64, 64), np.float32)
    sd["pool_layer.bias"] = np.zeros(64, np.float32)
    sd["multichoice_head.weight"] = np.zeros((2, 64), np.float32)
    sd["multichoice_head.bias"] = np.zeros(2, np.float32)
    sd["model.prompt_spell.lstm_head.weight_ih_l0"] = np.zeros((8, 4), np.float32)
    with caplog.at_level(logging.WARNING, logger="glm_jax.convert.sources"):
        _, params = load_official(write_npz(tmp_path / "cls.npz", sd), num_heads=HEADS)
    assert "ignoring 4 classification-head parameters" in caplog.text and "pool_layer.weight" in caplog.text
    np.testing.assert_array_equal(params["word_embeddings"]["embedding"], official_sd["word_embeddings.weight"])


def test_pytorch_model_bin_directory(tmp_path, official_sd, official_io):
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in official_sd.items()}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": HEADS, "hidden_size": 64}))
    config, params = load_official(tmp_path)
    assert config.num_heads == HEADS
    assert_parity(config, params, official_io)


def test_sharded_safetensors_index(tmp_path, official_sd):
    keys = sorted(official_sd)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: official_sd[k] for k in part}, tmp_path / name)
        weight_map.update({k: name for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config, params = load_official(tmp_path, num_heads=HEADS)
    assert_same_state_dict(param_map.to_state_dict(params, config, np.float32), official_sd)

    weight_map["transformer.final_layernorm.bias"] = "model-00003-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(FileNotFoundError, match="model-00003-of-00002.safetensors"):
        load_official(tmp_path, num_heads=HEADS)


def test_unrecognised_directory_lists_contents(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"cannot tell which GLM checkpoint .* found: notes\.txt"):
        load_official(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_official(tmp_path / "nope.pt")


# ------------------------------------------------------------------- model parallel

_COLUMN = re.compile(r"^(word_embeddings\.weight|.*\.mlp\.dense_h_to_4h\.(weight|bias))$")
_ROW = re.compile(r"^.*\.(attention\.dense|mlp\.dense_4h_to_h)\.weight$")


def split_model_parallel(sd: dict, ranks: int) -> list[dict]:
    """What the official change_mp.py does to increase MP (the inverse of merging)."""
    shards = [{} for _ in range(ranks)]
    for key, value in sd.items():
        if key.endswith("attention.query_key_value.weight") or key.endswith("attention.query_key_value.bias"):
            q, k, v = (np.split(t, ranks) for t in np.split(value, 3))
            parts = [np.concatenate([q[r], k[r], v[r]]) for r in range(ranks)]
        elif _COLUMN.match(key):
            parts = np.split(value, ranks, axis=0)
        elif _ROW.match(key):
            parts = np.split(value, ranks, axis=1)
        else:
            parts = [value] * ranks
        for shard, part in zip(shards, parts, strict=True):
            shard[key] = np.ascontiguousarray(part)
    return shards


def test_model_parallel_merge_inverts_split(official_sd):
    for ranks in (2, 4):
        shards = split_model_parallel(official_sd, ranks)
        qkv = "transformer.layers.0.attention.query_key_value.weight"
        assert shards[0][qkv].shape == (3 * 64 // ranks, 64)
        assert_same_state_dict(merge_model_parallel(shards), official_sd)
        # Plain concatenation would interleave Q|K|V wrongly: the test can fail.
        assert not np.array_equal(np.concatenate([s[qkv] for s in shards]), official_sd[qkv])


def test_model_parallel_merge_checks_replicas(official_sd):
    shards = split_model_parallel(official_sd, 2)
    shards[1]["transformer.final_layernorm.weight"] = shards[1]["transformer.final_layernorm.weight"] + 1
    with pytest.raises(ValueError, match=r"transformer\.final_layernorm\.weight should be replicated .* rank 1"):
        merge_model_parallel(shards)
    del shards[1]["transformer.final_layernorm.weight"]
    with pytest.raises(ValueError, match=r"rank 1 lacks \['transformer\.final_layernorm\.weight'\]"):
        merge_model_parallel(shards)


def test_model_parallel_directory(tmp_path, official_dir, official_sd, official_io):
    torch = pytest.importorskip("torch")
    release = tmp_path / "release"
    release.mkdir()
    for rank, shard in enumerate(split_model_parallel(official_sd, 2)):
        checkpoint = {"module": {k: torch.from_numpy(v) for k, v in shard.items()}, "iteration": 0,
                      "args": argparse.Namespace(model_parallel_size=2)}
        torch.save(checkpoint, release / f"mp_rank_{rank:02d}_model_states.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release\n")
    shutil.copy(official_dir / "config.json", tmp_path / "config.json")
    config, params = load_official(tmp_path)
    assert_parity(config, params, official_io)
    with pytest.raises(ValueError, match=r"one of 2 model-parallel shards .* pass the directory"):
        load_official(release / "mp_rank_00_model_states.pt")


# ------------------------------------------------------------------- export


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors", ".npz"])
def test_export_round_trip_is_bit_exact(tmp_path, official_dir, official_sd, suffix):
    if suffix in (".pt", ".bin"):
        pytest.importorskip("torch")
    config, params = load_official(official_dir / "model_states.pt", scan_layers=True)
    params = jax.tree.map(jnp.asarray, params)  # as a trained model would hold them
    path = export_official(config, params, tmp_path / f"out{suffix}")
    if suffix == ".safetensors":
        exported = load_file(path)
    elif suffix == ".npz":
        with np.load(path) as npz:
            exported = {k: npz[k] for k in npz.files}
    else:
        exported = load_torch_checkpoint(path)
        exported = exported["module"] if suffix == ".pt" else exported
    assert_same_state_dict(exported, official_sd)
    # ... and the export reads back as the same model.
    config2, params2 = load_official(path, num_heads=HEADS, scan_layers=True)
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_torch_file_loads_in_torch(tmp_path, official_dir, official_sd):
    torch = pytest.importorskip("torch")
    config, params = load_official(official_dir / "model_states.pt")
    export_official(config, params, tmp_path / "mp_rank_00_model_states.pt", dtype="bfloat16")
    loaded = torch.load(tmp_path / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert loaded["word_embeddings.weight"].dtype == torch.bfloat16
    expected = official_sd["word_embeddings.weight"].astype(ml_dtypes.bfloat16).view(np.int16)
    np.testing.assert_array_equal(loaded["word_embeddings.weight"].view(torch.int16).numpy(), expected)


def test_export_half_and_errors(tmp_path, official_dir, official_sd, monkeypatch):
    config, params = load_official(official_dir / "model_states.pt")
    path = export_official(config, params, tmp_path / "half.safetensors", dtype="float16")
    assert_same_state_dict(load_file(path), {k: v.astype(np.float16) for k, v in official_sd.items()})
    with pytest.raises(ValueError, match="half.safetensors already exists"):
        export_official(config, params, path)
    with pytest.raises(ValueError, match=r"\.npz cannot store bfloat16"):
        export_official(config, params, tmp_path / "x.npz", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.h5'"):
        export_official(config, params, tmp_path / "x.h5")
    broken = jax.tree.map(lambda x: x, params)
    broken["layers_1"]["mlp"]["dense_4h_to_h"]["kernel"] = np.zeros((256, 65), np.float32)
    message = r"layers_1/mlp/dense_4h_to_h/kernel: expected shape \[256, 64\], got \[256, 65\]"
    with pytest.raises(ValueError, match=message):
        export_official(config, broken, tmp_path / "y.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ValueError, match=r"needs torch .*glm-jax\[torch\]"):
        export_official(config, params, tmp_path / "z.pt")


# ------------------------------------------------------------------- position tables


def test_position_table_resize(official_dir, official_sd):
    table = official_sd["transformer.position_embeddings.weight"]
    config, params = load_official(official_dir / "model_states.pt", max_position_embeddings=20)
    assert config.max_position_embeddings == 20
    np.testing.assert_array_equal(params["position_embeddings"]["embedding"], table[:21])
    config, params = load_official(official_dir / "model_states.pt", max_position_embeddings=64)
    grown = params["block_position_embeddings"]["embedding"]
    assert config.max_position_embeddings == 64 and grown.shape == (65, 64)
    np.testing.assert_array_equal(grown[:33], official_sd["transformer.block_position_embeddings.weight"])
    assert 0.015 < grown[33:].std() < 0.025  # new rows ~ N(0, 0.02), as the official finetuning code


# ------------------------------------------------------------------- convert / CLI


def test_convert_checkpoint_and_cli(tmp_path, official_dir, official_io, capsys):
    out = tmp_path / "converted"
    assert cli.main(["convert", str(official_dir / "model_states.pt"), str(out)]) == 0
    summary = capsys.readouterr().out
    assert "GLM L=2 h=64 heads=4 ffn=256 vocab=128 max_pos=32" in summary
    assert "112,512 parameters" in summary  # 128*64 + 2*33*64 + 2*49,984 (per layer) + 128
    config, params = load_model_dir(out)
    assert_parity(config, params, official_io)

    # The out_dir check happens before loading; the message names it.
    with pytest.raises(ValueError, match=f"output directory {re.escape(str(out))} is not empty"):
        convert_checkpoint(official_dir / "model_states.pt", out)
    missing = tmp_path / "no_such_checkpoint.pt"
    assert cli.main(["convert", str(missing), str(tmp_path / "other")]) != 0
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_convert_cli_tokenizer_options(tmp_path, official_dir, capsys):
    """``--tokenizer``: recorded with the resolved options; every bad combination is
    refused before anything is written (generation through the recorded tokenizer:
    tests/test_cli_generate.py)."""
    from glm_jax.model_dir import read_tokenizer
    from glm_jax.data.official_vocabs.tiny import write_tiny_files

    src = str(official_dir / "model_states.pt")
    bert = write_tiny_files("bert", tmp_path / "bert", num_tokens=100)["vocab_file"]
    out = tmp_path / "out"
    assert cli.main(["convert", src, str(out), "--tokenizer", "bert", "--vocab-file", str(bert.parent),
                     "--task-mask", "--decoder-mask"]) == 0
    assert "tokenizer bert (official inputs)" in capsys.readouterr().out
    record = read_tokenizer(out)
    assert (record.kind, record.vocab_file, record.task_mask, record.decoder_mask) == ("bert", "vocab.txt", True, True)
    assert (out / "vocab.txt").read_bytes() == bert.read_bytes()

    big = write_tiny_files("bert", tmp_path / "big", num_tokens=200)["vocab_file"]
    chinese = write_tiny_files("chinese", tmp_path / "zh", num_tokens=100)["vocab_file"]
    cases = [
        (["--tokenizer", "bert", "--vocab-file", str(big)],
         r"tokenizer for .*refused: the bert vocabulary .* has vocab_size=256, but the model has vocab_size=128 \(they must"),
        (["--tokenizer", "chinese", "--vocab-file", str(chinese)], "--tokenizer chinese needs --fix-command-token"),
        (["--tokenizer", "gpt2"], "--tokenizer gpt2 needs --vocab-file"),
        (["--vocab-file", str(bert), "--no-task-mask"], "--vocab-file, --task-mask given without --tokenizer KIND"),
        (["--tokenizer", "gpt2", "--vocab-file", str(bert.parent)], r"gpt2 tokenizer: vocab_file .*vocab.json does not exist"),
        (["--style", "hf"], "style 'hf' needs a tokenizer"),
    ]
    for flags, message in cases:
        assert cli.main(["convert", src, str(tmp_path / "refused"), *flags]) == 2, flags
        assert re.search(message, capsys.readouterr().err), (flags, message)
        assert not (tmp_path / "refused").exists()
