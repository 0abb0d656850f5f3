"""Registering the pretraining tasks for a user's corpus, and what they produce."""

import json

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the embedded tasks)
from tasks import corpus, pretrain, sources
from tasks.feature_converter import GLMFeatureConverter

OBJECTIVES = ("token", "sentence", "document", "multitask", "doc", "sent")


def test_embedded_tasks_are_registered():
    names = set(seqio.TaskRegistry.names())
    assert {pretrain.task_name(o, "embedded") for o in OBJECTIVES} <= names


@pytest.fixture
def user_tasks(tmp_path, corpus_dir):
    docs = [json.loads(line)["text"] for line in (corpus_dir / "train.jsonl").read_text().splitlines()[:40]]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    names = pretrain.register_pretraining_tasks(
        "mine", sources.JsonLinesSource({"train": str(path)}), corpus.embedded_vocabulary(corpus_dir)
    )
    yield names
    for name in names:
        seqio.TaskRegistry.remove(name)


def test_one_call_registers_every_objective_for_a_source(user_tasks):
    assert user_tasks == [pretrain.task_name(o, "mine") for o in OBJECTIVES]


@pytest.mark.parametrize("objective", ["token", "multitask"])
def test_user_task_yields_model_features(user_tasks, objective, corpus_dir):
    vocab = corpus.embedded_vocabulary(corpus_dir)
    task = seqio.get_mixture_or_task(pretrain.task_name(objective, "mine"))
    ds = task.get_dataset({"tokens": 64, "targets": 64}, split="train", shuffle=False, seed=3)
    rows = list(GLMFeatureConverter(command_tokens=vocab.command_tokens)(ds, {"tokens": 64}).take(20).as_numpy_iterator())
    assert len(rows) == 20
    for row in rows:
        sep = int(row["sep"])
        assert row["tokens"].shape == (64,) and row["tokens"][0] == vocab.command_tokens.cls
        assert row["loss_mask"][:sep].sum() == 0 and row["loss_mask"][sep:].sum() > 0
        # Part B opens with [sop] at a blank's position with block id 1.
        assert row["tokens"][sep] == vocab.command_tokens.sop and row["block_position_ids"][sep] == 1
        assert row["tokens"][row["position_ids"][sep]] in vocab.command_tokens.mask_ids()
    # The same seed gives the same examples.
    again = list(GLMFeatureConverter(command_tokens=vocab.command_tokens)(
        task.get_dataset({"tokens": 64, "targets": 64}, split="train", shuffle=False, seed=3), {"tokens": 64}
    ).take(20).as_numpy_iterator())
    for a, b in zip(rows, again):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_a_bare_file_pattern_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"\{'train': 'wiki-\*.jsonl'\}"):
        sources.JsonLinesSource("wiki-*.jsonl")


def test_bad_source_name():
    with pytest.raises(ValueError, match="source_name"):
        pretrain.register_pretraining_tasks("my-corpus", sources.EmbeddedCorpusSource())
