"""Seq2seq tasks in seqio (glm_jax/data/seq2seq_tasks.py): the rows the task gives
are the official layout token for token, batches and shards, and the evaluation
through seqio.Evaluator scores texts with the reference packages."""

import json

import numpy as np
import pytest
import seqio

from glm_jax import text_metrics
from glm_jax.data import seq2seq, seq2seq_evaluation, seq2seq_tasks
from glm_jax.data.embedded_vocab import EmbeddedVocabulary

SOURCES = ["the cat sat on the mat all day long", "a dog ran", "birds sing in the old tree at dawn"]
TARGETS = ["the cat sat .", "a dog ran fast today .", "birds sing ."]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2s")
    for stem in ("train", "val"):
        (root / f"{stem}.source").write_text("".join(s + "\n" for s in SOURCES))
        (root / f"{stem}.target").write_text("".join(t + "\n" for t in TARGETS))
    vocab = EmbeddedVocabulary()
    name = seq2seq_tasks.register_seq2seq_task("xsum", vocabulary=vocab, src_length=10, tgt_length=6,
                                               data_dir=str(root), prefix="test_s2s", overwrite=True)
    yield name, vocab
    seqio.TaskRegistry.remove(name)


def test_rows_are_the_official_layout(task):
    name, vocab = task
    ct = vocab.command_tokens
    [batch] = list(seq2seq_tasks.seq2seq_batches(name, "validation", batch_size=4, shuffle=False))
    assert batch["example_id"].tolist() == [0, 1, 2, -1] and batch["sep"].tolist() == [10] * 4
    for i, (source, target) in enumerate(zip(SOURCES, TARGETS)):
        expected = seq2seq.summary_row(source, target, vocab, 10, 6)
        for key in seq2seq_tasks.ROW_KEYS:
            np.testing.assert_array_equal(batch[key][i], expected[key], err_msg=key)
    # Spelled out for the short example: [CLS] [M] " Content:" " a dog ran", padded inside Part A.
    row = {k: batch[k][1].tolist() for k in seq2seq_tasks.ROW_KEYS}
    source = [ct.cls, seq2seq.blank_id(ct), *vocab.encode(" Content:"), *vocab.encode(" a dog ran")]
    target = (vocab.encode(" a dog ran fast today .") + [ct.eop])[:6]  # cut to tgt_length, [eop] included
    assert row["tokens"] == source + [ct.pad] * (10 - len(source)) + [ct.sop] + target[:-1]
    assert row["targets"] == [0] * 10 + target and row["loss_mask"] == [0] * 10 + [1] * 6
    assert row["position_ids"] == list(range(10)) + [1] * 6  # the blank sits at index 1
    assert row["block_position_ids"] == [0] * 10 + [1, 2, 3, 4, 5, 6]
    # The padding row has no loss.
    assert batch["loss_mask"][3].sum() == 0 and (batch["tokens"][3] == ct.pad).all()


def test_training_batches_shuffle_per_seed_and_drop_the_remainder(task):
    name, _ = task
    batches = list(seq2seq_tasks.seq2seq_batches(name, "train", batch_size=2, shuffle=True, seed=1,
                                                 drop_remainder=True))
    assert len(batches) == 1 and len(set(batches[0]["example_id"].tolist())) == 2
    shards = [list(seq2seq_tasks.seq2seq_batches(name, "train", batch_size=1, shuffle=True, seed=1,
                                                 shard=seqio.ShardInfo(i, 2))) for i in range(2)]
    assert [len(s) for s in shards] == [2, 2]  # the same count on every host (one padding batch)
    ids = [int(b["example_id"][0]) for s in shards for b in s]
    assert sorted(i for i in ids if i >= 0) == [0, 1, 2]


def test_evaluation_scores_the_generated_texts_with_rouge(task, tmp_path):
    name, vocab = task
    ct = vocab.command_tokens
    wanted = {0: " the cat sat on the mat today .", 1: " a dog ran", 2: " birds sing in the old tree ."}

    def generate(batches):
        out = {}
        for batch in batches:
            assert batch["tokens"].shape == (2, 16)
            for eid in batch["example_id"]:
                if eid >= 0:
                    out[int(eid)] = vocab.encode(wanted[int(eid)])
        return out

    scores = seq2seq_evaluation.evaluate(name, "validation", generate, output_dir=str(tmp_path), batch_size=2)
    references = [vocab.decode(vocab.encode(t)) for t in TARGETS]  # upstream's ref: the tokenizer's round trip
    predictions = [vocab.decode(vocab.encode(wanted[i])) for i in range(3)]
    assert scores == pytest.approx(text_metrics.rouge(references, predictions, dataset="cnn_dm_org"))
    assert 0 < scores["rougeL"] < 100
    lines = [json.loads(x) for x in (tmp_path / f"{name}_validation_predictions.jsonl").read_text().splitlines()]
    assert [(r["example_id"], r["reference"]) for r in lines] == list(enumerate(references))
    assert lines[1]["prediction"] == predictions[1]
    with pytest.raises(ValueError, match=r"no text generated for 1 example ids \(first: \[2\]\)"):
        seq2seq_evaluation.evaluate(name, "validation", lambda b: {0: [5], 1: [5]}, batch_size=2)
    assert ct.eop not in vocab.encode(wanted[0])


def test_rouge_dataset_and_metrics_follow_upstream():
    class Bert:
        kind = "bert"

    assert seq2seq_tasks.rouge_dataset("gigaword", Bert()) == "cnn_dm"  # the BERT check comes first upstream
    assert seq2seq_tasks.rouge_dataset("gigaword", EmbeddedVocabulary()) == "gigaword"
    assert seq2seq_tasks.rouge_dataset("xsum", EmbeddedVocabulary()) == "cnn_dm_org"
    [bleu, rouge] = seq2seq_tasks.metric_fns("squad_qg", EmbeddedVocabulary())
    assert bleu(["a b c d e"], ["a b c d e"]) == {"bleu": pytest.approx(100.0)}
    with pytest.raises(ValueError, match="unknown seq2seq task 'cnn'"):
        seq2seq_tasks.register_seq2seq_task("cnn", vocabulary=EmbeddedVocabulary(), src_length=10, tgt_length=4)
