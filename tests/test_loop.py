"""The one training loop's contract (glm_jax/loop.py), with a task of its own:
what happens at boundaries, at log and eval intervals, on resume with a pending
evaluation, and in which order. Pretraining and fine-tuning (tests/test_pretrain.py,
tests/test_finetune.py) run the same loop with their real tasks."""

import dataclasses

import jax
import pytest

from glm_jax import loop, sharding, train, train_state
from glm_jax.checkpointing import CheckpointConfig
from glm_jax.model import ModelConfig
from glm_jax.optim import OptimizerConfig, make_optimizer
from test_pretrain import B, V, synthetic_batch

MODEL = ModelConfig(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=32)


def run_task(tmp_path, total, *, calls, pending=lambda step: False, log_every=4, eval_every=None, boundary=3):
    mesh = sharding.mesh_from_config(sharding.MeshConfig())
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, decay_steps=20))
    step_fn = train.make_train_step(MODEL, optimizer, mesh, loss=train.TokenLoss(), schedule=schedule)

    def evaluate(step, state, writer):
        calls.append(("eval", step, int(state.step)))
        writer.write(step, {"score": float(step)}, prefix="eval/")
        return {"step": step, "eval_score": float(step)}

    def batches(start):
        calls.append(("batches", start))
        index = start
        while True:
            yield synthetic_batch(index)
            index += 1

    task = loop.LoopTask(
        train_step=step_fn, batches=batches, weight_key="loss_tokens",
        init_state=lambda shardings: train_state.init_train_state(MODEL, optimizer, mesh, 0),
        is_boundary=lambda step: step % boundary == 0, evaluate=evaluate, pending_evaluation=pending,
        extra=lambda step: {"epoch": (step - 1) // boundary + 1},
    )
    settings = loop.LoopSettings(section="finetune", total_steps=total, global_batch_size=B, log_every=log_every,
                                 output_dir=str(tmp_path), eval_every=eval_every)
    lines = []
    result = loop.run(settings, task, run_config=MODEL, model_config=MODEL, optimizer=optimizer, mesh=mesh,
                      checkpoint=CheckpointConfig(save_interval_steps=100, async_save=False), print_fn=lines.append)
    return result, lines


def test_boundaries_are_logged_saved_and_evaluated_after_the_save(tmp_path):
    calls = []
    result, lines = run_task(tmp_path, 7, calls=calls, eval_every=5)
    assert result.final_step == 7 and not result.stopped_early
    # Logged every 4 steps, at the task's boundaries (3, 6) and at the last step,
    # which is a boundary of every run.
    assert [r["step"] for r in result.history if "loss" in r] == [3, 4, 6, 7]
    assert [r["epoch"] for r in result.history if "loss" in r] == [1, 2, 2, 3]
    assert any(line.startswith("epoch 2 | step 4/7") for line in lines), lines
    # Evaluated at the boundaries and every eval_every steps, on the state after that step.
    assert [c for c in calls if c[0] == "eval"] == [("eval", 3, 3), ("eval", 5, 5), ("eval", 6, 6), ("eval", 7, 7)]
    # Saved at each boundary (forced), never in between (the interval is 100).
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [3, 6, 7]
    assert [r["step"] for r in result.history if "eval_score" in r] == [3, 5, 6, 7]


def test_a_resume_at_a_boundary_evaluates_a_pending_one_first(tmp_path):
    run_task(tmp_path, 3, calls=[])
    calls = []
    result, lines = run_task(tmp_path, 6, calls=calls, pending=lambda step: step == 3)
    assert result.start_step == 3 and any("resumed from step 3" in line for line in lines)
    assert calls[0] == ("eval", 3, 3)  # before any batch is read
    assert calls[1] == ("batches", 3)
    assert [c for c in calls if c[0] == "eval"] == [("eval", 3, 3), ("eval", 6, 6)]


def test_a_finished_run_reads_no_batch(tmp_path):
    run_task(tmp_path, 3, calls=[])
    calls = []
    result, _ = run_task(tmp_path, 3, calls=calls)
    assert result.start_step == result.final_step == 3 and calls == []


def test_peak_flops_prefers_the_given_figure():
    assert loop.peak_flops(100.0) == pytest.approx(100e12 * jax.device_count())
    assert loop.peak_flops(None) is None  # CPU is not in the table


def test_checkpoint_directory_defaults_under_the_output_dir(tmp_path):
    assert loop.checkpoint_config(CheckpointConfig(), tmp_path).directory == str(tmp_path / "checkpoints")
    given = dataclasses.replace(CheckpointConfig(), directory="/elsewhere")
    assert loop.checkpoint_config(given, tmp_path).directory == "/elsewhere"
