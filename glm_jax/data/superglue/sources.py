"""seqio DataSources of SuperGLUE examples: local official JSONL folders or TFDS.

Both give the same :class:`~glm_jax.data.superglue.readers.Example` lists, with the data
handling of the official GLM code (spec 4.2) applied by the readers: COPA train
mirrored, WSC train positives only, ReCoRD train one example per gold answer with
sampled negatives, MultiRC one example per answer option with its question group.

* :class:`JsonlLoader`: ``{data_dir}/{BoolQ,CB,...}/{train,val,test}.jsonl`` through
  :func:`~glm_jax.data.superglue.readers.read_split`.
* :class:`TfdsLoader`: TFDS ``super_glue/<config>`` (prepared in ``tfds_data_dir``;
  nothing is downloaded). Each TFDS example is mapped back to the official JSONL
  record (:func:`tfds_to_record`) and goes through the same per-task readers, so
  validation and data details are shared (ReCoRD's entities are a sorted set in
  both, as officially). WSC uses the ``wsc`` config (the raw release, whose
  off-by-one spans the reader repairs, as the official GLM code does).

:class:`SuperGLUESource` holds one task's examples per split in memory (read on
first use, never at construction) and yields them with their global index in the
split (the ``example_id`` of the batches), in file order or in a seeded
permutation. ``ShardInfo(i, n)`` keeps positions ``i, i + n, ...`` of that order,
so the shards are disjoint and cover the split for any ``n``, and a seeded
shuffle is the same permutation on every host.

Features of each yielded element::

    index        int32  []    position of the example in the split (file order)
    guid         string []    readers.Example.guid
    example      string []    the Example as JSON (what the encode preprocessor reads)
    group        string []    MultiRC question / ReCoRD query id ("" otherwise)
    candidates   string [C]   COPA / WSC / ReCoRD answer candidates (C = 0 otherwise)
    answers      string [A]   ReCoRD gold answers (A = 0 otherwise)
    label        int32  []    readers.Example.label, -1 when unknown
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from glm_jax.data.split_data import SPLITS, InMemorySource
from glm_jax.data.superglue import readers
from glm_jax.data.superglue.readers import TASKS, Example

#: TFDS ``super_glue`` config of each task.
TFDS_CONFIGS: Mapping[str, str] = {
    "BoolQ": "boolq", "CB": "cb", "COPA": "copa", "MultiRC": "multirc", "ReCoRD": "record",
    "RTE": "rte", "WiC": "wic", "WSC": "wsc",
}

#: TFDS ClassLabel names per task, where they differ from (or name) ``readers.LABELS``.
TFDS_LABELS: Mapping[str, tuple[Any, ...]] = {
    "BoolQ": (False, True), "WiC": (False, True), "WSC": (False, True), "MultiRC": (0, 1),
    "CB": ("entailment", "contradiction", "neutral"),
    "RTE": ("entailment", "not_entailment"),
    "COPA": (0, 1),  # TFDS names them choice1 / choice2
}

OUTPUT_SIGNATURE = {
    "index": tf.TensorSpec([], tf.int32),
    "guid": tf.TensorSpec([], tf.string),
    "example": tf.TensorSpec([], tf.string),
    "group": tf.TensorSpec([], tf.string),
    "candidates": tf.TensorSpec([None], tf.string),
    "answers": tf.TensorSpec([None], tf.string),
    "label": tf.TensorSpec([], tf.int32),
}

Loader = Callable[[str], list[Example]]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {TASKS}")
    return task


# --------------------------------------------------------------------------- Example <-> JSON


def example_to_json(example: Example) -> str:
    return json.dumps({"guid": example.guid, "fields": dict(example.fields), "label": example.label,
                       "candidates": list(example.candidates), "group": example.group,
                       "answers": list(example.answers)}, ensure_ascii=False)


def example_from_json(text: Union[str, bytes]) -> Example:
    d = json.loads(text)
    return Example(d["guid"], d["fields"], d["label"], tuple(d["candidates"]), d["group"], tuple(d["answers"]))


# --------------------------------------------------------------------------- loaders


class JsonlLoader:
    """A task's splits from a folder in the official SuperGLUE JSONL layout."""

    def __init__(self, data_dir: Union[str, Path], task: str):
        self.data_dir, self.task = Path(data_dir), check_task(task)

    def __call__(self, split: str) -> list[Example]:
        return readers.read_split(self.data_dir, self.task, split)

    def __str__(self) -> str:
        return f"{self.data_dir / self.task}"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_to_record(task: str, row: Mapping[str, Any], labelled: bool) -> dict[str, Any]:
    """One TFDS ``super_glue/<config>`` example (numpy values, as ``tfds.as_numpy``
    gives them) as the official JSONL record the readers parse.

    MultiRC rows hold one answer option: the record holds that option alone under its
    passage and question (the readers then give it the same guid and group as the
    JSONL file would). ReCoRD entities are strings in TFDS; they get the character
    span of their first occurrence in the passage.
    """
    check_task(task)
    if task == "MultiRC":
        idx = row["idx"]
        answer = {"text": _text(row["answer"]), "idx": int(idx["answer"])}
        if labelled:
            answer["label"] = TFDS_LABELS[task][int(row["label"])]
        question = {"question": _text(row["question"]), "idx": int(idx["question"]), "answers": [answer]}
        return {"idx": int(idx["paragraph"]), "passage": {"text": _text(row["paragraph"]), "questions": [question]}}
    if task == "ReCoRD":
        text = _text(row["passage"])
        entities = []
        for raw in row["entities"]:
            entity = _text(raw)
            start = text.find(entity)
            if start < 0 or not entity:
                raise readers.SuperGLUEFormatError(f"ReCoRD entity {entity!r} does not occur in its passage")
            entities.append({"start": start, "end": start + len(entity) - 1})  # inclusive ends
        qa = {"query": _text(row["query"]), "idx": int(row["idx"]["query"]),
              "answers": [{"text": _text(a)} for a in row["answers"]]}
        return {"idx": int(row["idx"]["passage"]), "passage": {"text": text, "entities": entities}, "qas": [qa]}
    record: dict[str, Any] = {"idx": int(row["idx"])}
    if task == "WSC":
        record["text"] = _text(row["text"])
        record["target"] = {"span1_index": int(row["span1_index"]), "span1_text": _text(row["span1_text"]),
                            "span2_index": int(row["span2_index"]), "span2_text": _text(row["span2_text"])}
    else:
        keys = {"BoolQ": ("question", "passage"), "CB": ("premise", "hypothesis"),
                "RTE": ("premise", "hypothesis"), "WiC": ("word", "sentence1", "sentence2"),
                "COPA": ("premise", "choice1", "choice2", "question")}[task]
        record.update({k: _text(row[k]) for k in keys})
    if labelled:
        label = int(row["label"])
        names = TFDS_LABELS[task]
        if not 0 <= label < len(names):
            raise readers.SuperGLUEFormatError(f"{task}: TFDS label {label} is not one of 0..{len(names) - 1}")
        record["label"] = names[label]
    return record


def examples_from_records(task: str, split: str, records: Iterator[tuple[str, Mapping[str, Any]]],
                          seed: int = readers.RECORD_SEED) -> list[Example]:
    """``(where, JSONL-layout record)`` pairs to examples, through the per-task readers
    (their validation, and COPA mirroring, WSC filtering, ReCoRD negatives)."""
    labelled = split != "test"
    rng = random.Random(seed)
    out: list[Example] = []
    for where, value in records:
        # The readers' record type and per-task functions are shared on purpose:
        # TFDS rows must get exactly the JSONL files' handling.
        record = readers._Record(value, where)  # noqa: SLF001
        if task == "ReCoRD":
            out.extend(readers._record(record, split, labelled, rng))  # noqa: SLF001
        else:
            out.extend(readers._READERS[task](record, split, labelled))  # noqa: SLF001
    return out


class TfdsLoader:
    """A task's splits from TFDS ``super_glue/<config>`` (must be prepared already)."""

    def __init__(self, task: str, tfds_data_dir: Optional[str] = None, tfds_name: Optional[str] = None):
        self.task = check_task(task)
        self.tfds_name = tfds_name or f"super_glue/{TFDS_CONFIGS[task]}"
        self.tfds_data_dir = tfds_data_dir

    def __call__(self, split: str) -> list[Example]:
        # Imported here: TFDS is slow to import and only this loader needs it.
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.tfds_name, data_dir=self.tfds_data_dir)
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except AssertionError as e:  # TFDS' "could not find data" for an unprepared dataset
            raise FileNotFoundError(
                f"TFDS {self.tfds_name} is not prepared in {builder.data_dir!r} ({e}). Prepare it with network "
                "access (tfds.builder(...).download_and_prepare()), pass tfds_data_dir, or use a local folder in "
                "the official JSONL layout (data_dir=...)") from None
        labelled = split != "test"
        rows = ((f"TFDS {self.tfds_name} {split} row {i}", tfds_to_record(self.task, row, labelled))
                for i, row in enumerate(tfds.as_numpy(ds)))
        return examples_from_records(self.task, split, rows)

    def __str__(self) -> str:
        return f"tfds:{self.tfds_name}" + (f"@{self.tfds_data_dir}" if self.tfds_data_dir else "")


# --------------------------------------------------------------------------- DataSource


class SuperGLUESource(InMemorySource):
    """One SuperGLUE task's examples (see the module docstring for features and order).

    Args:
      task: the official task name (``"RTE"``).
      loader: ``split -> list[Example]``; :class:`JsonlLoader` or :class:`TfdsLoader`.
    """

    OUTPUT_SIGNATURE = OUTPUT_SIGNATURE

    def __init__(self, task: str, loader: Loader, splits: Sequence[str] = SPLITS):
        self.task = check_task(task)
        super().__init__(loader, splits)

    def element(self, index: int, example: Example, seed: Optional[int]) -> dict[str, Any]:
        return {
            "index": np.int32(index), "guid": example.guid, "example": example_to_json(example),
            "group": example.group or "", "candidates": np.asarray(example.candidates, dtype=object).reshape(-1),
            "answers": np.asarray(example.answers, dtype=object).reshape(-1),
            "label": np.int32(-1 if example.label is None else example.label),
        }

    def __str__(self) -> str:
        return f"SuperGLUESource({self.task}, {self._loader})"

    __repr__ = __str__

