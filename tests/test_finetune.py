"""The fine-tuning loop and its steps, on in-memory cloze batches (no seqio).

The data is a synthetic RTE task built with glm_jax.data.superglue.inputs.encode_example:
the hypothesis says "happy" (entailment) or "sad" (not) and the premise is noise,
so a tiny GLM trained from scratch must learn to read one word of Part A at the
[sop] row. tests/test_cli_finetune.py runs the same kind of task through the
seqio registry and the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glm_jax import cloze, finetune, sharding
from glm_jax import config as config_lib
from glm_jax.optim import OptimizerConfig
from glm_jax.command_tokens import CommandTokens
from glm_jax.model import GLM, ModelConfig
from glm_jax.model_dir import load_model_dir
from glm_jax.nonfinite import NonFiniteError
from glm_jax.data.superglue.inputs import encode_example
from glm_jax.data.superglue.readers import Example
from test_cloze import WordVocab

CMD = CommandTokens(pad=0, eos=0, cls=1, mask=2, sop=3, eop=4, unk=5)
MODEL = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64)
LENGTH = 32
LR = 1e-2
NOUNS = "cat dog bird fish horse cow sheep goat mouse lion".split()


def rte_rows(n: int, seed: int, vocab: WordVocab) -> dict[str, np.ndarray]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randrange(2)  # 1 = entailment
        ex = Example(
            f"x-{i}",
            {"premise": f"The {rng.choice(NOUNS)} sat near the {rng.choice(NOUNS)}.",
             "hypothesis": f"The {rng.choice(NOUNS)} was {'happy' if label else 'sad'} there."},
            label,
        )
        rows.append({**encode_example("RTE", ex, vocab, max_seq_length=LENGTH), "example_id": np.int32(i)})
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class ArrayData:
    """finetune.ClozeData over in-memory rows; accuracy as the metric (percent)."""

    def __init__(self, train_rows, val_rows, batch_size, seed=0, on_batch=None):
        self.train_rows, self.val_rows, self.batch_size, self.seed = train_rows, val_rows, batch_size, seed
        self.on_batch = on_batch  # called with (epoch, index) before each batch is handed out

    def steps_per_epoch(self):
        return len(self.train_rows["label"]) // self.batch_size

    def train_batches(self, epoch):
        order = np.random.default_rng(self.seed + epoch).permutation(len(self.train_rows["label"]))
        for i in range(self.steps_per_epoch()):
            if self.on_batch is not None:
                self.on_batch(epoch, i)
            rows = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield {k: v[rows] for k, v in self.train_rows.items()}

    def evaluate(self, predict_fn, output_dir):
        n = len(self.val_rows["label"])
        batches = (cloze.pad_rows({k: v[s : s + 16] for k, v in self.val_rows.items()}, 16) for s in range(0, n, 16))
        choices = predict_fn(batches)
        assert sorted(choices) == list(range(n))
        return {"accuracy": 100.0 * float(np.mean([choices[i] == self.val_rows["label"][i] for i in range(n)]))}


@pytest.fixture(scope="module")
def rows():
    vocab = WordVocab()
    return rte_rows(160, 0, vocab), rte_rows(48, 1, vocab)


@pytest.fixture(scope="module")
def pretrained():
    ids = jnp.zeros((1, 2), jnp.int32)
    return nn.unbox(jax.jit(lambda: GLM(MODEL).init(jax.random.key(0), ids, ids, ids, sep=jnp.ones(1, jnp.int32)))()
                    ["params"])


def run_config(tmp_path, **finetune_fields) -> finetune.FinetuneRunConfig:
    return config_lib.from_dict(finetune.FinetuneRunConfig, {
        "model": config_lib.to_dict(MODEL),
        "finetune": {"task": "rte", "epochs": 5, "batch_size": 16, "log_every": 5, "output_dir": str(tmp_path),
                     **finetune_fields},
        "optimizer": {"learning_rate": LR, "warmup": 0.1, "decay_style": "linear", "lr_decay_ratio": 0.1,
                      "b2": 0.999, "eps": 1e-8},
        "checkpoint": {"save_interval_steps": 1000, "async_save": False},
        "mesh": {"ici_shape": [2, 2, 2]},
    })


def test_configs_have_the_spec_hyperparameters():
    base = {"model": config_lib.to_dict(MODEL)}
    expected = {  # task: (pattern, epochs, batch), spec 4.3
        "boolq": (4, 20, 16), "cb": (3, 50, 16), "copa": (0, 50, 16), "multirc": (0, 15, 64),
        "record": (0, 5, 64), "rte": (0, 50, 16), "wic": (1, 30, 16), "wsc": (2, 50, 16),
    }
    for task, (pattern, epochs, batch) in expected.items():
        config = config_lib.load_config_as(finetune.FinetuneRunConfig, f"finetune/{task}", base=base)
        ft, opt = config.finetune, config.optimizer
        assert (ft.task, ft.pattern_id, ft.epochs, ft.batch_size, ft.eval_batch_size) == (task, pattern, epochs, batch, 16)
        assert (opt.learning_rate, opt.warmup, opt.decay_style) == (1e-5, 0.1, "linear") and opt.lr_decay_ratio == 0.1
        assert (opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.clip_norm) == (0.9, 0.999, 1e-8, 0.1, 1.0)
        assert config.model.hidden_dropout == config.model.attention_dropout == config.model.embedding_dropout == 0.1
        assert (ft.loss, ft.length_penalty) == (("mix", 1.0) if task == "wsc" else ("cross_entropy", 0.0))


def test_every_finetune_yaml_loads_over_a_model_config():
    paths = sorted((Path(config_lib.__file__).resolve().parents[1] / "configs" / "finetune").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"base", "boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"}
    for path in paths:
        config = config_lib.load_config_as(finetune.FinetuneRunConfig, path, base={"model": config_lib.to_dict(MODEL)})
        assert config.model.hidden_size == MODEL.hidden_size, path


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="finetune.loss must be one of"):
        finetune.FinetuneConfig(task="rte", loss="hinge")
    with pytest.raises(ValueError, match=r"model.hidden_size: 64 \(was 32\)"):
        finetune.check_same_architecture(MODEL.replace(hidden_size=64, num_heads=2), MODEL, "DIR")
    finetune.check_same_architecture(MODEL.replace(hidden_dropout=0.3, dtype="bfloat16"), MODEL, "DIR")


def test_finetune_learns_keeps_the_best_model_and_resumes_exactly(tmp_path, rows, pretrained):
    train_rows, val_rows = rows
    lines = []
    straight = finetune.run(
        run_config(tmp_path / "a"), ArrayData(train_rows, val_rows, 16), lambda s: jax.device_put(pretrained, s),
        print_fn=lines.append,
    )
    assert (straight.steps_per_epoch, straight.final_step, straight.stopped_early) == (10, 50, False)
    evals = [r for r in straight.history if "metrics" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4, 5]
    scores = [r["metrics"]["accuracy"] for r in evals]
    # Chance is 50%: the tiny model must have learnt to read the hypothesis.
    assert max(scores) >= 90.0, scores
    assert straight.best["score"] == max(scores) and straight.best["epoch"] == 1 + scores.index(max(scores))
    assert json.loads((tmp_path / "a" / "best.json").read_text()) == straight.best
    # The schedule spans the 50 steps: warmup to the peak at step 5, then linear to 0.1x at step 50.
    lrs = {r["step"]: r["learning_rate"] for r in straight.history if "learning_rate" in r}
    assert lrs[5] == pytest.approx(LR * 4 / 5, rel=1e-5)
    assert lrs[50] == pytest.approx(LR - 0.9 * LR * (49 - 5) / 45, rel=1e-5)
    assert any(line.startswith("epoch 5 (step 50) validation: accuracy") for line in lines)

    # The exported best model scores what best.json says, and carries the run config.
    best_config, best_params = load_model_dir(tmp_path / "a" / finetune.BEST_DIR)
    assert best_config == MODEL
    loaded = config_lib.load_config_as(finetune.FinetuneRunConfig, tmp_path / "a" / "best" / finetune.RUN_CONFIG)
    assert loaded.optimizer.decay_steps == 50 and loaded.finetune.task == "rte"
    mesh = sharding.make_mesh((2, 2, 2))
    step = cloze.eval_step_for(MODEL, mesh, "cross_entropy", 0.0)
    data = ArrayData(train_rows, val_rows, 16)
    assert data.evaluate(lambda b: cloze.predict(step, best_params, b, mesh)[0], None)["accuracy"] == \
        straight.best["score"]

    # Preempted in the middle of epoch 2, then restarted: the same final weights.
    def preempt(epoch, index):
        if (epoch, index) == (1, 4):
            os.kill(os.getpid(), signal.SIGTERM)

    first = finetune.run(
        run_config(tmp_path / "b"), ArrayData(train_rows, val_rows, 16, on_batch=preempt),
        lambda s: jax.device_put(pretrained, s), print_fn=lambda _: None,
    )
    assert first.stopped_early and first.final_step == 15
    lines = []
    resumed = finetune.run(
        run_config(tmp_path / "b"), ArrayData(train_rows, val_rows, 16), lambda s: pytest.fail("reloaded"),
        print_fn=lines.append,
    )
    assert resumed.start_step == 15 and resumed.final_step == 50 and "resumed from step 15" in "\n".join(lines)
    assert resumed.best == straight.best
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        straight.state.params, resumed.state.params,
    )


def test_a_diverging_finetune_stops_before_its_first_evaluation_and_export(tmp_path, rows, pretrained):
    train_rows, val_rows = rows
    config = run_config(tmp_path / "nan", epochs=2)
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, learning_rate=1e30))
    with pytest.raises(NonFiniteError, match=r"at step \d \(finetune.on_nonfinite=stop\).*no checkpoint was saved"):
        finetune.run(config, ArrayData(train_rows, val_rows, 16), lambda s: jax.device_put(pretrained, s),
                     print_fn=lambda _: None)
    # Nothing of the diverged state left the device: no best model, no evaluation, no checkpoint.
    assert not (tmp_path / "nan" / finetune.BEST_DIR).exists()
    assert not (tmp_path / "nan" / finetune.BEST_RECORD).exists()
    assert not (tmp_path / "nan" / "eval").exists()
    assert not [p for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit()]


def test_an_epoch_saved_but_not_evaluated_is_evaluated_on_resume(tmp_path, rows, pretrained):
    train_rows, val_rows = rows
    config = run_config(tmp_path / "r", epochs=2)
    first = finetune.run(config, ArrayData(train_rows, val_rows, 16), lambda s: jax.device_put(pretrained, s),
                         print_fn=lambda _: None)
    assert [r["epoch"] for r in first.history if "metrics" in r] == [1, 2]
    # A kill right after epoch 2's checkpoint, before its evaluation and export finished:
    shutil.rmtree(tmp_path / "r" / "eval" / "epoch_2")
    shutil.rmtree(tmp_path / "r" / finetune.BEST_DIR)
    (tmp_path / "r" / finetune.BEST_RECORD).unlink()
    again = finetune.run(config, ArrayData(train_rows, val_rows, 16), lambda s: jax.device_put(pretrained, s),
                         print_fn=lambda _: None)
    assert again.start_step == again.final_step == 20
    (record,) = [r for r in again.history if "metrics" in r]
    assert record["epoch"] == 2 and record["metrics"] == [r for r in first.history if "metrics" in r][1]["metrics"]
    assert (tmp_path / "r" / finetune.BEST_DIR).is_dir() and again.best["epoch"] == 2


def test_the_warmup_line_says_when_a_short_run_gives_a_fractional_warmup():
    assert finetune.describe_warmup(OptimizerConfig(warmup=0.1, decay_steps=50)) == "5 steps"
    assert finetune.describe_warmup(OptimizerConfig(warmup=0.1, decay_steps=6)) == "0.6 steps (optimizer.warmup=0.1 of 6)"
    assert finetune.describe_warmup(OptimizerConfig(warmup_steps=3, decay_steps=6)) == "3 steps"
