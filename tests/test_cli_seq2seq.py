"""`glm-jax finetune` and `glm-jax eval` on a conditional-generation task, end to end:
an official seq2seq folder (train/val .source/.target), the seqio task of
glm_jax/data/seq2seq_tasks.py, the label-smoothed loss, beam-search decoding of
the validation split and ROUGE (glm_jax/seq2seq_finetune.py).

The task is synthetic and deterministic: the source is an animal, a colour, a size
and three filler words in random order; the target rewrites it as
"animal X color Y size Z". The "pretrained" model is a tiny GLM at its random init,
so a ROUGE-L above 90 means fine-tuning taught it to find each slot's word in Part A
and decoding wrote it out.
"""

from __future__ import annotations

import json
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import sentencepiece as spm

from glm_jax import cli, text_metrics
from glm_jax.model import GLM, ModelConfig
from glm_jax.model_dir import save_model_dir

ANIMALS = "cat dog fox owl cow pig".split()
COLORS = "red blue green black white gold".split()
SIZES = "big small tall short long wide".split()
FILLER = "the a one some very quite".split()


def example(rng: random.Random) -> tuple[str, str]:
    animal, color, size = rng.choice(ANIMALS), rng.choice(COLORS), rng.choice(SIZES)
    words = [animal, color, size] + [rng.choice(FILLER) for _ in range(3)]
    rng.shuffle(words)
    return " ".join(words), f"animal {animal} color {color} size {size}"


def tiny_model_dir(root, words: list[str], vocab_size: int, seed: int):
    """A word-level sentencepiece model of ``words`` and a tiny GLM at random init,
    saved as the model directory ``root/model``."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words)] * 20), model_prefix=str(root / "spm"), vocab_size=vocab_size,
        hard_vocab_limit=False, model_type="word", num_threads=1, minloglevel=2,
    )
    config = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=32)
    ids = jnp.zeros((1, 2), jnp.int32)
    params = jax.jit(lambda: GLM(config).init(jax.random.key(seed), ids, ids, ids, sep=jnp.ones(1, jnp.int32)))()
    save_model_dir(root / "model", config, nn.unbox(params["params"]), vocab_file=root / "spm.model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_seq2seq")
    rng = random.Random(0)
    (root / "data").mkdir()
    for split, n in (("train", 512), ("val", 32)):
        pairs = [example(rng) for _ in range(n)]
        (root / "data" / f"{split}.source").write_text("".join(s + "\n" for s, _ in pairs))
        (root / "data" / f"{split}.target").write_text("".join(t + "\n" for _, t in pairs))
    tiny_model_dir(root, ANIMALS + COLORS + SIZES + FILLER + ["animal", "color", "size", "Content:"], 40, seed=0)
    return root


def eval_scores(text: str) -> dict[str, float]:
    rows = [line.split() for line in text.splitlines() if line.startswith("xsum ")]
    return {row[2]: float(row[3]) for row in rows}


@pytest.mark.slow  # a minute of training through the CLI: CI's slow step
def test_finetune_then_eval_reaches_rouge_l_above_90(setup, capsys):
    out = setup / "run"
    argv = ["finetune", "--task", "xsum", "--config", "finetune/tiny_seq2seq", "--checkpoint", str(setup / "model"),
            "--data-dir", str(setup / "data"), "--output-dir", str(out)]
    # Before fine-tuning: the random model's ROUGE-L, for contrast.
    assert cli.main(["eval", "--task", "xsum", "--config", "finetune/tiny_seq2seq", "--checkpoint",
                     str(setup / "model"), "--data-dir", str(setup / "data"), "--output-dir",
                     str(setup / "before")]) == 0
    before = eval_scores(capsys.readouterr().out)
    assert before["rougeL"] < 70, before

    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "decoding: 32/32 examples" in text and "examples/s" in text
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "rougeL" and best["score"] > 90.0, best
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/rougeL" in r] == [32, 64, 96, 128, 160, 192]

    # eval reads the run config stored with the best model and scores it again.
    assert cli.main(["eval", "--task", "xsum", "--checkpoint", str(out / "best")]) == 0
    scores = eval_scores(capsys.readouterr().out)
    assert scores["rougeL"] == pytest.approx(best["score"]) and scores["examples"] == 32
    lines = [json.loads(line) for line in
             (out / "best_eval" / "glm_finetune_xsum_validation_predictions.jsonl").read_text().splitlines()]
    assert [r["example_id"] for r in lines] == list(range(32))
    assert lines[0]["reference"] == (setup / "data" / "val.target").read_text().splitlines()[0]
    # The file's texts give the printed score through the metric itself.
    direct = text_metrics.rouge([r["reference"] for r in lines], [r["prediction"] for r in lines],
                                dataset="cnn_dm_org")
    assert direct["rougeL"] == pytest.approx(scores["rougeL"], abs=0.01)


NUMBERS = "one two three four five six seven eight nine ten eleven twelve".split()


def counting_text(rng: random.Random) -> str:
    """Eight numbers counting up from a random start, wrapping after twelve: every
    masked word follows from its neighbours."""
    start = rng.randrange(12)
    return " ".join(NUMBERS[(start + k) % 12] for k in range(8))


@pytest.fixture(scope="module")
def yahoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_yahoo")
    rng = random.Random(1)
    data = root / "data"
    (data / "blank").mkdir(parents=True)
    for name, n in (("train.txt", 512), ("valid.txt", 32), ("test.txt", 2)):
        (data / name).write_text("".join(counting_text(rng) + "\n" for _ in range(n)))
    tests = (data / "test.txt").read_text().splitlines()
    blanks = [" ".join("<blank>" if k in (2, 5) else w for k, w in enumerate(t.split())) for t in tests]
    (data / "blank" / "test.maskratio0.3.blank").write_text("".join(b + "\n" for b in blanks))
    tiny_model_dir(root, NUMBERS, 30, seed=1)
    return root


def yahoo_scores(text: str) -> dict[str, float]:
    rows = [line.split() for line in text.splitlines() if line.startswith("yahoo_blank ")]
    return {row[2]: float(row[3]) for row in rows}


@pytest.mark.slow  # a minute of training through the CLI: CI's slow step
def test_blank_infilling_beats_its_own_bleu_before_finetuning(yahoo, capsys):
    common = ["--task", "yahoo_blank", "--data-dir", str(yahoo / "data")]
    assert cli.main(["eval", *common, "--config", "finetune/tiny_yahoo_blank", "--checkpoint", str(yahoo / "model"),
                     "--output-dir", str(yahoo / "before")]) == 0
    before = yahoo_scores(capsys.readouterr().out)["bleu"]
    assert cli.main(["finetune", *common, "--config", "finetune/tiny_yahoo_blank", "--checkpoint",
                     str(yahoo / "model"), "--output-dir", str(yahoo / "run")]) == 0
    capsys.readouterr()
    best = json.loads((yahoo / "run" / "best.json").read_text())
    assert best["metric"] == "bleu" and best["score"] > before + 20, (before, best)
    # The validation texts keep their unmasked words: only the blanks were filled.
    lines = [json.loads(x) for x in (yahoo / "run" / "eval" / f"epoch_{best['epoch']}" /
                                     "glm_finetune_yahoo_blank_validation_predictions.jsonl").read_text().splitlines()]
    assert all(len(r["prediction"].split()) >= 6 for r in lines)
    # The test split reads upstream's masked file and fills its two blanks per text.
    assert cli.main(["eval", "--task", "yahoo_blank", "--checkpoint", str(yahoo / "run" / "best"), "--split", "test",
                     "--output-dir", str(yahoo / "test")]) == 0
    out = capsys.readouterr().out
    tests = [json.loads(x) for x in (yahoo / "test" / "glm_finetune_yahoo_blank_test_predictions.jsonl")
             .read_text().splitlines()]
    reference = (yahoo / "data" / "test.txt").read_text().splitlines()
    assert [r["reference"] for r in tests] == reference
    for r, ref in zip(tests, reference):
        words, want = r["prediction"].split(), ref.split()
        assert [w for k, w in enumerate(words) if k not in (2, 5)] == [w for k, w in enumerate(want) if k not in (2, 5)]
    assert "yahoo_blank  test" in out


def test_bad_inputs_are_one_line_errors(setup, tmp_path, capsys):
    base = ["finetune", "--task", "xsum", "--checkpoint", str(setup / "model"), "--output-dir", str(tmp_path / "run")]
    assert cli.main([*base, "--config", "finetune/tiny_seq2seq", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere' / 'train.source'} does not exist" in capsys.readouterr().err
    # The paper's 608 source tokens do not fit the tiny model's 32 positions.
    assert cli.main([*base, "--data-dir", str(setup / "data")]) == 2
    assert "seq2seq.src_length=608 / seq2seq.tgt_length=60 need positions beyond the model's " \
           "max_position_embeddings=32" in capsys.readouterr().err
    assert cli.main([*base, "--pattern-id", "1"]) == 2
    assert "--pattern-id applies to SuperGLUE tasks; xsum is a seq2seq task" in capsys.readouterr().err
    assert cli.main([*base, "--config", "finetune/tiny_seq2seq", "seq2seq.label_smoothing=1.5"]) == 2
    assert "seq2seq.label_smoothing must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
