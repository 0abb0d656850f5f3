"""`glm-jax finetune` and `glm-jax eval` (glm_jax/cli/finetune.py, evaluate.py) end to
end: official JSONL files, the seqio registry of glm_jax/data/superglue/, a model
directory with its tokenizer, the best model.

The task is synthetic RTE in the official layout (RTE/train.jsonl, val.jsonl): the
hypothesis says "happy" (entailment) or "sad" (not_entailment), the premise is
noise. The "pretrained" model is a tiny GLM at its random init, so beating chance
(50%) means the fine-tuning loop taught it to read the hypothesis.
"""

from __future__ import annotations

import json
import random
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import sentencepiece as spm

from glm_jax import cli
from glm_jax.model import GLM, ModelConfig
from glm_jax.model_dir import load_model_dir, read_tokenizer, save_model_dir

NOUNS = "cat dog bird fish horse cow sheep goat mouse lion".split()
PLACES = "mat road tree lake field barn house park".split()


def rte_record(rng: random.Random, idx: int) -> dict:
    label = rng.random() < 0.5
    return {
        "premise": f"The {rng.choice(NOUNS)} sat near the {rng.choice(PLACES)}.",
        "hypothesis": f"The {rng.choice(NOUNS)} was {'happy' if label else 'sad'} there.",
        "label": "entailment" if label else "not_entailment",
        "idx": idx,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_finetune")
    rng = random.Random(0)
    (root / "data" / "RTE").mkdir(parents=True)
    for split, n in (("train", 160), ("val", 48)):
        lines = [json.dumps(rte_record(rng, i)) for i in range(n)]
        (root / "data" / "RTE" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    # A word-level sentencepiece model: " Yes" and " No" (pattern 0's verbalizer) are
    # single pieces, as in a real vocabulary.
    text = [f"The {n} sat near the {p}. The {n} was happy there. The {n} was sad there. Yes No"
            for n in NOUNS for p in PLACES]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(root / "spm"), vocab_size=60, hard_vocab_limit=False,
        model_type="word", num_threads=1, minloglevel=2,
    )
    config = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
                         embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)
    ids = jnp.zeros((1, 2), jnp.int32)
    params = jax.jit(lambda: GLM(config).init(jax.random.key(0), ids, ids, ids, sep=jnp.ones(1, jnp.int32)))()
    save_model_dir(root / "model", config, nn.unbox(params["params"]), vocab_file=root / "spm.model")
    return root


@pytest.fixture(scope="module")
def finetuned(setup):
    out = setup / "run"
    argv = ["finetune", "--task", "rte", "--config", "finetune/tiny_rte", "--checkpoint", str(setup / "model"),
            "--data-dir", str(setup / "data"), "--output-dir", str(out)]
    assert cli.main(argv) == 0
    return out, argv


def eval_scores(text: str) -> dict[str, float]:
    """The metric table's rows: {metric: value}."""
    rows = [line.split() for line in text.splitlines() if line.startswith("rte ")]
    return {row[2]: float(row[3]) for row in rows}


def test_finetune_beats_chance_and_eval_reproduces_the_best_score(finetuned, setup, capsys):
    out, _ = finetuned
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["score"] >= 90.0, best  # chance: 50
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [10, 20, 30, 40, 50]
    # The best model directory is complete: weights, config, tokenizer and run config.
    config, _ = load_model_dir(out / "best")
    assert config.hidden_size == 32 and read_tokenizer(out / "best").kind == "sentencepiece"
    assert (out / "best" / "finetune.yaml").is_file()

    capsys.readouterr()
    # eval takes the data folder and the sequence length from the stored run config.
    assert cli.main(["eval", "--task", "rte", "--checkpoint", str(out / "best")]) == 0
    text = capsys.readouterr().out
    scores = eval_scores(text)
    assert scores["accuracy"] == pytest.approx(best["score"]) and scores["examples"] == 48
    predictions = out / "best_eval" / "glm_finetune_rte_pattern0_validation_predictions.jsonl"
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["example_id"] for r in lines] == list(range(48)) and lines[0]["guid"] == "validation-0"
    assert 100.0 * sum(r["prediction"] == r["target"] for r in lines) / 48 == pytest.approx(best["score"])
    # Per-epoch predictions of the run itself.
    assert (out / "eval" / f"epoch_{best['epoch']}" / predictions.name).is_file()


def test_rerun_resumes_instead_of_starting_over(finetuned, capsys):
    _, argv = finetuned
    capsys.readouterr()
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "resumed from step 50" in text and "steps 50->50" in text and "new best" not in text


def test_bad_inputs_are_one_line_errors(setup, capsys):
    base = ["finetune", "--task", "rte", "--checkpoint", str(setup / "model"), "--data-dir", str(setup / "data")]
    assert cli.main([*base, "finetune.lr=3"]) == 2
    assert "unknown key 'finetune.lr'" in capsys.readouterr().err
    assert cli.main([*base, "model.hidden_size=64"]) == 2
    err = capsys.readouterr().err
    assert "changes the architecture" in err and re.search(r"model.hidden_size: 64 \(was 32\)", err)
    # Rows longer than the position table would give NaN logits, silently.
    assert cli.main([*base, "--config", "finetune/tiny_rte", "finetune.max_seq_length=100000"]) == 2
    assert "finetune.max_seq_length=100000 (RTE's rows) exceeds the model's max_position_embeddings" in (
        capsys.readouterr().err)
    assert cli.main(["eval", "--task", "nope", "--checkpoint", str(setup / "model")]) == 2
    err = capsys.readouterr().err
    assert "--task nope: not a fine-tuning task; expected a SuperGLUE task (boolq, cb" in err
    assert "or a seq2seq task (cnn_dm, cnn_dm_org, xsum, gigaword, squad_qg, yahoo_blank)" in err
