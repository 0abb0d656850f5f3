"""Faults a long run meets, through the real CLI in a subprocess (with a timeout, so a
hang fails the test): each ends in one ``glm-jax: error:`` line (or a documented
exit code) and loses no checkpoint or exported model that existed before.

One tiny run is trained once (in this process) and copied for each test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest


from glm_jax import cli, console, sharding, train_state
from glm_jax.cli import train as train_command
from glm_jax.checkpointing import CheckpointConfig, Checkpointer
from glm_jax.config import load_config
from glm_jax.optim import make_optimizer

TINY = [
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.max_position_embeddings=128",
    "data.sequence_length=32", "data.shuffle_buffer=64", "train.global_batch_size=8", "train.log_every=2",
    "train.eval_batches=1", "optimizer.warmup_steps=1", "optimizer.decay_steps=4",
    "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=3",
]
TIMEOUT = 60


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, corpus_dir) -> Path:
    """A finished 4-step run: checkpoints 2 and 4, and its exported model/."""
    out = tmp_path_factory.mktemp("good") / "run"
    args = cli.build_parser().parse_args(["train", *TINY, "train.steps=4", f"train.output_dir={out}"])
    assert train_command.run(args, print_fn=lambda _: None) == 0
    return out


def checkpoint_target(run: Path):
    """The abstract train state of the TINY run (for restoring its checkpoints)."""
    config = load_config("pretrain_embedded", [*TINY, f"train.output_dir={run}"])
    optimizer, _ = make_optimizer(config.optimizer)
    mesh = sharding.mesh_from_config(config.mesh)
    abstract, shardings = train_state.train_state_shardings(config.model, optimizer, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def copy_run(good_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    return run


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` and a hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def start(*args: str) -> subprocess.Popen:
    """``glm-jax ARGS`` in a subprocess; PYTHONFAULTHANDLER lets a hang show its stacks."""
    return subprocess.Popen([sys.executable, "-m", "glm_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Waits for ``proc``; a hang fails the test with every thread's stack."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints all threads' tracebacks
        try:
            out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        pytest.fail(f"glm-jax {' '.join(proc.args[3:5])} ... hung for {timeout} s:\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def glm_jax(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return finish(start(*args), timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command; no traceback, no native chatter."""
    err = result.stderr
    assert "Traceback" not in err, err[-3000:]
    chatter = [line for line in err.splitlines() if console.is_chatter(line.encode())]
    assert not chatter, chatter
    errors = [line for line in err.splitlines() if line.startswith("glm-jax: error: ")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


# ---------------------------------------------------------------- training faults


def test_nan_stops_the_run_and_keeps_every_good_checkpoint_and_the_model(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    checkpoints, model = snapshot(run / "checkpoints"), snapshot(run / "model")
    # Resumed at step 4 with an absurd learning rate: step 5's update overflows.
    result = glm_jax("train", *TINY, "train.steps=12", "optimizer.learning_rate=1e30", f"train.output_dir={run}")
    assert result.returncode == 3, result.stderr[-3000:]
    line = error_line(result)
    assert re.fullmatch(
        r"glm-jax: error: training diverged: the loss or gradient became NaN/inf at step 5 \(train.on_nonfinite=stop\); "
        r"nothing from that step on was saved, and the last good state is checkpoint step 4 in \S+/checkpoints\. "
        r"Lower optimizer.learning_rate, or set train.on_nonfinite=skip_step", line), line
    assert snapshot(run / "checkpoints") == checkpoints
    assert snapshot(run / "model") == model


def test_skip_step_policy_trains_on_and_stops_after_too_many_skips(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    checkpoints = snapshot(run / "checkpoints")
    result = glm_jax("train", *TINY, "train.steps=12", "optimizer.learning_rate=1e30", f"train.output_dir={run}",
                     "train.on_nonfinite=skip_step", "train.max_consecutive_skips=3")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "skipped 2 non-finite step(s)" in result.stdout  # the progress line at step 6
    assert re.search(r"3 steps in a row up to step 7 .*max_consecutive_skips=3\); the last good state is checkpoint "
                     r"step 6", error_line(result))
    # Step 6 was saved: skipped steps leave the state as it was (= step 4's), so it is finite.
    assert set(snapshot(run / "checkpoints")) > set(checkpoints)


def test_sigterm_saves_and_exits_143_and_a_second_signal_exits_at_once(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    args = ["train", *TINY, "train.steps=100000", "checkpoint.save_interval_steps=20", f"train.output_dir={run}"]
    proc = start(*args)
    try:
        wait_for(run / "checkpoints" / "20", proc)  # training, past one save
        proc.send_signal(signal.SIGTERM)
        result = finish(proc)
        out, err = result.stdout, result.stderr
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    stopped = int(re.search(r"preempted: saved step (\d+) and stopping", out).group(1))
    assert (run / "checkpoints" / str(stopped)).is_dir()
    assert "Traceback" not in err

    # Twice: the second signal ends the process at once, whatever it was doing.
    proc = start(*args)
    try:
        wait_for(run / "checkpoints" / str(stopped + 20 - stopped % 20), proc)  # resumed and training
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)  # another signal number: not merged with the first
        err = finish(proc).stderr
    finally:
        proc.kill()
    assert proc.returncode in (130, 143), err[-3000:]
    assert re.search(r"glm-jax: stopped by a second SIG(INT|TERM), without saving", err), err[-3000:]


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)


def test_unwritable_checkpoint_directory_mid_run_stops_within_one_interval(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    shutil.rmtree(run / "model")
    args = ["train", *TINY, "train.steps=100000", f"train.output_dir={run}"]
    proc = start(*args)
    try:
        wait_for(run / "checkpoints" / "8", proc)
        # The storage goes away under the run (as root, permissions would not stop
        # it): the checkpoints are moved aside and a file takes the directory's place.
        # The run is paused for the swap: a save writing at that moment would create
        # the directory again between the two steps (tensorstore makes missing parent
        # directories as it writes), and the file could not take its place.
        proc.send_signal(signal.SIGSTOP)
        try:
            (run / "checkpoints").rename(run / "kept")
            (run / "checkpoints").write_text("not a directory")
        finally:
            proc.send_signal(signal.SIGCONT)
        result = finish(proc)
    finally:
        proc.kill()
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result)
    # Which OS error names the loss depends on what the save was doing when the
    # directory went: writing into it, or removing a step beyond max_to_keep.
    assert re.search(r"glm-jax: error: saving checkpoint step \d+ to \S+/checkpoints failed: "
                     r".*(Not a directory|No such file or directory)", line), line
    assert not (run / "model").exists()  # no export of an unsaved state
    # What the run had saved is intact: the newest max_to_keep steps, the latest restores.
    steps = sorted(int(p.name) for p in (run / "kept").iterdir() if p.name.isdigit())
    assert len(steps) in (3, 4) and steps[-1] >= 8 and steps == list(range(steps[0], steps[-1] + 1, 2)), steps
    with Checkpointer(CheckpointConfig(str(run / "kept"))) as ckpt:
        assert ckpt.restore_latest(checkpoint_target(run))[0] == steps[-1]


def test_output_directory_not_writable_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    start = time.monotonic()
    result = glm_jax("train", *TINY, "train.steps=4", f"train.output_dir={blocker / 'run'}")
    assert result.returncode == 2
    assert re.fullmatch(rf"glm-jax: error: train.output_dir={blocker / 'run'} is not writable: Not a directory .*",
                        error_line(result))
    assert result.stdout == ""  # nothing was set up, not even the config printed
    assert time.monotonic() - start < 30


def test_all_checkpoints_damaged_is_one_line_and_moves_nothing(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    for step in ("2", "4"):
        os.truncate(run / "checkpoints" / step / "state" / "_METADATA", 50)
    before = snapshot(run)
    result = glm_jax("train", *TINY, "train.steps=6", f"train.output_dir={run}")
    assert result.returncode == 2
    line = error_line(result)
    assert re.fullmatch(r"glm-jax: error: no checkpoint in \S+ could be restored \(step 4: bad metadata: [^;]+; "
                        r"step 2: bad metadata: [^;]+\); nothing was moved or deleted: .*", line), line
    assert len(line) < 600
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != "config.yaml"} == {k: v for k, v in before.items() if k != "config.yaml"}


def test_one_damaged_checkpoint_is_a_one_line_warning_and_a_killed_export_is_cleaned_up(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    os.truncate(run / "checkpoints" / "4" / "state" / "_METADATA", 50)
    leftover = run / "model.tmp-999999"  # what an export killed half-way leaves
    leftover.mkdir()
    (leftover / "config.yaml").write_text("half")
    result = glm_jax("train", *TINY, "train.steps=6", f"train.output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "skipping checkpoint step 4" in line]
    assert len(warnings) == 1 and len(warnings[0]) < 400, result.stderr[-3000:]
    assert "cannot read its metadata: bad metadata" in warnings[0]
    assert "resumed from step 2" in result.stdout
    assert not leftover.exists()
    assert [p.name.split(".")[0] for p in (run / "checkpoints" / "quarantine").iterdir()] == ["4"]


def test_rerun_of_a_finished_run_with_other_settings_is_refused(good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    before = snapshot(run)
    # The README's override example, aimed at a finished run directory.
    result = glm_jax("train", *TINY, "train.steps=2", "model.dtype=bfloat16", f"train.output_dir={run}")
    assert result.returncode == 2
    assert re.fullmatch(rf"glm-jax: error: train.output_dir={run} is already at step 4, past train.steps=2: "
                        r"start a new train.output_dir, or set train.steps above 4 to continue it", error_line(result))
    result = glm_jax("train", *TINY, "train.steps=8", "model.hidden_size=32", f"train.output_dir={run}")
    assert result.returncode == 2
    assert "holds a run of another model (model.hidden_size: 32 (was 64))" in error_line(result)
    result = glm_jax("train", *TINY, "train.steps=4", f"train.output_dir={run}")
    assert result.returncode == 0 and "nothing to train" in result.stdout
    assert snapshot(run) == before


# -------------------------------------------------------------------- data faults


def write_corpus(path: Path, bad_line: bytes, at: int = 150, n: int = 300) -> Path:
    lines = [json.dumps({"text": f"Document {i} explains how the loop ends. It has two sentences."}).encode()
             for i in range(n)]
    lines[at - 1] = bad_line
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("fmt, bad_line, reason", [
    ("jsonl", b'{"text": "unterminated', r"invalid JSON: Unterminated string"),
    ("jsonl", b'{"text": "caf\xe9 au lait"}', r"not valid UTF-8 \(byte 13"),
    ("text", b"caf\xe9 au lait", r"not valid UTF-8 \(byte 3"),
])
def test_a_bad_document_ends_the_run_with_its_file_and_line(tmp_path, corpus_dir, fmt, bad_line, reason):
    corpus = write_corpus(tmp_path / f"corpus.{fmt}", bad_line)
    start = time.monotonic()
    result = glm_jax("train", *TINY, "train.steps=50", f"train.output_dir={tmp_path / 'run'}",
                     f"data.files={corpus}", f"data.format={fmt}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert re.fullmatch(rf"glm-jax: error: {corpus}:150: {reason}.*", error_line(result))
    assert time.monotonic() - start < TIMEOUT


def test_a_launcher_task_without_a_validation_split_is_refused_before_training(tmp_path, corpus_dir):
    corpus = write_corpus(tmp_path / "wiki.jsonl", json.dumps({"text": "fine"}).encode())
    module = tmp_path / "my_tasks.py"
    module.write_text(
        "from glm_jax.data import pretraining, sources\n"
        f"pretraining.register_pretraining_tasks('mine', sources.JsonLinesSource({{'train': {str(corpus)!r}}}))\n"
    )
    result = glm_jax("train", "--task-module", str(module), *TINY, "train.steps=4", "data.task=glm_pretrain_token_mine",
                     f"train.output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert re.fullmatch(r"glm-jax: error: data.task=glm_pretrain_token_mine: JsonLinesSource\(.*\) has no split "
                        r"'validation' \(it has \['train'\]\): set data.eval_split to one of them \(or "
                        r"data.eval_split=null to train without evaluation\)", error_line(result))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------- conversion and loading


def damage_a_weight(path: Path) -> None:
    """Flips one byte inside the largest stored tensor of a torch zip archive."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage, message", [
    ("weight", r"\S+: storage record \S+/data/\d+ fails its CRC-32 check: the file is damaged .*"),
    ("truncated", r"\S+ is a damaged or truncated zip archive .*"),
    ("empty", r"\S+ is empty \(0 bytes\): not a checkpoint.*"),
    ("foreign", r"\S+ is not a torch checkpoint \(neither a zip archive nor a legacy torch pickle; it starts with .*"),
])
def test_convert_refuses_a_damaged_checkpoint(tmp_path, official_dir, damage, message):
    src = tmp_path / "model_states.pt"
    shutil.copy(official_dir / "model_states.pt", src)
    if damage == "weight":
        damage_a_weight(src)
    elif damage == "truncated":
        os.truncate(src, src.stat().st_size // 2)
    elif damage == "empty":
        src.write_bytes(b"")
    else:
        src.write_text("model weights: see https://example.com\n")
    result = glm_jax("convert", str(src), str(tmp_path / "out"))
    assert result.returncode == 2
    line = error_line(result)
    assert re.fullmatch(f"glm-jax: error: {message}", line), line
    assert "weights_only=False" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_truncated_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "model.safetensors"
    save_file({"word_embeddings.weight": np.ones((64, 32), np.float32)}, str(src))
    os.truncate(src, src.stat().st_size - 100)
    result = glm_jax("convert", str(src), str(tmp_path / "out"))
    assert result.returncode == 2
    assert re.fullmatch(rf"glm-jax: error: {src}: not a readable safetensors file \(.+\); it is damaged or "
                        r"truncated: re-download or re-copy it", error_line(result))
    assert not (tmp_path / "out").exists()


def test_generate_on_something_that_is_not_a_model_directory(good_run, tmp_path):
    result = glm_jax("generate", "--checkpoint", str(good_run), "A [MASK] day.")
    assert result.returncode == 2
    assert error_line(result) == (f"glm-jax: error: --checkpoint {good_run} is not a glm-jax model directory: missing "
                                  f"params/; it is a run directory: use --checkpoint {good_run / 'model'}")
    result = glm_jax("generate", "--checkpoint", str(tmp_path / "nowhere"), "A [MASK] day.")
    assert result.returncode == 2
    assert error_line(result) == (f"glm-jax: error: --checkpoint {tmp_path / 'nowhere'} is not a glm-jax model "
                                  f"directory: {tmp_path / 'nowhere'} does not exist")


def test_console_starts_with_our_own_first_line(good_run):
    result = glm_jax("train", *TINY, "train.steps=4", f"train.output_dir={good_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("# resolved config (pretrain_embedded)\n")
    assert result.stderr == "", result.stderr[-3000:]


def test_a_document_without_text_stops_show_example_in_one_line(tmp_path, corpus_dir, capsys):
    """In process: show-example reads through the same CheckedIterator as training."""
    from glm_jax.data import pretraining, sources

    corpus = write_corpus(tmp_path / "c.jsonl", json.dumps({"txt": "no text here"}).encode(), at=2, n=5)
    pretraining.register_pretraining_tasks("faulty_show", sources.JsonLinesSource({"train": str(corpus)}), overwrite=True)
    assert cli.main(["show-example", "--task", "glm_pretrain_token_faulty_show", "--no-image", "--index", "40"]) == 2
    err = capsys.readouterr().err
    assert err == f"glm-jax: error: {corpus}:2: no 'text' field (fields: ['txt'])\n"
