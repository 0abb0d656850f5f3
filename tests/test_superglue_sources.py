"""SuperGLUE data sources: TFDS rows map to the same examples as the JSONL files;
order, shuffling and sharding of :class:`SuperGLUESource`.

TFDS is exercised without network: ``tfds.testing.mock_data`` replaces the
builder's reader with rows written here in the TFDS ``super_glue`` feature layout
(field names and ClassLabel ids of ``tensorflow_datasets/text/super_glue.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from glm_jax.data.superglue import readers, sources
from glm_jax.data.superglue.readers import read_split
from test_superglue_inputs import DATA, write

# The DATA records of test_superglue_inputs as TFDS rows. ClassLabel ids follow
# TFDS' label_classes: CB (entailment, contradiction, neutral), RTE (entailment,
# not_entailment), COPA (choice1, choice2), the rest (False, True). MultiRC has one
# row per answer option, ReCoRD one per query with entity and answer strings.
TFDS_ROWS: dict[str, list[dict[str, Any]]] = {
    "BoolQ": [{"question": "is it wet", "passage": "Rain is wet.", "idx": 0, "label": 1}],
    "CB": [{"premise": "It rained.", "hypothesis": "It was wet.", "idx": 0, "label": 0}],
    "RTE": [{"premise": "It rained.", "hypothesis": "It was wet.", "idx": 0, "label": 1}],
    "WiC": [{"word": "bank", "sentence1": "The bank is open.", "sentence2": "A river bank.", "start1": 4,
             "end1": 8, "start2": 8, "end2": 12, "idx": 0, "label": 0}],
    "COPA": [{"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang a long song.",
              "question": "cause", "idx": 0, "label": 0}],
    "WSC": [{"text": "Mark told Pete he won.", "span1_index": 0, "span1_text": "Mark", "span2_index": 3,
             "span2_text": "he", "idx": 0, "label": 1},
            {"text": "Mark told Pete he won.", "span1_index": 2, "span1_text": "Pete", "span2_index": 3,
             "span2_text": "he", "idx": 1, "label": 0}],
    "MultiRC": [{"paragraph": "Tom ran home.", "question": "Who ran?", "answer": "Tom", "label": 1,
                 "idx": {"paragraph": 0, "question": 0, "answer": 0}},
                {"paragraph": "Tom ran home.", "question": "Who ran?", "answer": "Ann", "label": 0,
                 "idx": {"paragraph": 0, "question": 0, "answer": 1}},
                {"paragraph": "Tom ran home.", "question": "Where?", "answer": "home", "label": 1,
                 "idx": {"paragraph": 0, "question": 1, "answer": 2}}],
    "ReCoRD": [{"passage": "Obama met Putin.\n@highlight\nTalks went well", "query": "Later @placeholder spoke.",
                "entities": ["Obama", "Putin"], "answers": ["Obama"], "idx": {"passage": 0, "query": 7}}],
}
CONFIG_TO_TASK = {config: task for task, config in sources.TFDS_CONFIGS.items()}


def _test_rows(task: str) -> list[dict[str, Any]]:
    """TFDS test rows: label -1 (ReCoRD: no answers)."""
    if task == "ReCoRD":
        return [{**row, "answers": []} for row in TFDS_ROWS[task]]
    return [{**row, "label": -1} for row in TFDS_ROWS[task]]


def fake_as_dataset(builder, split, **kwargs):
    task = CONFIG_TO_TASK[builder.builder_config.name]
    rows = _test_rows(task) if str(split) == "test" else TFDS_ROWS[task]
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=builder.info.features.get_tensor_spec())


@pytest.fixture()
def mocked_tfds():
    with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
        yield


@pytest.fixture()
def jsonl_dir(tmp_path: Path) -> Path:
    for task, records in DATA.items():
        for split in readers.SPLIT_FILES:
            write(tmp_path, task, split, records)
    return tmp_path


@pytest.mark.parametrize("split", ["train", "validation"])
def test_tfds_rows_give_the_jsonl_examples(mocked_tfds, jsonl_dir: Path, tmp_path: Path, split: str):
    for task in readers.TASKS:
        from_tfds = sources.TfdsLoader(task, str(tmp_path / "tfds"))(split)
        assert from_tfds == read_split(jsonl_dir, task, split), task
    # The data details went through the shared readers.
    copa = sources.TfdsLoader("COPA", str(tmp_path / "tfds"))(split)
    assert len(copa) == (2 if split == "train" else 1)  # mirrored on train only
    wsc = sources.TfdsLoader("WSC", str(tmp_path / "tfds"))(split)
    assert [e.guid for e in wsc] == (["train-0"] if split == "train" else ["validation-0", "validation-1"])


def test_tfds_test_split_has_no_labels(mocked_tfds, tmp_path: Path):
    for task in readers.TASKS:
        examples = sources.TfdsLoader(task, str(tmp_path))("test")
        assert examples and all(e.label is None for e in examples), task
    (record,) = sources.TfdsLoader("ReCoRD", str(tmp_path))("test")
    assert (record.candidates, record.answers) == (("Obama", "Putin"), ())


def test_tfds_record_mapping_by_hand():
    # CB label 1 is TFDS' "contradiction"; ReCoRD entities get their first span.
    cb = sources.tfds_to_record("CB", {**TFDS_ROWS["CB"][0], "label": np.int64(1), "premise": b"P."}, True)
    assert cb == {"idx": 0, "premise": "P.", "hypothesis": "It was wet.", "label": "contradiction"}
    record = sources.tfds_to_record("ReCoRD", TFDS_ROWS["ReCoRD"][0], True)
    assert record["passage"]["entities"] == [{"start": 0, "end": 4}, {"start": 10, "end": 14}]
    assert record["qas"] == [{"query": "Later @placeholder spoke.", "idx": 7, "answers": [{"text": "Obama"}]}]
    wsc = sources.tfds_to_record("WSC", TFDS_ROWS["WSC"][1], True)
    assert wsc["target"] == {"span1_index": 2, "span1_text": "Pete", "span2_index": 3, "span2_text": "he"}
    assert wsc["label"] is False
    with pytest.raises(readers.SuperGLUEFormatError, match="'Lenin' does not occur"):
        sources.tfds_to_record("ReCoRD", {**TFDS_ROWS["ReCoRD"][0], "entities": ["Lenin"]}, True)
    with pytest.raises(readers.SuperGLUEFormatError, match="RTE: TFDS label 2"):
        sources.tfds_to_record("RTE", {**TFDS_ROWS["RTE"][0], "label": 2}, True)


def test_bad_tfds_row_names_the_row_and_field(mocked_tfds, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(TFDS_ROWS, "WSC", [{**TFDS_ROWS["WSC"][0], "span2_index": 40}])
    with pytest.raises(readers.SuperGLUEFormatError,
                       match=r"TFDS super_glue/wsc validation row 0: field 'target\.span2_index': 40 is outside"):
        sources.TfdsLoader("WSC", str(tmp_path))("validation")


def test_unprepared_tfds_says_what_to_do(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"TFDS super_glue/rte is not prepared in .*data_dir=\.\.\."):
        sources.TfdsLoader("RTE", str(tmp_path))("train")


# --------------------------------------------------------------------------- SuperGLUESource


@pytest.fixture()
def rte_source(tmp_path: Path) -> sources.SuperGLUESource:
    records = [{**DATA["RTE"][0], "idx": i, "premise": f"It rained {i} times."} for i in range(7)]
    write(tmp_path, "RTE", "train", records)
    return sources.SuperGLUESource("RTE", sources.JsonlLoader(tmp_path, "RTE"))


def _indices(ds: tf.data.Dataset) -> list[int]:
    return [int(ex["index"]) for ex in ds.as_numpy_iterator()]


def test_source_order_shuffle_and_shards(rte_source: sources.SuperGLUESource):
    assert _indices(rte_source.get_dataset("train", shuffle=False)) == list(range(7))
    shuffled = _indices(rte_source.get_dataset("train", shuffle=True, seed=3))
    assert shuffled == _indices(rte_source.get_dataset("train", shuffle=True, seed=3))
    assert sorted(shuffled) == list(range(7)) and shuffled != list(range(7))
    assert shuffled != _indices(rte_source.get_dataset("train", shuffle=True, seed=4))
    # Shards take every n-th position of the (shared) order: disjoint, covering.
    parts = [_indices(rte_source.get_dataset("train", shuffle=True, seed=3, shard_info=seqio.ShardInfo(i, 3)))
             for i in range(3)]
    assert parts == [shuffled[0::3], shuffled[1::3], shuffled[2::3]]
    with pytest.raises(ValueError, match="need 0 <= index < num_shards"):
        rte_source.get_dataset("train", shard_info=seqio.ShardInfo(3, 3))


def test_source_features_keep_the_raw_example(jsonl_dir: Path):
    source = sources.SuperGLUESource("ReCoRD", sources.JsonlLoader(jsonl_dir, "ReCoRD"))
    (ex,) = source.get_dataset("validation", shuffle=False).as_numpy_iterator()
    assert (ex["guid"], ex["group"], ex["label"], int(ex["index"])) == (b"validation-7", b"validation-7", 0, 0)
    assert ex["candidates"].tolist() == [b"Obama", b"Putin"] and ex["answers"].tolist() == [b"Obama"]
    assert sources.example_from_json(ex["example"]) == source.examples("validation")[0]
    rte = sources.SuperGLUESource("RTE", sources.JsonlLoader(jsonl_dir, "RTE"))
    (ex,) = rte.get_dataset("test", shuffle=False).as_numpy_iterator()
    assert (ex["label"], ex["group"], ex["candidates"].shape) == (0, b"", (0,))  # DATA's test file has labels
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        rte.examples("dev")
