"""SuperGLUE cloze tasks in seqio: one Task per (task, pattern), with metrics.

:func:`register_superglue_tasks` registers, for each SuperGLUE task,
``{prefix}_{task}`` (the official script's pattern, spec 4.3) and
``{prefix}_{task}_pattern{k}`` for every pattern id ``k`` (spec 4.2); task names are
lower case (``glm_superglue_rte``, ``glm_superglue_rte_pattern4``). Importing
``tasks`` registers the ``glm_superglue_*`` tasks over TFDS ``super_glue`` with the
embedded vocabulary; nothing is read until a dataset is requested.

Pipeline of each task: :class:`~glm_jax.data.superglue.sources.SuperGLUESource` (raw
examples with their index, guid, candidates, answers, group, label) -> one
preprocessor that tokenises in Python (``tf.numpy_function`` around
:func:`~glm_jax.data.superglue.inputs.encode_example`: pieces tokenised separately,
truncation of the longest shortenable part). Task features after it: the raw
fields above plus

* single-token tasks: ``tokens``, ``position_ids``, ``block_position_ids`` int32
  ``[L]``; ``sep``, ``mask_position`` ``[]``; ``choice_ids`` ``[K]``;
* multi-token tasks: the same with a leading candidate axis ``[c, L]`` / ``[c]``,
  plus ``targets``, ``loss_mask`` ``[c, L]`` and ``answer_lengths`` ``[c]``;
* ``label`` int32 ``[1]``: :func:`batch_label` (label index, or gold candidate for
  multi-token tasks; -1 unknown); seqio's evaluator wants a sequence target.

The seqio output features are ``tokens`` (the GLM vocabulary) and ``label`` (a
pass-through vocabulary, so a prediction "decodes" to the chosen index). The
postprocess maps a choice index (or the gold index) to what the task's metric
compares: the index (BoolQ, CB, RTE, WiC, COPA), WSC ``True`` iff the index is 0
(the gold referent is candidate 0), MultiRC ``{"group", "label"}`` targets, and
ReCoRD the candidate entity string against ``{"answers": [...]}``.
:mod:`glm_jax.data.superglue.converter` turns the task features into fixed-shape batches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from glm_jax.data.superglue import inputs, metrics, patterns
from glm_jax.data.superglue.readers import LABELS, TASKS, Example
from glm_jax.data.superglue.sources import JsonlLoader, SuperGLUESource, TfdsLoader, example_from_json
from glm_jax.data.embedded_vocab import EmbeddedVocabulary

DEFAULT_PREFIX = "glm_superglue"

SINGLE_TOKEN_KEYS = ("tokens", "position_ids", "block_position_ids", "sep", "mask_position", "choice_ids")
MULTI_TOKEN_KEYS = ("tokens", "position_ids", "block_position_ids", "targets", "loss_mask", "sep",
                    "mask_position", "answer_lengths")
_SEQUENCE_KEYS = {"tokens", "position_ids", "block_position_ids", "targets", "loss_mask"}


@dataclasses.dataclass(frozen=True)
class ClozeTaskInfo:
    """What the training side needs to know about a registered cloze task.

    Attributes:
      name: the registered seqio task name.
      task: the official task name (``"RTE"``); ``superglue_task`` is it in lower case.
      pattern_id: the pattern (spec 4.2).
      multi_token: one row per candidate (COPA, WSC, ReCoRD) rather than verbalizer logits.
      num_labels: the verbalizer size of single-token tasks (None for multi-token ones).
      max_seq_length: ``L`` of every row.
      vocabulary: the tokenizer (``.command_tokens`` gives pad/sop/eop ids).
      source: the task's data source (examples per split).
    """

    name: str
    task: str
    superglue_task: str
    pattern_id: int
    multi_token: bool
    num_labels: Optional[int]
    max_seq_length: int
    vocabulary: Any = dataclasses.field(repr=False, compare=False)
    source: SuperGLUESource = dataclasses.field(repr=False, compare=False)

    def examples(self, split: str) -> list[Example]:
        return self.source.examples(split)

    def num_examples(self, split: str) -> int:
        """Examples (batch rows) in the split, after mirroring/expansion."""
        return self.source.num_input_examples(split)

    def max_candidates(self, split: str) -> int:
        """The most candidates of any example in the split (1 for single-token tasks)."""
        if not self.multi_token:
            return 1
        return max((len(e.candidates) for e in self.examples(split)), default=1)

    def verbalizer_ids(self) -> np.ndarray:
        """``[K]`` label-word token ids (single-token tasks)."""
        return inputs.verbalizer_ids(self.task, self.pattern_id, self.vocabulary)


_INFO: dict[str, ClozeTaskInfo] = {}


def task_info(name: str) -> ClozeTaskInfo:
    """The :class:`ClozeTaskInfo` of a task registered by :func:`register_superglue_tasks`."""
    if name not in _INFO:
        known = sorted(_INFO)
        raise ValueError(f"{name!r} is not a registered SuperGLUE cloze task; registered: {known[:12]}"
                         + (f" ... ({len(known)} in all)" if len(known) > 12 else ""))
    return _INFO[name]


def task_name(task: str, pattern_id: Optional[int] = None, prefix: str = DEFAULT_PREFIX) -> str:
    """``glm_superglue_rte`` (default pattern) or ``glm_superglue_rte_pattern4``."""
    base = f"{prefix}_{task.lower()}"
    return base if pattern_id is None else f"{base}_pattern{pattern_id}"


def _official_name(task: str) -> str:
    by_lower = {t.lower(): t for t in TASKS}
    if task.lower() not in by_lower:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {TASKS}")
    return by_lower[task.lower()]


# --------------------------------------------------------------------------- preprocessing


def encode_preprocessor(task: str, pattern_id: int, vocabulary: Any, max_seq_length: int):
    """A seqio preprocessor adding the token layout of each example (module docstring).

    Tokenisation runs in Python (``tf.numpy_function``): each pattern piece is
    encoded separately, as the official code does, which TF ops cannot express.
    """
    spec = patterns.get_task(task)
    keys = MULTI_TOKEN_KEYS if spec.multi_token else SINGLE_TOKEN_KEYS
    num_labels = None if spec.multi_token else len(spec.verbalizers(pattern_id))

    def shape(key: str) -> list[Optional[int]]:
        if key == "choice_ids":
            return [num_labels]
        if key == "label":
            return [1]
        if spec.multi_token:
            return [None, max_seq_length] if key in _SEQUENCE_KEYS else [None]
        return [max_seq_length] if key in _SEQUENCE_KEYS else []

    def encode(example_json: bytes) -> list[np.ndarray]:
        example = example_from_json(example_json)
        out = inputs.encode_example(task, example, vocabulary, pattern_id=pattern_id, max_seq_length=max_seq_length)
        return [np.asarray(out[k], np.int32) for k in keys] + [np.asarray([batch_label(task, example)], np.int32)]

    def preprocess(ds: tf.data.Dataset) -> tf.data.Dataset:
        def add_layout(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            values = tf.numpy_function(encode, [ex["example"]], [tf.int32] * (len(keys) + 1), stateful=False)
            out = dict(ex)
            for key, value in zip((*keys, "label"), values):
                value.set_shape(shape(key))
                out[key] = value
            return out

        return ds.map(add_layout)

    return preprocess


def batch_label(task: str, example: Example) -> int:
    """The ``label`` of the batches: the gold label index (single-token tasks) or the
    gold candidate (multi-token tasks), -1 when unknown.

    WSC's examples carry True/False (is ``span1`` the referent?); the candidates
    start with ``span1``, so True is candidate 0 and False has no gold candidate
    (-1). Train keeps positives only, so its labels are all 0 (spec 4.1).
    """
    if example.label is None:
        return -1
    if task == "WSC":
        return 0 if LABELS["WSC"][example.label] is True else -1
    return example.label


# --------------------------------------------------------------------------- postprocessing


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess(task: str, value: Any, example: Optional[Mapping[str, Any]] = None, is_target: bool = False) -> Any:
    """A decoded ``label`` (``[gold index]``) or prediction (``[choice index]``) to the
    value the task's metric compares; ``example`` is the task example (numpy)."""
    index = int(np.asarray(value).reshape(-1)[0])
    if task == "WSC":
        # True iff span1 (candidate 0) is, or is predicted to be, the referent;
        # gold False examples have label -1 (batch_label).
        return index == 0
    if task == "MultiRC":
        if example is None:
            raise ValueError("MultiRC postprocess needs the example (its question group)")
        return {"group": _str(example["group"]), "label": index} if is_target else index
    if task == "ReCoRD":
        if example is None:
            raise ValueError("ReCoRD postprocess needs the example (its candidates and answers)")
        if is_target:
            return {"answers": [_str(a) for a in example["answers"]]}
        candidates = example["candidates"]
        if not 0 <= index < len(candidates):
            raise ValueError(f"ReCoRD {_str(example['guid'])}: choice {index} outside its {len(candidates)} "
                             "candidates")
        return _str(candidates[index])
    return index


# --------------------------------------------------------------------------- registration


def register_superglue_tasks(
    *,
    vocabulary: Any = None,
    data_dir: Optional[str] = None,
    prefix: str = DEFAULT_PREFIX,
    tasks: Sequence[str] = TASKS,
    pattern_ids: Union[None, Sequence[int], Mapping[str, Sequence[int]]] = None,
    tfds_data_dir: Optional[str] = None,
    max_seq_length: Optional[int] = None,
    overwrite: bool = False,
) -> list[str]:
    """Register the cloze tasks; returns the registered names.

    Args:
      vocabulary: a GLM vocabulary (``.encode`` and ``.command_tokens``); default the
        embedded one (``glm_jax.data.embedded_vocab.EmbeddedVocabulary``).
      data_dir: a folder in the official JSONL layout (``BoolQ/train.jsonl``,
        ``val.jsonl``, ``test.jsonl``, ...); None: TFDS ``super_glue/<config>``.
      prefix: task names are ``{prefix}_{task}[_pattern{k}]``.
      tasks: official task names (any case).
      pattern_ids: which ``_pattern{k}`` variants: None for every id; a list (each
        task gets those of its ids in the list); or ``{task: ids}``. The default
        pattern's ``{prefix}_{task}`` is always registered.
      tfds_data_dir: where TFDS datasets are prepared (TFDS source only).
      max_seq_length: ``L`` of every task; None: each task's (spec 4.3).
      overwrite: replace tasks of the same names (else seqio refuses duplicates).
    """
    if vocabulary is None:
        vocabulary = EmbeddedVocabulary()
    official = [_official_name(t) for t in tasks]
    if isinstance(pattern_ids, Sequence):
        wanted = set(pattern_ids)
        unused = wanted - {p for t in official for p in patterns.get_task(t).pattern_ids}
        if unused:
            raise ValueError(f"pattern ids {sorted(unused)} exist in none of the tasks {official}")
    elif isinstance(pattern_ids, Mapping):
        pattern_ids = {_official_name(t): ids for t, ids in pattern_ids.items()}
    plan = []  # everything is checked before anything is registered
    for task in official:
        spec = patterns.get_task(task)
        if pattern_ids is None:
            ids = list(spec.pattern_ids)
        elif isinstance(pattern_ids, Mapping):
            ids = list(pattern_ids.get(task, spec.pattern_ids))
            for pid in ids:
                spec.check_pattern(pid)
        else:
            ids = [p for p in pattern_ids if p in spec.pattern_ids]
        variants = [(task_name(task, None, prefix), spec.default_pattern)]
        variants += [(task_name(task, pid, prefix), pid) for pid in ids]
        for name, _ in variants:
            if name in seqio.TaskRegistry.names() and not overwrite:
                raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
        plan.append((task, variants))
    names: list[str] = []
    for task, variants in plan:
        loader = JsonlLoader(data_dir, task) if data_dir is not None else TfdsLoader(task, tfds_data_dir)
        source = SuperGLUESource(task, loader)  # shared by the task's patterns: read once
        for name, pid in variants:
            length = max_seq_length or patterns.get_task(task).max_seq_length
            _add(name, task, pid, vocabulary, source, length, overwrite)
            names.append(name)
    return names


def _add(name: str, task: str, pattern_id: int, vocabulary: Any, source: SuperGLUESource, max_seq_length: int,
         overwrite: bool) -> None:
    spec = patterns.get_task(task)
    if overwrite:
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[encode_preprocessor(task, pattern_id, vocabulary, max_seq_length)],
        output_features={
            "tokens": seqio.Feature(vocabulary, add_eos=False, rank=2 if spec.multi_token else 1),
            "label": seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False),
        },
        postprocess_fn=functools.partial(postprocess, task),
        metric_fns=[metrics.METRIC_FNS[task]],
        shuffle_buffer_size=None,  # the source shuffles (a seeded permutation of the split)
    )
    _INFO[name] = ClozeTaskInfo(
        name=name, task=task, superglue_task=task.lower(), pattern_id=pattern_id, multi_token=spec.multi_token,
        num_labels=None if spec.multi_token else len(spec.verbalizers(pattern_id)),
        max_seq_length=max_seq_length, vocabulary=vocabulary, source=source)


def unregister(names: Sequence[str]) -> None:
    """Remove tasks registered by :func:`register_superglue_tasks` (e.g. after a test)."""
    for name in names:
        seqio.TaskRegistry.remove(name)
        _INFO.pop(name, None)
