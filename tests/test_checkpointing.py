"""Checkpointing: intervals and retention, restore into other meshes, bad checkpoints,
SIGTERM preemption and exact resume after SIGKILL (8 fake CPU devices, conftest).

The two toy training runs that get killed run in subprocesses started from this
file (see ``main`` at the bottom): ``python tests/test_checkpointing.py {count,glm}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from glm_jax import sharding
from glm_jax.checkpointing import (
    CheckpointConfig,
    CheckpointError,
    Checkpointer,
    JsonIteratorState,
    SkippingIterator,
    TfDataIteratorState,
    as_iterator_state,
    install_preemption_handler,
    preemption_requested,
)
from glm_jax.config import ConfigError, load_config, to_yaml
from glm_jax.model import GLM, ModelConfig

HERE = Path(__file__).resolve()
MODEL = ModelConfig(
    vocab_size=128, hidden_size=32, num_layers=1, num_heads=4, max_position_embeddings=32,
    embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
)
BATCH, LENGTH = 4, 16


# ------------------------------------------------------------------ helpers


def glm_inputs(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs for a batch of token rows: all Part A (bidirectional), plain positions."""
    b, t = tokens.shape
    return dict(
        tokens=tokens,
        position_ids=np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
        block_position_ids=np.zeros((b, t), np.int32),
        sep=np.full((b,), t, np.int32),
    )


def _glm_init(rng):
    return GLM(MODEL).init(rng, **glm_inputs(np.zeros((BATCH, LENGTH), np.int32)))["params"]


def random_like(abstract, seed: int):
    """Random values (N(0, 0.02), ints 3) with the shapes and dtypes of ``abstract``.

    Drawn with NumPy: on a loaded 2-core CPU, compiling ``model.init`` (its
    threefry initialisers) takes tens of seconds, and the values don't matter here.
    """
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.integer):
            return np.full(leaf.shape, 3, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree.map(draw, abstract)


def glm_abstract_state(mesh_shape) -> tuple[dict, dict]:
    """(abstract train state, its shardings) for the tiny GLM + AdamW on a mesh
    shape, or on one device for None."""
    optimizer = optax.adamw(1e-3)
    if mesh_shape is None:
        abstract_params = jax.eval_shape(lambda rng: nn.unbox(_glm_init(rng)), jax.random.PRNGKey(0))
        replicated = SingleDeviceSharding(jax.devices()[0])
        param_shardings = jax.tree.map(lambda _: replicated, abstract_params)
    else:
        mesh = sharding.make_mesh(mesh_shape)
        with sharding.activate(mesh):
            abstract_params, param_shardings = sharding.abstract_params_and_shardings(
                _glm_init, mesh, jax.random.PRNGKey(0)
            )
        replicated = NamedSharding(mesh, P())
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    # Adam's mu and nu are sharded like the parameters; the count is replicated.
    opt_shardings = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: replicated
    )
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params, "opt_state": abstract_opt}
    shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def toy_state(step: int) -> dict:
    """Random (incompressible) values, different at every step."""
    rng = np.random.default_rng(step)
    params = {"w": rng.normal(size=(64, 64)).astype(np.float32), "b": rng.normal(size=(32,)).astype(np.float32)}
    return {"step": jnp.int32(step), "params": jax.tree.map(jnp.asarray, params)}


def toy_abstract() -> dict:
    device = SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), toy_state(0))


def counting_iterator() -> SkippingIterator:
    """Yields 0, 1, 2, ...; restores by starting at the saved count."""
    return SkippingIterator(lambda n: iter(range(n, 1 << 30)))


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_trees_equal(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------ config, saving


def test_config_section_is_typed_and_checked():
    config = load_config(None, ["checkpoint.directory=/tmp/run", "checkpoint.save_interval_steps=5"])
    assert config.checkpoint == CheckpointConfig(directory="/tmp/run", save_interval_steps=5)
    assert "async_save: true" in to_yaml(config)
    with pytest.raises(ConfigError, match=r"checkpoint.save_interval_steps must be >= 1, got 0"):
        load_config(None, ["checkpoint.save_interval_steps=0"])
    with pytest.raises(ConfigError, match=r"checkpoint.max_to_keep must be >= 1 or null, got 0"):
        load_config(None, ["checkpoint.max_to_keep=0"])
    with pytest.raises(ValueError, match="checkpoint.directory is not set"):
        Checkpointer(CheckpointConfig())


@pytest.mark.parametrize("async_save", [True, False])
def test_interval_retention_force_and_items(tmp_path, async_save):
    run_config = load_config(None)
    data = counting_iterator()
    config = CheckpointConfig(str(tmp_path), save_interval_steps=3, max_to_keep=2, keep_period=6, async_save=async_save)
    with Checkpointer(config) as ckpt:
        started = []
        for step in range(1, 13):
            next(data)
            started.append(ckpt.save(step, toy_state(step), data_iterator=data, config=run_config))
        assert [s for s, ok in zip(range(1, 13), started) if ok] == [3, 6, 9, 12]
        assert not ckpt.save(12, toy_state(12), force=True), "a step already saved is not saved twice"
        next(data)
        assert ckpt.save(13, toy_state(13), data_iterator=data, force=True)
        ckpt.wait()
        # The newest 2, plus every multiple of keep_period=6.
        assert ckpt.all_steps() == [6, 12, 13]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["12", "13", "6"]
        assert ckpt.saved_config(12) == to_yaml(run_config)
        assert ckpt.saved_config(13) is None

    resumed = counting_iterator()
    with Checkpointer(config) as ckpt:  # a new process would see the same
        step, state = ckpt.restore_latest(toy_abstract(), data_iterator=resumed)
        assert step == 13
        assert_trees_equal(state, toy_state(13))
        assert next(resumed) == 13, "the data position is restored"
        assert_trees_equal(ckpt.restore(6, toy_abstract()), toy_state(6))


def test_no_checkpoint_gives_none(tmp_path):
    with Checkpointer(CheckpointConfig(str(tmp_path / "new"))) as ckpt:
        assert ckpt.restore_latest(toy_abstract()) is None


def test_checkpoint_without_data_position_warns(tmp_path, caplog):
    with Checkpointer(CheckpointConfig(str(tmp_path))) as ckpt:
        assert ckpt.save(5, toy_state(5), force=True)
        data = counting_iterator()
        next(data)
        with caplog.at_level(logging.WARNING, logger="glm_jax.checkpointing"):
            step, state = ckpt.restore_latest(toy_abstract(), data_iterator=data)
    assert step == 5
    assert_trees_equal(state, toy_state(5))
    assert "has no data position" in caplog.text
    assert next(data) == 1, "the iterator is left where it was"


# ---------------------------------------------------------------- resharding


@pytest.fixture(scope="module")
def saved_sharded_glm(tmp_path_factory):
    """A GLM train state sharded on a (2, 2, 2) mesh, saved at step 7."""
    abstract, shardings = glm_abstract_state((2, 2, 2))
    state = random_like(abstract, seed=1)
    state["step"] = np.int32(7)
    state = jax.device_put(state, shardings)
    # The saved state really is split: [embed, 3, heads, head_dim] over fsdp and tensor.
    qkv = state["params"]["layers_0"]["attention"]["query_key_value"]["kernel"]
    assert qkv.sharding.shard_shape(qkv.shape) == (16, 3, 2, 8)
    directory = tmp_path_factory.mktemp("sharded")
    with Checkpointer(CheckpointConfig(str(directory))) as ckpt:
        assert ckpt.save(7, state, force=True)
    return directory, jax.device_get(state)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (8, 1, 1), None], ids=["1x8x1", "8x1x1", "one_device"])
def test_restore_into_another_mesh_is_bitwise(saved_sharded_glm, mesh_shape):
    directory, saved = saved_sharded_glm
    abstract, shardings = glm_abstract_state(mesh_shape)
    with Checkpointer(CheckpointConfig(str(directory))) as ckpt:
        step, state = ckpt.restore_latest(abstract)
    assert step == 7
    assert_trees_equal(state, saved)
    for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)


# ------------------------------------------------------- bad checkpoints


def _data_file(step_dir: Path) -> Path:
    """The OCDBT data file that holds the (incompressible) parameter values."""
    return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _delete_data_file(step_dir: Path) -> None:
    _data_file(step_dir).unlink()


def _truncate_data_file(step_dir: Path) -> None:
    path = _data_file(step_dir)
    os.truncate(path, path.stat().st_size // 2)


def _truncate_tree_metadata(step_dir: Path) -> None:
    os.truncate(step_dir / "state" / "_METADATA", 50)


def _delete_data_item(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "data")


CORRUPTIONS = [_delete_data_file, _truncate_data_file, _truncate_tree_metadata, _delete_data_item]
# What the skip warning says for each (Checkpointer.describe_failure).
REASONS = {
    "_delete_data_file": r"restore failed: (short read|missing file)",
    "_truncate_data_file": r"restore failed: short read .*params\.w",
    "_truncate_tree_metadata": r"cannot read its metadata: bad metadata: ",
    "_delete_data_item": r"restore failed: missing file or item: Item \"data\" was not found",
}


def _save_toy_steps(directory: Path, steps) -> None:
    data = counting_iterator()
    with Checkpointer(CheckpointConfig(str(directory), save_interval_steps=1, async_save=False)) as ckpt:
        for step in steps:
            next(data)
            assert ckpt.save(step, toy_state(step), data_iterator=data)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_latest_is_skipped_and_kept(tmp_path, caplog, corrupt):
    _save_toy_steps(tmp_path, [1, 2, 3])
    corrupt(tmp_path / "3")
    bad_files = files_under(tmp_path / "3")

    data = counting_iterator()
    with caplog.at_level(logging.WARNING, logger="glm_jax.checkpointing"):
        with Checkpointer(CheckpointConfig(str(tmp_path), save_interval_steps=1)) as ckpt:
            step, state = ckpt.restore_latest(toy_abstract(), data_iterator=data)
            assert step == 2
            assert_trees_equal(state, toy_state(2))
            assert next(data) == 2
            (warning,) = [r.getMessage() for r in caplog.records if "skipping checkpoint step 3" in r.getMessage()]
            # One line that says what is wrong, not the storage library's spec dump.
            assert "\n" not in warning and len(warning) < 400, warning
            assert re.search(REASONS[corrupt.__name__], warning), warning

            # The bad step is moved aside with every file it had, and its step can
            # be saved again.
            (moved,) = (tmp_path / "quarantine").iterdir()
            assert moved.name.startswith("3.")
            assert files_under(moved) == bad_files
            assert ckpt.all_steps() == [1, 2]
            assert ckpt.save(3, toy_state(30), force=True)
            ckpt.wait()
            assert_trees_equal(ckpt.restore(3, toy_abstract()), toy_state(30))


def test_uncommitted_save_is_ignored_and_kept(tmp_path, caplog):
    _save_toy_steps(tmp_path, [1, 2])
    # What a run killed in the middle of saving step 3 leaves behind.
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
    (tmp_path / "3.orbax-checkpoint-tmp" / "commit_success.txt").unlink(missing_ok=True)
    partial = files_under(tmp_path / "3.orbax-checkpoint-tmp")
    with caplog.at_level(logging.WARNING, logger="glm_jax.checkpointing"):
        with Checkpointer(CheckpointConfig(str(tmp_path), save_interval_steps=1)) as ckpt:
            step, _ = ckpt.restore_latest(toy_abstract())
            assert step == 2
            assert any("never committed" in r.getMessage() for r in caplog.records)
            (moved,) = (tmp_path / "quarantine").iterdir()
            assert files_under(moved) == partial
            assert ckpt.save(3, toy_state(3))


def test_all_checkpoints_bad_raises_and_moves_nothing(tmp_path):
    _save_toy_steps(tmp_path, [1, 2])
    _truncate_tree_metadata(tmp_path / "1")
    _delete_data_file(tmp_path / "2")
    before = files_under(tmp_path)
    with Checkpointer(CheckpointConfig(str(tmp_path))) as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore_latest(toy_abstract())
    message = str(info.value)
    assert "\n" not in message and len(message) < 700, message
    assert re.search(r"no checkpoint .* could be restored \(step 2: .*; step 1: bad metadata: .*\); nothing was moved",
                     message), message
    assert files_under(tmp_path) == before


def test_wrong_target_is_an_error_not_a_bad_checkpoint(tmp_path):
    _save_toy_steps(tmp_path, [1, 2])
    before = files_under(tmp_path)
    abstract = toy_abstract()
    device = abstract["step"].sharding
    abstract["params"]["w"] = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=device)
    abstract["params"]["extra"] = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=device)
    with Checkpointer(CheckpointConfig(str(tmp_path))) as ckpt:
        want = (
            r"step 2 .* does not match the restore target:\n"
            r"  params/extra: not in the checkpoint\n"
            r"  params/w: saved shape \(64, 64\), target shape \(8, 16\)$"
        )
        with pytest.raises(ValueError, match=want):
            ckpt.restore_latest(abstract)
        no_sharding = toy_abstract()
        no_sharding["params"]["b"] = jax.ShapeDtypeStruct((32,), jnp.float32)
        with pytest.raises(ValueError, match=r"sharding at every leaf; got:\n  params/b: ShapeDtypeStruct"):
            ckpt.restore_latest(no_sharding)
    assert files_under(tmp_path) == before


# ------------------------------------------------------------ data iterators


def test_iterator_states(tmp_path):
    data = counting_iterator()
    assert [next(data) for _ in range(3)] == [0, 1, 2]
    state = as_iterator_state(data)
    assert isinstance(state, JsonIteratorState)
    state.save(tmp_path)
    assert (tmp_path / "state.json").read_text().replace(" ", "").replace("\n", "") == '{"consumed":3}'
    resumed = counting_iterator()
    as_iterator_state(resumed).restore(tmp_path)
    assert next(resumed) == 3
    with pytest.raises(ValueError, match=r"non-negative int 'consumed', got \{'consumed': -1\}"):
        resumed.set_state({"consumed": -1})
    with pytest.raises(TypeError, match="cannot checkpoint a data iterator of type list_iterator"):
        as_iterator_state(iter([1, 2]))

    class Unserialisable:
        def get_state(self):
            return {"rng": object()}

        def set_state(self, state):
            pass

    with pytest.raises(TypeError, match="Unserialisable.get_state.. is not JSON-serialisable"):
        JsonIteratorState(Unserialisable()).save(tmp_path)


# ---------------------------------------------------------------- preemption


def test_sigterm_sets_should_stop(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with Checkpointer(CheckpointConfig(str(tmp_path))) as ckpt:
        with install_preemption_handler():
            assert not ckpt.should_stop(1) and not preemption_requested()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # Python runs the handler at the next bytecode boundary
            assert ckpt.should_stop(2) and preemption_requested()
        assert not preemption_requested(), "the notice ends with the block"
    assert signal.getsignal(signal.SIGTERM) is before


def test_jax_preemption_sync_point_saves_and_stops(tmp_path, monkeypatch):
    """Multi-process runs learn of a preemption from JAX's sync point (all hosts agree
    on the step); stand in for jax.distributed by faking it at step 7."""
    from jax.experimental import multihost_utils

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 7)
    with Checkpointer(CheckpointConfig(str(tmp_path), save_interval_steps=100)) as ckpt:
        assert not ckpt.should_stop(6) and not ckpt.save(6, toy_state(6))
        assert ckpt.should_stop(7)
        assert ckpt.save(7, toy_state(7)), "saved at the sync point, off the interval"
        ckpt.wait()
        assert ckpt.all_steps() == [7]


def _start(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """Runs ``python tests/test_checkpointing.py *args``, output to ``<name>.log``."""
    log = tmp_path / f"{name}.log"
    # A compilation cache shared by the runs of one test: the resumed run reuses
    # the killed run's executables instead of recompiling (~10 s on a busy CPU).
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE), *args], stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parents[1], env=env
        )
    return proc, log


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"toy run exited with {proc.returncode} before {path.name} existed:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def test_sigterm_saves_the_step_reached_and_exits_cleanly(tmp_path):
    directory = tmp_path / "ckpt"
    proc, log = _start(tmp_path, "count", "count", str(directory))
    _wait_for(directory / "20", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    lines = [line for line in log.read_text().splitlines() if line.startswith("stopped after step ")]
    assert len(lines) == 1, log.read_text()[-3000:]
    stopped = int(lines[0].split()[-1])
    assert 20 <= stopped < 2000

    data = counting_iterator()
    with Checkpointer(CheckpointConfig(str(directory))) as ckpt:
        assert ckpt.latest_step() == stopped
        step, state = ckpt.restore_latest(_count_abstract(), data_iterator=data)
    assert step == stopped and int(state["step"]) == stopped
    # The loop adds element i of the stream at step i+1: w = 0 + 1 + ... + (stopped - 1).
    np.testing.assert_array_equal(state["w"], np.full((4, 4), stopped * (stopped - 1) / 2, np.float32))
    assert next(data) == stopped


def test_exact_resume_after_sigkill(tmp_path):
    """A run killed (SIGKILL) after saving, then resumed, ends bitwise equal to an
    uninterrupted run: params, optimizer state and the tf.data shuffle order."""
    directory, total = tmp_path / "ckpt", 24
    proc, log = _start(tmp_path, "killed", "glm", str(directory), "--steps", "100000", "--sleep", "0.05")
    _wait_for(directory / "8", proc, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "killed mid-run, not finished"

    resumed_out, reference_out = tmp_path / "resumed.npz", tmp_path / "reference.npz"
    proc, log = _start(
        tmp_path, "resumed", "glm", str(directory), "--steps", str(total),
        "--out", str(resumed_out), "--reference-out", str(reference_out),
    )
    assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    lines = [line for line in log.read_text().splitlines() if line.startswith("resumed from step ")]
    assert len(lines) == 1, log.read_text()[-3000:]
    assert 8 <= int(lines[0].split()[-1]) < total
    resumed, reference = np.load(resumed_out), np.load(reference_out)
    assert resumed.files == reference.files and len(resumed.files) > 10
    for name in resumed.files:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert int(resumed["step"]) == total


# ------------------------------------------------------ toy runs (subprocesses)


def _count_abstract() -> dict:
    device = SingleDeviceSharding(jax.devices()[0])
    return {
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=device),
        "w": jax.ShapeDtypeStruct((4, 4), jnp.float32, sharding=device),
    }


def run_count(directory: str) -> None:
    """Adds element i of a counting stream to w at step i+1, slowly, saving every 10
    steps, until SIGTERM (or 2000 steps)."""
    data = SkippingIterator(lambda n: (np.full((4, 4), i, np.float32) for i in range(n, 1 << 30)))
    add = jax.jit(lambda state, x: {"step": state["step"] + 1, "w": state["w"] + x}, donate_argnums=0)
    with install_preemption_handler(), Checkpointer(CheckpointConfig(directory, save_interval_steps=10)) as ckpt:
        restored = ckpt.restore_latest(_count_abstract(), data_iterator=data)
        step, state = restored or (0, {"step": jnp.int32(0), "w": jnp.zeros((4, 4), jnp.float32)})
        while step < 2000:
            state = add(state, next(data))
            step += 1
            time.sleep(0.005)
            ckpt.save(step, state, data_iterator=data)
            if ckpt.should_stop(step):
                ckpt.save(step, state, data_iterator=data, force=True)
                print(f"stopped after step {step}", flush=True)
                break


def run_glm(directory: str, steps: int, sleep: float, out: str | None, reference_out: str | None) -> None:
    """Trains the tiny GLM with AdamW on a shuffled, repeated tf.data stream,
    checkpointing every 4 steps (state + tf.data iterator)."""
    import tensorflow as tf

    model, optimizer = GLM(MODEL), optax.adamw(1e-2)
    examples = np.random.default_rng(0).integers(0, MODEL.vocab_size, (40, LENGTH)).astype(np.int32)

    abstract_params = jax.eval_shape(lambda rng: nn.unbox(_glm_init(rng)), jax.random.PRNGKey(0))
    init_optimizer = jax.jit(optimizer.init)

    def fresh():
        dataset = tf.data.Dataset.from_tensor_slices(examples).shuffle(16, seed=3).repeat().batch(BATCH)
        params = jax.tree.map(jnp.asarray, random_like(abstract_params, seed=0))
        state = {"step": jnp.int32(0), "params": params, "opt_state": init_optimizer(params)}
        return TfDataIteratorState(iter(dataset)), state

    def loss_fn(params, tokens):
        logits = model.apply({"params": params}, **glm_inputs(tokens))
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    @jax.jit
    def train_step(state, tokens):
        grads = jax.grad(loss_fn)(state["params"], tokens)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}

    def train(state, data, start, ckpt=None):
        for step in range(start + 1, steps + 1):
            state = train_step(state, np.asarray(next(data)))
            time.sleep(sleep)
            if ckpt is not None:
                ckpt.save(step, state, data_iterator=data, config="toy: glm\n")
        return state

    def dump(state, path):
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
        np.savez(path, **{jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x) for p, x in flat})

    data, state = fresh()
    with Checkpointer(CheckpointConfig(directory, save_interval_steps=4)) as ckpt:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SingleDeviceSharding(jax.devices()[0])), state
        )
        restored = ckpt.restore_latest(abstract, data_iterator=data)
        start = 0
        if restored is not None:
            start, state = restored
            print(f"resumed from step {start}", flush=True)
        state = train(state, data, start, ckpt)
    if out:
        dump(state, out)
    if reference_out:  # the same run, uninterrupted and without checkpoints
        data, state = fresh()
        dump(train(state, data, 0), reference_out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count")
    count.add_argument("directory")
    glm = commands.add_parser("glm")
    glm.add_argument("directory")
    glm.add_argument("--steps", type=int, required=True)
    glm.add_argument("--sleep", type=float, default=0.0)
    glm.add_argument("--out")
    glm.add_argument("--reference-out")
    args = parser.parse_args(argv)
    if args.command == "count":
        run_count(args.directory)
    else:
        run_glm(args.directory, args.steps, args.sleep, args.out, args.reference_out)


if __name__ == "__main__":
    main(sys.argv[1:])
