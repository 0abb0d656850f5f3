"""SuperGLUE seqio registration: names, task info, labels of the batches, postprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  (registers the default glm_superglue_* tasks)
from glm_jax.data.superglue import metrics, patterns, readers, registry, sources
from glm_jax.data.superglue.readers import Example
from test_superglue_inputs import DATA, FakeVocab, write

PATTERN_COUNTS = {"BoolQ": 6, "CB": 5, "COPA": 2, "MultiRC": 5, "ReCoRD": 1, "RTE": 5, "WiC": 3, "WSC": 3}


def test_default_tasks_are_registered_over_tfds():
    names = set(seqio.TaskRegistry.names())
    for task, count in PATTERN_COUNTS.items():
        base = f"glm_superglue_{task.lower()}"
        assert {base, *(f"{base}_pattern{k}" for k in range(count))} <= names
        info = registry.task_info(base)
        spec = patterns.get_task(task)
        assert (info.task, info.superglue_task, info.pattern_id, info.max_seq_length, info.multi_token) == (
            task, task.lower(), spec.default_pattern, spec.max_seq_length, task in ("COPA", "WSC", "ReCoRD"))
        assert isinstance(info.source, sources.SuperGLUESource)
        assert str(info.source) == f"SuperGLUESource({task}, tfds:super_glue/{sources.TFDS_CONFIGS[task]})"
    assert registry.task_info("glm_superglue_cb_pattern4").num_labels == 3
    assert registry.task_info("glm_superglue_rte").num_labels == 2
    assert registry.task_info("glm_superglue_record").num_labels is None
    task = seqio.get_mixture_or_task("glm_superglue_cb")
    assert task.metric_fns == [metrics.cb_metric] and set(task.output_features) == {"tokens", "label"}
    assert task.splits == ("train", "validation", "test")


def test_custom_registration(tmp_path: Path):
    for task in ("RTE", "WSC"):
        write(tmp_path, task, "train", DATA[task])
    names = registry.register_superglue_tasks(vocabulary=FakeVocab(), data_dir=str(tmp_path), prefix="regtest",
                                              tasks=["rte", "WSC"], pattern_ids=[1, 4], max_seq_length=40)
    try:
        # The default pattern always; the listed ids where the task has them (WSC: 0-2).
        assert names == ["regtest_rte", "regtest_rte_pattern1", "regtest_rte_pattern4", "regtest_wsc",
                         "regtest_wsc_pattern1"]
        info = registry.task_info("regtest_rte_pattern4")
        assert (info.pattern_id, info.max_seq_length, info.num_examples("train")) == (4, 40, 1)
        # One source per task, shared by its patterns: the files are read once.
        assert registry.task_info("regtest_rte").source is info.source
        assert registry.task_info("regtest_wsc").max_candidates("train") == 1
        with pytest.raises(ValueError, match="task .regtest_rte. is already registered"):
            registry.register_superglue_tasks(vocabulary=FakeVocab(), data_dir=str(tmp_path), prefix="regtest",
                                              tasks=["RTE"], pattern_ids=[])
        again = registry.register_superglue_tasks(vocabulary=FakeVocab(), data_dir=str(tmp_path), prefix="regtest",
                                                  tasks=["RTE"], pattern_ids={"rte": [2]}, overwrite=True)
        assert again == ["regtest_rte", "regtest_rte_pattern2"]
    finally:
        registry.unregister(names + ["regtest_rte_pattern2"])
    assert "regtest_rte" not in seqio.TaskRegistry.names()
    with pytest.raises(ValueError, match="'regtest_rte' is not a registered SuperGLUE cloze task"):
        registry.task_info("regtest_rte")


def test_registration_errors():
    with pytest.raises(ValueError, match="unknown SuperGLUE task 'AXb'"):
        registry.register_superglue_tasks(vocabulary=FakeVocab(), tasks=["AXb"])
    with pytest.raises(ValueError, match=r"pattern ids \[7\] exist in none"):
        registry.register_superglue_tasks(vocabulary=FakeVocab(), tasks=["RTE"], pattern_ids=[7])
    with pytest.raises(ValueError, match=r"ReCoRD: pattern id 1 not in \(0,\)"):
        registry.register_superglue_tasks(vocabulary=FakeVocab(), tasks=["RTE", "ReCoRD"],
                                          pattern_ids={"ReCoRD": [1]}, prefix="never")
    # Checked before anything is registered: no half-registered set.
    assert not [n for n in seqio.TaskRegistry.names() if n.startswith("never_")]


def test_batch_labels():
    ex = Example("validation-0", {}, 1)
    # WSC: True (index 1) -> candidate 0 (span1); False -> no gold candidate.
    assert registry.batch_label("WSC", ex) == 0
    assert registry.batch_label("WSC", Example("v", {}, readers.LABELS["WSC"].index(False))) == -1
    assert registry.batch_label("RTE", ex) == 1 and registry.batch_label("COPA", ex) == 1
    assert registry.batch_label("CB", Example("t", {}, None)) == -1


def test_postprocess_maps_choices_to_metric_values():
    record = {"guid": b"validation-7", "candidates": np.array([b"Obama", b"Putin"]),
              "answers": np.array([b"Obama", b"Barack Obama"])}
    assert registry.postprocess("ReCoRD", [1], record) == "Putin"
    assert registry.postprocess("ReCoRD", [0], record, is_target=True) == {"answers": ["Obama", "Barack Obama"]}
    with pytest.raises(ValueError, match="validation-7: choice 2 outside its 2 candidates"):
        registry.postprocess("ReCoRD", [2], record)
    multirc = {"group": b"validation-0-q1"}
    assert registry.postprocess("MultiRC", np.array([1]), multirc, is_target=True) == {
        "group": "validation-0-q1", "label": 1}
    assert registry.postprocess("MultiRC", [0], multirc) == 0
    assert registry.postprocess("WSC", [0]) is True and registry.postprocess("WSC", [2]) is False
    assert registry.postprocess("WSC", [-1], is_target=True) is False
    assert registry.postprocess("CB", [2]) == 2
