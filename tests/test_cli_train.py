"""glm_jax/cli/train.py, the main job end to end, small: `glm-jax train` on the
embedded corpus, then `glm-jax generate` with the exported model directory."""

import io
import json

import pytest

from glm_jax import cli
from glm_jax.cli import train as train_command
from glm_jax.model_dir import load_model_dir, vocab_file

TINY_RUN = [
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.max_position_embeddings=128",
    "data.sequence_length=32", "data.shuffle_buffer=64", "train.global_batch_size=8", "train.steps=4",
    "train.log_every=2", "train.eval_batches=1", "optimizer.warmup_steps=1", "optimizer.decay_steps=4",
    "checkpoint.save_interval_steps=2", "mesh.ici_shape=[2,2,2]",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("run")
    lines = []
    parser = cli.build_parser()
    args = parser.parse_args(["train", *TINY_RUN, f"train.output_dir={out}"])
    assert train_command.run(args, print_fn=lines.append) == 0
    return out, lines


def test_train_prints_config_progress_and_exports(trained):
    out, lines = trained
    text = "\n".join(lines)
    assert "# resolved config (pretrain_embedded)" in text and "task: glm_pretrain_multitask_embedded" in text
    assert "step 2/4" in text and "step 4/4" in text and "eval at step 4" in text
    assert "model written to" in text
    config, params = load_model_dir(out / "model")
    assert config.hidden_size == 64 and config.vocab_size == 8064
    assert vocab_file(out / "model") is not None
    assert (out / "logs" / "metrics.jsonl").exists() and (out / "checkpoints" / "4").is_dir()


def test_rerun_resumes_and_reexports(trained):
    out, _ = trained
    lines = []
    args = cli.build_parser().parse_args(["train", *TINY_RUN, f"train.output_dir={out}", "train.steps=6"])
    assert train_command.run(args, print_fn=lines.append) == 0
    assert any("resumed from step 4" in line for line in lines)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model")) == ["model"]


def test_generate_fills_masks_from_the_exported_model(trained, capsys):
    out, _ = trained
    rc = cli.main(["generate", "--checkpoint", str(out / "model"), "--max-new-tokens", "6", "--json",
                   "The [MASK] statement leaves a loop."])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["spans"]) == 1 and isinstance(result["spans"][0], str)


def test_bad_override_is_a_one_line_error(capsys):
    assert cli.main(["train", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.stepz'" in err and "Traceback" not in err


def test_readme_main_command_ends_as_written(trained, tmp_path, monkeypatch, capsys):
    """The README's main job ends with `glm-jax eval --task blanks` on
    runs/embedded_default/model; run that command verbatim against the model trained
    here (small settings): it prints the held-out blanks and the accuracy against the
    word-frequency baseline."""
    import shlex

    from test_readme import readme_commands

    main = next(c for c in readme_commands() if "glm-jax train" in c)
    last = main[main.index(".venv/bin/glm-jax eval"):]
    argv = shlex.split(last)[1:]
    out, _ = trained
    (tmp_path / "runs" / "embedded_default").mkdir(parents=True)
    (tmp_path / "runs" / "embedded_default" / "model").symlink_to(out / "model")
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("infilling accuracy over 200 blanks: model top-1")
    assert "word-frequency baseline top-1" in lines[-1] and lines[-8].startswith("held-out blanks: 200 sentences")


def test_train_writes_a_loss_curve(trained):
    out, _ = trained
    png = out / "logs" / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vocabulary_larger_than_the_model_is_refused(tmp_path, capsys):
    rc = cli.main(["train", "model.vocab_size=128", "train.steps=1", f"train.output_dir={tmp_path / 'run'}"])
    assert rc == 2
    assert "model.vocab_size=128" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_positions_beyond_the_model_are_refused(tmp_path, capsys):
    """Rows longer than the position table would gather clamped rows, silently; rows
    may outgrow the positions only through data.text_length."""
    base = ["train", "train.steps=1", f"train.output_dir={tmp_path / 'run'}"]
    assert cli.main([*base, "data.sequence_length=160"]) == 2
    assert ("data.sequence_length=160 gives position ids beyond model.max_position_embeddings=128"
            in capsys.readouterr().err)
    assert cli.main([*base, "data.sequence_length=160", "data.text_length=136"]) == 2
    assert "data.text_length=136 gives position ids beyond" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
