"""Ahead-of-time compilation for TPU slices (glm_jax/aot.py, `glm-jax compile`):
real TPU topologies from libtpu, on this CPU-only machine.

These need libtpu. The default suite skips them when it is absent; CI's
TPU-compile step (.ci/run) installs the libtpu that jax[tpu] pins into a side
folder and runs this file with it.
"""

import dataclasses
import importlib.util
import json
import math

import jax
import numpy as np
import pytest

from glm_jax import aot, cli, train_state
from glm_jax.loop import PEAK_TFLOPS
from glm_jax import config as config_lib

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (CI's TPU-compile step runs these)")

TINY = ["train.global_batch_size=16"]


@pytest.fixture(scope="module")
def tiny_report():
    config = config_lib.load_config("pretrain_embedded", TINY)
    return config, aot.compile_train_step(config, "v5e-4")


def test_tiny_config_fits_a_v5e_4_and_its_state_bytes_are_the_shardings(tiny_report):
    config, report = tiny_report
    assert report.chips == 4 and report.mesh == {"data": 1, "fsdp": 4, "tensor": 1} and report.fits
    # The state per chip, by hand: float32 parameters with AdamW's two moments, each
    # array split 4 ways along one axis when a dimension divides by 4 (all but a few
    # scalars here), plus the step and AdamW's counters.
    mesh = jax.sharding.Mesh(np.array(aot.slice_devices("v5e-4")).reshape(1, 4, 1), ("data", "fsdp", "tensor"))
    shapes, shardings = train_state.params_layout(config.model, mesh)
    params = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    split = sum(math.prod(s.shape) for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings))
                if not sh.is_fully_replicated)
    whole = params - split
    per_chip_params = 4 * (split // 4 + whole)
    assert report.state_bytes - 3 * per_chip_params in range(0, 64)  # + step and Adam's count scalars
    # XLA's arguments are that state plus this chip's quarter of the batch, in TPU
    # layouts (tiles of 8 x 128 pad small dimensions), so somewhat more.
    batch_bytes = (16 // 4) * 128 * 4 * 5 + (16 // 4) * 4  # five int32 [rows, 128] features and sep
    assert 1.0 <= report.memory["arguments"] / (report.state_bytes + batch_bytes) < 1.25
    assert report.memory["aliased (donated)"] >= report.state_bytes  # the donated state is updated in place
    assert report.flops_per_step > 0 and "all-gather" in report.collectives  # FSDP gathers parameters


def test_an_oversized_batch_does_not_fit_and_the_cli_says_so(capsys):
    # Logits alone: 65,536 rows / 4 chips x 128 x 8,064 words x 4 bytes = 64 GiB per chip.
    rc = cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "train.global_batch_size=65536"])
    out = capsys.readouterr().out
    assert rc == 4 and "DOES NOT FIT" in out, out
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "--json", *TINY]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fits"] is True and report["chips"] == 4


def test_pallas_attention_compiles_to_mosaic_kernels_for_the_tpu():
    """The kernel is chosen by the platform compiled for (the mesh's devices), not by
    this host's default backend: the TPU program holds Mosaic custom calls."""
    config = config_lib.load_config("pretrain_embedded", [*TINY, "model.attention_backend=pallas",
                                                          "model.attention_dropout=0"])
    report = aot.compile_train_step(config, "v5e-4")
    assert report.custom_calls.get("tpu_custom_call", 0) >= 2, report.custom_calls  # forward and backward
    xla = aot.compile_train_step(config_lib.load_config("pretrain_embedded", TINY), "v5e-4")
    assert "tpu_custom_call" not in xla.custom_calls


def test_every_slice_s_devices_have_its_peak_for_the_mfu_line():
    """What libtpu's devices of each slice report as device_kind is a key of the MFU
    table with the slice's peak (v5p reports "TPU v5", v6e "TPU v6 lite"); the
    device count is the slice's chips."""
    for name, kind in aot.SLICES.items():
        devices = aot.slice_devices(name)
        assert len(devices) == kind.chips, name
        assert PEAK_TFLOPS.get(devices[0].device_kind) == kind.peak_tflops, (name, devices[0].device_kind)


def test_a_v6e_slice_compiles_the_tiny_config():
    report = aot.compile_train_step(config_lib.load_config("pretrain_embedded", TINY), "v6e-4")
    assert report.fits and report.chips == 4 and report.hbm_bytes == 32 * 10**9


def test_unknown_slice_and_bad_slices_are_one_line_errors(capsys):
    with pytest.raises(ValueError, match="--topology v9-8: unknown slice"):
        aot.slice_devices("v9-8")
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "mesh.ici_shape=[1,8,1]"]) == 2
    assert "mesh" in capsys.readouterr().err


def test_the_fit_search_compiles_in_estimate_order_until_one_fits(monkeypatch, capsys):
    """`glm-jax compile --search` on a v5e-4 whose HBM is set just below what the
    configured step needs: the configured step (pure FSDP, no remat, one microbatch)
    is the fastest estimate and is tried first, does not fit, and the search goes on
    to the first candidate that does, whose real compiled total is under the limit."""
    overrides = ["train.global_batch_size=64"]
    config = config_lib.load_config("pretrain_embedded", overrides)
    needed = aot.compile_train_step(config, "v5e-4").total_bytes
    small = dataclasses.replace(aot.SLICES["v5e-4"], hbm_bytes=int(0.9 * needed / (1 - aot.HBM_MARGIN)))
    monkeypatch.setitem(aot.SLICES, "v5e-4", small)
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "--search", *overrides]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("1,")]
    assert rows[0][:3] == ["1,4,1", "none", "1"] and "DOES NOT FIT" in " ".join(rows[0]), out
    assert all("NOT" in " ".join(r) for r in rows[:-1]) and rows[-1][-3] == "FITS" and len(rows) >= 2, out
    chosen = out.split("fastest estimated that fits: ")[1].splitlines()[0].split()
    report = aot.compile_train_step(config_lib.load_config("pretrain_embedded", [*overrides, *chosen]), "v5e-4")
    assert report.total_bytes <= small.hbm_bytes * (1 - aot.HBM_MARGIN) < needed


def test_the_decode_step_compiles_with_its_cache_in_the_outputs(capsys):
    """`glm-jax compile --decode-batch`: generation's prefill + one cached token
    (glm_jax.decoding.search) for the slice; the cache it returns is per chip
    layers x (key, value) x rows / 4 x slots x hidden x 4 bytes (float32)."""
    config = config_lib.load_config("pretrain_embedded", TINY)
    report = aot.compile_decode_step(config, "v5e-4", batch_size=8, context_length=96, max_new_tokens=32)
    assert report.fits and report.program.startswith("generation: prefill 96 tokens")
    m = config.model
    cache_per_chip = m.num_layers * 2 * (8 // 4) * (96 + 32) * m.hidden_size * 4
    assert cache_per_chip <= report.memory["outputs"] < cache_per_chip * 1.5
    assert report.state_bytes == pytest.approx(report.memory["arguments"], rel=0.25)  # params; no optimizer
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "--decode-batch", "6"]) == 2
    assert "--decode-batch 6: must be a positive multiple of the 4" in capsys.readouterr().err
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "--decode-batch", "8",
                     "--context-length", "129"]) == 2
    assert "--context-length 129: must be 1..128 (model.max_position_embeddings)" in capsys.readouterr().err


#: Every shipped config for a TPU slice, and the slice it is for.
TPU_CONFIGS = {
    "pretrain/glm_base_tpu_v5e_64": ("v5e-64", 1),
    "pretrain/glm_large_tpu_v4_64": ("v4-64", 1),
    "pretrain/glm_2b_tpu_v5e_256": ("v5e-256", 1),
    "pretrain/glm_10b_tpu_v5p_128": ("v5p-128", 1),
    "pretrain/glm_10b_2x_tpu_v5p_128": ("v5p-128", 2),
}


def test_every_tpu_config_is_checked():
    configs = config_lib.config_dirs()[-1] / "pretrain"
    shipped = {f"pretrain/{p.stem}" for p in configs.glob("*tpu*.yaml")}
    assert shipped == set(TPU_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TPU_CONFIGS))
def test_every_shipped_tpu_config_fits_its_slice(name):
    """The paper configs compiled for the slice they name (about a minute each)."""
    slice_name, num_slices = TPU_CONFIGS[name]
    report = aot.compile_train_step(config_lib.load_config(name), slice_name, num_slices)
    assert report.fits, report.table(config_lib.load_config(name))
