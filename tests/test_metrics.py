"""FLOP counting, progress lines and TensorBoard-readable metrics."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from glm_jax import metrics
from glm_jax.model import GLM
from glm_jax.model.presets import get_preset


@pytest.mark.parametrize("preset", ["glm_tiny", "glm_large"])
def test_matmul_params_are_all_params_but_position_tables(preset):
    config = get_preset(preset).replace(scan_layers=True)
    ids = np.zeros((1, 4), np.int32)
    shapes = jax.eval_shape(GLM(config).init, jax.random.PRNGKey(0), ids, ids, ids, sep=np.array([2]))
    total = sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"])))
    tables = 2 * config.position_table_size * config.hidden_size
    assert metrics.matmul_params(config) == total - tables


def test_flops_per_token_adds_full_attention():
    config = get_preset("glm_large")
    flops = metrics.train_flops_per_token(config, 512)
    attention = 12 * 24 * 512 * 1024
    assert flops == 6 * metrics.matmul_params(config) + attention
    assert attention / flops == pytest.approx(0.07, abs=0.005)  # attention is ~7% of Large at T=512


def test_progress_rates_mfu_and_eta():
    times = iter([0.0, 2.0])
    progress = metrics.Progress(total_steps=100, flops_per_token=1e9, peak_flops=1e13, clock=lambda: next(times))
    rates = progress.update(step=10, tokens=20_000)
    assert rates["tokens_per_s"] == 10_000
    assert rates["step_time_s"] == pytest.approx(0.2)
    assert rates["mfu"] == pytest.approx(1e13 / 1e13)  # 1e4 tok/s * 1e9 flop/tok over 1e13 peak
    assert rates["eta_s"] == pytest.approx(90 * 0.2)
    line = progress.line(10, {"loss": 2.5}, rates)
    assert "step 10/100" in line and "loss 2.5000" in line and "MFU 100.0%" in line and "ETA 0m18s" in line


def test_hardware_flops_count_the_output_layer_only_where_it_ran():
    # 20,000 tokens in 2 s; the output layer (3e8 of the 1e9 FLOPs per token) ran at
    # 5,000 positions: hardware FLOPs = 20,000 * 7e8 + 5,000 * 3e8 = 1.55e13.
    times = iter([0.0, 2.0])
    progress = metrics.Progress(total_steps=100, flops_per_token=1e9, peak_flops=1e13, clock=lambda: next(times),
                                output_layer_flops=3e8)
    rates = progress.update(step=10, tokens=20_000, logit_positions=5_000)
    assert rates["mfu"] == pytest.approx(1.0)  # model FLOPs: the output layer at every token
    assert rates["hardware_tflops"] == pytest.approx(1.55e13 / 2 / 1e12)
    assert rates["hfu"] == pytest.approx(0.775)
    assert "MFU 100.0% (hardware 77.5%)" in progress.line(10, {}, rates)
    config = metrics.ModelConfig(vocab_size=100, hidden_size=8, num_layers=1, num_heads=2, max_position_embeddings=8)
    assert metrics.output_layer_flops_per_position(config) == 6 * 100 * 8


def test_metrics_writer_writes_event_files_and_jsonl(tmp_path):
    import tensorflow as tf

    writer = metrics.MetricsWriter(tmp_path)
    writer.write(1, {"loss": 3.0})
    writer.write(2, {"loss": 2.0}, prefix="eval/")
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 3.0}, {"step": 2, "eval/loss": 2.0}]
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    seen = {}
    for record in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in record.summary.value:
            seen[(record.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    assert seen == {(1, "loss"): 3.0, (2, "eval/loss"): 2.0}
