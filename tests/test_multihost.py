"""Two processes, one mesh: the same losses as one process with all the devices.

The test runs this file as a script (``python tests/test_multihost.py NUM_PROCESSES
PROCESS_ID PORT``): two CPU processes with 4 fake devices each join through
``jax.distributed`` on 127.0.0.1 and form one 2x2x2 mesh, each feeding only its rows
of every global batch; alongside, one process with 8 fake devices runs the same
training as the reference. CPU collectives across processes use gloo, the default
``jax_cpu_collectives_implementation`` of this JAX.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

NUM_STEPS = 3
GLOBAL_BATCH = 8
SEQ_LEN = 16
VOCAB = 128
TIMEOUT_S = 420  # the whole two-process run; generous for a shared 2-core machine
RESULT_PREFIX = "RESULT "


def make_batch(step: int) -> dict[str, np.ndarray]:
    """The global batch of ``step``: every process can build it, and keeps its rows."""
    rng = np.random.default_rng(1000 + step)
    sep = rng.integers(2, SEQ_LEN - 1, GLOBAL_BATCH).astype(np.int32)
    part_b = np.arange(SEQ_LEN) >= sep[:, None]
    return dict(
        tokens=rng.integers(0, VOCAB, (GLOBAL_BATCH, SEQ_LEN)).astype(np.int32),
        targets=rng.integers(0, VOCAB, (GLOBAL_BATCH, SEQ_LEN)).astype(np.int32),
        loss_mask=part_b.astype(np.int32),
        position_ids=np.where(part_b, 1, np.arange(SEQ_LEN)).astype(np.int32),
        block_position_ids=np.maximum(np.arange(SEQ_LEN) - sep[:, None] + 1, 0).astype(np.int32),
        sep=sep,
    )


def run_training() -> dict:
    """A few AdamW steps with dropout and 2 microbatches on a 2x2x2 mesh over all
    processes' devices; returns per-step metrics and the final parameter norm."""
    import jax
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    from glm_jax import multihost, sharding, train, train_state
    from glm_jax.model import ModelConfig
    from glm_jax.optim import OptimizerConfig, make_optimizer

    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=16)
    mesh = sharding.make_mesh((2, 2, 2))
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-2, decay_steps=100, warmup_steps=1))
    state = train_state.init_train_state(config, tx, mesh, 0)
    step = train.make_train_step(config, tx, mesh, schedule=schedule, num_microbatches=2, seed=5)
    rows = multihost.process_batch_indices(mesh, GLOBAL_BATCH)

    def fetch(x: jax.Array) -> float:  # replicated: every process holds the value
        return float(np.asarray(x.addressable_data(0)))

    result: dict = {"rows": rows.tolist(), "loss": [], "grad_norm": []}
    for i in range(NUM_STEPS):
        local = {name: value[rows] for name, value in make_batch(i).items()}
        batch = multihost.global_batch_from_local(local, mesh, GLOBAL_BATCH)
        state, metrics = step(state, batch)
        result["loss"].append(fetch(metrics["loss"]))
        result["grad_norm"].append(fetch(metrics["grad_norm"]))
    norm = jax.jit(optax.global_norm, out_shardings=NamedSharding(mesh, PartitionSpec()))(state.params)
    result["param_norm"] = fetch(norm)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(runs: list[tuple[int, int]]) -> list[dict]:
    """Start every ``(num_processes, process_id)`` worker at once and collect their
    results; 8 devices in all per run, a shared port per multi-process run."""
    port = _free_port()
    procs = []
    for num_processes, rank in runs:
        env = dict(
            os.environ,
            # Compile time dominates; every worker compiles the same way.
            XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // num_processes} "
            "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
            JAX_PLATFORMS="cpu",
            PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, str(num_processes), str(rank), str(port)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # If one process dies, the other would wait in a collective: stop both.
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0] for p in procs]
    results = []
    for (num_processes, rank), p, out in zip(runs, procs, outputs):
        lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
        if p.returncode != 0 or not lines:
            tail = "\n".join(out.splitlines()[-30:])
            pytest.fail(
                f"process {rank} of {num_processes} failed (exit code {p.returncode}; timeout {TIMEOUT_S}s):\n{tail}"
            )
        results.append(json.loads(lines[-1][len(RESULT_PREFIX):]))
    return results


@pytest.mark.slow
def test_two_processes_match_one_process():
    *results, reference = _launch([(2, 0), (2, 1), (1, 0)])

    # Each process fed a different half of the global batch.
    assert sorted(results[0]["rows"] + results[1]["rows"]) == list(range(GLOBAL_BATCH))
    assert reference["rows"] == list(range(GLOBAL_BATCH))
    for result in results:
        for name in ("loss", "grad_norm"):
            np.testing.assert_allclose(result[name], reference[name], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(result["param_norm"], reference["param_norm"], rtol=1e-6)


TINY_TRAIN = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.max_position_embeddings=32",
    "data.sequence_length=32", "data.shuffle_buffer=64", "train.global_batch_size=8", "train.steps=2",
    "train.log_every=1", "train.eval_batches=1", "optimizer.warmup_steps=0", "optimizer.decay_steps=2",
    "checkpoint.save_interval_steps=2",
]


@pytest.mark.slow
def test_two_process_train_cli_exports_the_model(tmp_path, corpus_dir):
    """`glm-jax train` across two processes ends, and process 0 exports a loadable model
    (the export used to wait forever in a barrier the other process never reached)."""
    port = _free_port()
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "glm_jax.cli", "train", "--coordinator-address", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(rank), f"train.output_dir={tmp_path / 'run'}", *TINY_TRAIN],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {rank}:\n" + "\n".join(out.splitlines()[-30:])
    from glm_jax.model_dir import load_model_dir, load_vocabulary

    config, params = load_model_dir(tmp_path / "run" / "model")
    assert config.hidden_size == 32
    assert load_vocabulary(tmp_path / "run" / "model").vocab_size <= config.vocab_size


def test_single_process_helpers():
    import jax

    from glm_jax import multihost, sharding

    assert multihost.initialize() is False  # nothing configured: single process
    with pytest.raises(ValueError, match="must be given together"):
        multihost.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"process_id 2 is not in \[0, num_processes=2\)"):
        multihost.initialize("127.0.0.1:1234", 2, 2)

    mesh = sharding.make_mesh((2, 2, 2))
    np.testing.assert_array_equal(multihost.process_batch_indices(mesh, 8), np.arange(8))
    with pytest.raises(ValueError, match=r"train.global_batch_size \(6\) is not divisible"):
        multihost.process_batch_indices(mesh, 6)
    batch = multihost.global_batch_from_local(make_batch(0), mesh, GLOBAL_BATCH)
    assert batch["tokens"].shape == (GLOBAL_BATCH, SEQ_LEN)
    assert batch["tokens"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(batch["sep"]), make_batch(0)["sep"])
    with pytest.raises(ValueError, match="'tokens' has 4 local rows; with a global batch of 8"):
        multihost.global_batch_from_local({"tokens": make_batch(0)["tokens"][:4]}, mesh, GLOBAL_BATCH)


if __name__ == "__main__":  # one worker of test_two_processes_match_one_process
    from glm_jax import multihost

    num_processes, process_id, port = map(int, sys.argv[1:])
    if num_processes > 1:
        multihost.initialize(f"127.0.0.1:{port}", num_processes, process_id, timeout_s=120)
    print(RESULT_PREFIX + json.dumps(run_training()), flush=True)
