"""The training loop end to end on a tiny model and synthetic batches: progress,
TensorBoard events, evaluation, checkpoints, and resume through the loop."""

import json

import jax
import numpy as np
import pytest

from glm_jax import config as config_lib
from glm_jax.checkpointing import SkippingIterator
from glm_jax import pretrain

B, T, V = 8, 16, 128


def synthetic_batch(index: int) -> dict[str, np.ndarray]:
    """Batch ``index`` of a deterministic stream: Part B repeats Part A and must
    predict its own tokens, which a tiny model learns in a few steps."""
    rng = np.random.default_rng(index)
    sep = np.full(B, T // 2, np.int32)
    part_a = rng.integers(4, V, (B, T // 2))
    tokens = np.concatenate([part_a, part_a], axis=1).astype(np.int32)
    targets = tokens.copy()
    loss_mask = (np.arange(T) >= T // 2).astype(np.float32)[None].repeat(B, 0)
    return dict(
        tokens=tokens,
        targets=targets.astype(np.int32),
        loss_mask=loss_mask,
        position_ids=np.broadcast_to(np.arange(T) % (T // 2), (B, T)).astype(np.int32),
        block_position_ids=np.broadcast_to(np.maximum(np.arange(T) - T // 2 + 1, 0), (B, T)).astype(np.int32),
        sep=sep,
    )


def stream(start: int):
    index = start
    while True:
        yield synthetic_batch(index)
        index += 1


def make_config(tmp_path, steps, **train):
    return config_lib.apply_overrides(
        config_lib.load_config(None),
        [
            f"train.steps={steps}", f"train.global_batch_size={B}", f"train.output_dir={tmp_path}",
            "train.log_every=2", "train.eval_batches=2", "checkpoint.save_interval_steps=3",
            "checkpoint.async_save=false", "optimizer.learning_rate=1e-2", "optimizer.warmup_steps=2",
            "optimizer.decay_steps=20", "mesh.ici_shape=[2,2,2]",
            *[f"train.{k}={v}" for k, v in train.items()],
        ],
    )


def test_loop_logs_evaluates_checkpoints_and_learns(tmp_path):
    lines = []
    result = pretrain.run(
        make_config(tmp_path, 12, eval_every=6), SkippingIterator(stream),
        eval_data=lambda: stream(10_000), print_fn=lines.append,
    )
    assert result.final_step == 12 and not result.stopped_early
    train_records = [r for r in result.history if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8, 10, 12]
    assert train_records[-1]["loss"] < train_records[0]["loss"] - 0.2
    evals = [r for r in result.history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [6, 12] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert any("tokens/s" in line and "ETA" in line for line in lines)
    # Checkpoints at the interval and at the end; metrics on disk.
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 12
    rows = [json.loads(x) for x in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/tokens_per_s"} <= set(rows[0])
    assert [r["step"] for r in rows if "eval/loss" in r] == [6, 12]
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert config_lib.load_yaml(tmp_path / "config.yaml").train.steps == 12


def test_resume_through_the_loop_is_exact(tmp_path):
    straight = pretrain.run(make_config(tmp_path / "a", 8), SkippingIterator(stream), print_fn=lambda _: None)
    first = pretrain.run(make_config(tmp_path / "b", 5), SkippingIterator(stream), print_fn=lambda _: None)
    assert first.final_step == 5
    lines = []
    resumed = pretrain.run(make_config(tmp_path / "b", 8), SkippingIterator(stream), print_fn=lines.append)
    assert resumed.start_step == 5 and any("resumed from step 5" in line for line in lines)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        straight.state.params, resumed.state.params,
    )


def test_the_last_step_is_saved_before_the_final_evaluation_can_fail(tmp_path):
    def broken_eval():
        raise ValueError("the validation files vanished")

    with pytest.raises(ValueError, match="vanished"):
        pretrain.run(make_config(tmp_path, 4), SkippingIterator(stream), eval_data=broken_eval, print_fn=lambda _: None)
    # The 4 trained steps are not lost: step 4 was committed before the evaluation ran.
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[-1] == 4
