"""``glm-jax eval`` on the zero-shot language-modelling tasks: the official test
fixture converted with a tiny BERT tokenizer, scored through the CLI and through the
library on the same weights and files."""

import json

import pytest

from glm_jax import cli, sharding, zero_shot
from glm_jax.data import language_model
from glm_jax.model_dir import load_model_dir, load_vocabulary
from test_cli_generate import convert

PASSAGES = ["paris is the capital of france", "the quick brown fox jumps over the lazy dog",
            "hello world , the fox", "the dog is the capital"]
DOCUMENTS = ["the quick brown fox jumps over the lazy dog . hello world , paris is the capital of france",
             "", "the lazy dog"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, official_dir):
    out, _ = convert(tmp_path_factory.mktemp("zero_shot"), official_dir, "bert")
    config, params = load_model_dir(out)
    mesh = sharding.mesh_from_config(sharding.MeshConfig())
    return out, config, params, load_vocabulary(out), mesh, zero_shot.make_score_step(config, mesh)


def table(out: str) -> dict[str, float]:
    """The metric rows of the printed table."""
    rows = [line.split() for line in out.splitlines()]
    return {r[1]: float(r[2]) for r in rows if len(r) == 3 and r[0] != "task" and r[2][0].isdigit()}


@pytest.mark.parametrize("unidirectional", [False, True])
def test_lambada_through_the_cli_equals_the_library(model, tmp_path, capsys, unidirectional):
    out, _, params, vocab, mesh, step = model
    data = tmp_path / "lambada.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in PASSAGES))
    flags = ["--unidirectional"] if unidirectional else []
    capsys.readouterr()
    assert cli.main(["eval", "--task", "lambada", "--checkpoint", str(out), "--data-file", str(data),
                     "--seq-length", "24", "--batch-size", "3", *flags]) == 0
    printed = capsys.readouterr().out
    expected = zero_shot.lambada_accuracy(step, params, vocab, PASSAGES, mesh, seq_length=24,
                                          unidirectional=unidirectional)
    assert table(printed) == pytest.approx({k: round(v, 4) for k, v in expected.items()}, abs=1e-4)
    assert f"LAMBADA: 4 passages from {data}" in printed and "rows/s" in printed


def test_perplexity_through_the_cli_equals_the_library(model, tmp_path, capsys):
    out, _, params, vocab, mesh, step = model
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(DOCUMENTS) + "\n")
    capsys.readouterr()
    assert cli.main(["eval", "--task", "lm", "--checkpoint", str(out), "--data-file", str(data),
                     "--seq-length", "9", "--stride", "3"]) == 0
    documents, words = language_model.read_documents(data)
    assert words == 23  # 19 + the blank line's 1 + 3
    expected = zero_shot.perplexity(step, params, vocab, documents, words, mesh, seq_length=9, stride=3)
    got = table(capsys.readouterr().out)
    assert got["ppl"] == pytest.approx(expected["ppl"], rel=1e-3) and expected["ppl"] > 1
    assert got["adjusted_ppl"] == pytest.approx(expected["adjusted_ppl"], rel=1e-3)


def test_lambada_from_tfds_equals_the_library(model, capsys):
    """Without --data-file, LAMBADA comes from TFDS's own builder (its data mocked here)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    out, _, params, vocab, mesh, step = model
    with tfds.testing.mock_data(num_examples=3):
        passages = language_model.read_lambada_tfds("test")
        capsys.readouterr()
        assert cli.main(["eval", "--task", "lambada", "--checkpoint", str(out), "--seq-length", "24"]) == 0
    printed = capsys.readouterr().out
    assert "LAMBADA: 3 passages from TFDS lambada test" in printed
    expected = zero_shot.lambada_accuracy(step, params, vocab, passages, mesh, seq_length=24)
    assert table(printed) == pytest.approx({k: round(v, 4) for k, v in expected.items()}, abs=1e-4)


def test_zero_shot_input_errors_are_one_line(model, tmp_path, capsys, monkeypatch):
    out = str(model[0])
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert cli.main(["eval", "--task", "lambada", "--checkpoint", out]) == 2
    assert "glm-jax: error: TFDS lambada has no prepared 'test' split" in capsys.readouterr().err
    assert cli.main(["eval", "--task", "wikitext103", "--checkpoint", out]) == 2
    assert "--task wikitext103 needs --data-file (TFDS has no wikitext103 data set)" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine words"}\n{"txt": 1}\n')
    assert cli.main(["eval", "--task", "lambada", "--checkpoint", out, "--data-file", str(bad)]) == 2
    assert f"glm-jax: error: {bad}:2: no 'text' string field" in capsys.readouterr().err


def test_held_out_blanks_report_through_the_cli(model, tmp_path, capsys):
    """`glm-jax eval --task blanks`: the model's guesses for one blanked word per
    held-out sentence against a word-frequency baseline."""
    out = str(model[0])
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(DOCUMENTS + PASSAGES) + "\n")
    capsys.readouterr()
    assert cli.main(["eval", "--task", "blanks", "--checkpoint", out, "--data-file", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "held-out blanks:" in printed and "word-frequency baseline top-1" in printed
    assert cli.main(["eval", "--task", "blanks", "--checkpoint", out, "--data-file", str(tmp_path / "no")]) == 2
