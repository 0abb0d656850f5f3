"""Ahead-of-time compilation for TPU slices (glm_jax/aot.py, `glm-jax compile`):
real TPU topologies from libtpu, on this CPU-only machine.

These need libtpu. The default suite skips them when it is absent; CI's
TPU-compile step (.ci/run) installs the libtpu that jax[tpu] pins into a side
folder and runs this file with it.
"""

import importlib.util
import json
import math

import jax
import numpy as np
import pytest

from glm_jax import aot, cli, train_state
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


def test_unknown_slice_and_bad_slices_are_one_line_errors(capsys):
    with pytest.raises(ValueError, match="--topology v9-8: unknown slice"):
        aot.slice_devices("v9-8")
    assert cli.main(["compile", "--config", "pretrain_embedded", "--topology", "v5e-4", "mesh.ici_shape=[1,8,1]"]) == 2
    assert "mesh" in capsys.readouterr().err
