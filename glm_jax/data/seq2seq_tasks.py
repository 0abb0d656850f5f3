"""Conditional-generation tasks in seqio (spec 4.4): registration, batches, evaluation.

:func:`register_seq2seq_task` registers one task of :data:`TASKS` over an official
folder or TFDS (glm_jax/data/seq2seq_sources.py) with a vocabulary and the
task's ``src_length`` / ``tgt_length``. Its preprocessor tokenises in Python as
upstream does (glm_jax/data/seq2seq.py) and adds, per example::

    tokens, targets, loss_mask, position_ids, block_position_ids   int32 [row_length]
    targets_pretokenized   string  the reference the metrics compare with

``row_length`` is ``src_length + tgt_length``, and for Yahoo infilling upstream's
``src_length + int(src_length * mask_ratio)`` (glm_jax/data/blank_infilling.py,
whose masks are drawn from the example's ``seed``). The training row doubles as
the evaluation input: decoding reads Part A (``tokens[:src_length]``) and its
blanks. The reference is the target as the tokenizer gives it back
(``decode(encode(target))``, upstream's ``meta["ref"]``: lower-cased by the BERT
vocabulary); for Yahoo the text as read, as upstream. For question generation
upstream's in-loop metric compares with the answer's round trip, which reads as a
slip (the question is what is generated); glm-jax compares with the question.

Metrics (``seqio.Evaluator``; glm_jax/text_metrics.py): ROUGE-1/2/L with the official
post-processing for the summarisation tasks (its ``dataset`` as upstream chooses
it: ``cnn_dm`` for BERT-vocabulary models, else ``gigaword`` for Gigaword and
``cnn_dm_org`` for the others); BLEU-4 then ROUGE for question generation; BLEU-4
of the filled texts (after upstream's ``blanklm_fix_tokenization``) for Yahoo,
on whitespace tokens (``tokenize="none"``) as ``multi-bleu.perl`` counts them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from glm_jax import text_metrics
from glm_jax.data import blank_infilling, seq2seq
from glm_jax.data.seq2seq_sources import FolderLoader, Seq2SeqSource, TfdsLoader
from glm_jax.data.split_data import fixed_batches

FeatureSpec = seqio.FeatureConverter.FeatureSpec
ROW_KEYS = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")


@dataclasses.dataclass(frozen=True)
class Seq2SeqTaskSpec:
    """What differs between the tasks on the data side.

    Attributes:
      kind: ``summary`` (``[CLS] [M] " Content:" article``), ``question``
        (``[CLS] passage " Question:" [M] " Answer: " answer``) or ``blank`` (a text
        with several ``[MASK]`` blanks, filled left to right).
      folder_dataset: how the official folder is read (seq2seq_files' detokeniser,
        or ``squad`` for the SQuAD JSON files).
      metrics: ``rouge`` and/or ``bleu``, the first one picks the best epoch by default.
    """

    kind: str
    folder_dataset: str
    metrics: tuple[str, ...]


TASKS: Mapping[str, Seq2SeqTaskSpec] = {
    "cnn_dm": Seq2SeqTaskSpec("summary", "cnn_dm", ("rouge",)),
    "cnn_dm_org": Seq2SeqTaskSpec("summary", "cnn_dm_org", ("rouge",)),
    "xsum": Seq2SeqTaskSpec("summary", "xsum", ("rouge",)),
    "gigaword": Seq2SeqTaskSpec("summary", "gigaword", ("rouge",)),
    "squad_qg": Seq2SeqTaskSpec("question", "squad", ("bleu", "rouge")),
    "yahoo_blank": Seq2SeqTaskSpec("blank", "blank", ("bleu",)),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown seq2seq task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def rouge_dataset(task: str, vocabulary: Any) -> str:
    """The ``dataset`` of the ROUGE post-processing, chosen as upstream does."""
    if getattr(vocabulary, "kind", None) == "bert":
        return "cnn_dm"
    return "gigaword" if task == "gigaword" else "cnn_dm_org"


@dataclasses.dataclass(frozen=True)
class Seq2SeqTaskInfo:
    """A registered task: what batching and decoding need to know."""

    name: str
    task: str
    src_length: int
    tgt_length: int
    vocabulary: Any
    source: Seq2SeqSource
    mask_ratio: float = 0.0  # yahoo_blank only

    @property
    def kind(self) -> str:
        return TASKS[self.task].kind

    @property
    def row_length(self) -> int:
        if self.kind == "blank":
            return blank_infilling.row_length(self.src_length, self.mask_ratio)
        return self.src_length + self.tgt_length

    def num_examples(self, split: str) -> int:
        return len(self.source.examples(split))


_INFO: dict[str, Seq2SeqTaskInfo] = {}


def task_info(name: str) -> Seq2SeqTaskInfo:
    if name not in _INFO:
        raise ValueError(f"{name!r} is not a registered seq2seq task")
    return _INFO[name]


def encode_example(task: str, source: str, target: str, answer: str, vocabulary: Any, src_length: int,
                   tgt_length: int, mask_ratio: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The training row of one example (glm_jax/data/seq2seq.py, blank_infilling.py).
    A Yahoo source with ``[MASK]`` markers (the test files) is used as given; any
    other is masked with ``random.Random(seed)``."""
    if TASKS[task].kind == "blank":
        if blank_infilling.MASK_TEXT in source:
            return blank_infilling.blank_row(source, None, vocabulary, src_length, mask_ratio)
        masked, spans = blank_infilling.mask_words(source, mask_ratio, random.Random(seed))
        return blank_infilling.blank_row(masked, spans, vocabulary, src_length, mask_ratio)
    if TASKS[task].kind == "question":
        return seq2seq.question_generation_row(source, answer, target, vocabulary, src_length, tgt_length)
    return seq2seq.summary_row(source, target, vocabulary, src_length, tgt_length)


def encode_preprocessor(task: str, vocabulary: Any, src_length: int, tgt_length: int, mask_ratio: float = 0.0):
    """A seqio preprocessor adding the row and the reference (module docstring)."""
    blank = TASKS[task].kind == "blank"
    length = blank_infilling.row_length(src_length, mask_ratio) if blank else src_length + tgt_length

    def encode(source: bytes, target: bytes, answer: bytes, seed: np.int64) -> list[Any]:
        target_text = target.decode("utf-8")
        row = encode_example(task, source.decode("utf-8"), target_text, answer.decode("utf-8"), vocabulary,
                             src_length, tgt_length, mask_ratio, int(seed))
        reference = target_text if blank else vocabulary.decode(vocabulary.encode(target_text))
        return [row[k] for k in ROW_KEYS] + [np.asarray(reference.encode("utf-8"), dtype=object)]

    def preprocess(ds: tf.data.Dataset) -> tf.data.Dataset:
        def add_row(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            values = tf.numpy_function(encode, [ex["source"], ex["target"], ex["answer"], ex["seed"]],
                                       [tf.int32] * len(ROW_KEYS) + [tf.string], stateful=False)
            out = dict(ex)
            for key, value in zip(ROW_KEYS, values):
                out[key] = tf.ensure_shape(value, [length])
            out["targets_pretokenized"] = tf.ensure_shape(values[-1], [])
            return out

        return ds.map(add_row)

    return preprocess


class GeneratedTextVocabulary(seqio.Vocabulary):
    """The vocabulary seqio decodes generated ids with: ``vocabulary``, after dropping
    the ``-1`` that pad the ids to one length (seqio stacks the model's outputs into
    one array, and no real id can pad them: id 0 is a word in the GPT-2 vocabulary)."""

    def __init__(self, vocabulary: Any):
        self.vocabulary = vocabulary
        super().__init__()

    def decode(self, ids) -> str:
        return self.vocabulary.decode([int(i) for i in ids if int(i) >= 0])

    @property
    def eos_id(self) -> Optional[int]:
        return None

    @property
    def unk_id(self) -> Optional[int]:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self.vocabulary.vocab_size

    def _encode(self, s):
        return self.vocabulary.encode(s)

    def _decode(self, ids):
        return self.decode(ids)

    def _encode_tf(self, s):
        return self.vocabulary.encode_tf(s)

    def _decode_tf(self, ids):
        raise NotImplementedError("generated ids are decoded in Python")

    def __eq__(self, other) -> bool:
        return isinstance(other, GeneratedTextVocabulary) and other.vocabulary == self.vocabulary

    def __hash__(self) -> int:
        return hash(("generated", self.vocabulary))


def metric_fns(task: str, vocabulary: Any) -> list[Callable]:
    bleu_tokens = "none" if TASKS[task].kind == "blank" else "13a"
    fns = {"rouge": text_metrics.seqio_metric(text_metrics.rouge, dataset=rouge_dataset(task, vocabulary)),
           "bleu": text_metrics.seqio_metric(text_metrics.bleu, tokenize=bleu_tokens)}
    return [fns[m] for m in TASKS[task].metrics]


def postprocess(task: str, text: str, example: Any = None, is_target: bool = False) -> str:
    """Yahoo's filled texts get upstream's tokenisation repairs; the rest as decoded."""
    if TASKS[task].kind == "blank" and not is_target:
        return blank_infilling.fix_tokenization(text)
    return text


def register_seq2seq_task(
    task: str, *, vocabulary: Any, src_length: int, tgt_length: int, data_dir: Optional[str] = None,
    tfds_data_dir: Optional[str] = None, prefix: str = "glm_seq2seq", overwrite: bool = False,
    mask_ratio: float = 0.1,
) -> str:
    """Register ``{prefix}_{task}``; returns the name.

    Args:
      task: one of :data:`TASKS`.
      vocabulary: a GLM vocabulary (``encode``, ``decode``, ``command_tokens``).
      src_length, tgt_length: upstream's ``src_seq_length`` / ``tgt_seq_length``.
      data_dir: a folder in the official layout; None: TFDS (prepared).
      overwrite: replace a task of the same name.
      mask_ratio: yahoo_blank only: the fraction of words masked, and which test file is read.
    """
    spec = TASKS[check_task(task)]
    if src_length < 8 or tgt_length < 2:
        raise ValueError(f"{task}: src_length must be >= 8 and tgt_length >= 2, got {src_length} and {tgt_length}")
    name = f"{prefix}_{task}"
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
        seqio.TaskRegistry.remove(name)
    if spec.kind == "blank" and not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"{task}: mask_ratio must be in (0, 1), got {mask_ratio}")
    mask_ratio = mask_ratio if spec.kind == "blank" else 0.0
    loader = (FolderLoader(data_dir, spec.folder_dataset, mask_ratio) if data_dir is not None
              else TfdsLoader(task, tfds_data_dir))
    source = Seq2SeqSource(loader)
    seqio.TaskRegistry.add(
        name, source=source,
        preprocessors=[encode_preprocessor(task, vocabulary, src_length, tgt_length, mask_ratio)],
        output_features={"tokens": seqio.Feature(vocabulary, add_eos=False),
                         "targets": seqio.Feature(GeneratedTextVocabulary(vocabulary), add_eos=False)},
        postprocess_fn=functools.partial(postprocess, task), metric_fns=metric_fns(task, vocabulary),
        shuffle_buffer_size=None,
    )
    _INFO[name] = Seq2SeqTaskInfo(name, task, src_length, tgt_length, vocabulary, source, mask_ratio)
    return name


# --------------------------------------------------------------------------- batches


class Seq2SeqFeatureConverter(seqio.FeatureConverter):
    """Task features -> the model features of a row, ``sep`` (= src_length) and
    ``example_id`` (the example's index in its split)."""

    # seqio checks these against the task's output features.
    TASK_FEATURES = {k: FeatureSpec(dtype=tf.int32) for k in ("tokens", "targets")}

    def __init__(self, info: Seq2SeqTaskInfo):
        self.info = info
        super().__init__(pack=False, apply_length_check=False)

    @property
    def MODEL_FEATURES(self) -> Mapping[str, FeatureSpec]:  # noqa: N802 (seqio's name)
        return {**{k: FeatureSpec(dtype=tf.int32) for k in ROW_KEYS},
                "sep": FeatureSpec(dtype=tf.int32, rank=0), "example_id": FeatureSpec(dtype=tf.int32, rank=0)}

    def task_feature_lengths(self) -> dict[str, int]:
        return dict.fromkeys(self.TASK_FEATURES, self.info.row_length)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        return {**dict.fromkeys(ROW_KEYS, self.info.row_length), "sep": 1, "example_id": 1}

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        sep = tf.constant(self.info.src_length, tf.int32)  # Part A is the padded source
        return ds.map(lambda ex: {**{k: ex[k] for k in ROW_KEYS}, "sep": sep,
                                  "example_id": tf.cast(ex["index"], tf.int32)},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def padding_rows(self, n: int) -> dict[str, np.ndarray]:
        """``n`` padding rows (``example_id`` -1, no loss)."""
        rows = {k: np.zeros([n, self.info.row_length], np.int32) for k in ROW_KEYS}
        rows["tokens"][...] = self.info.vocabulary.command_tokens.pad
        rows["sep"] = np.full([n], self.info.src_length, np.int32)
        rows["example_id"] = np.full([n], -1, np.int32)
        return rows


def seq2seq_batches(task_name: str, split: str, *, batch_size: int, shuffle: bool, seed: int = 0,
                    drop_remainder: bool = False, shard: Optional[seqio.ShardInfo] = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a registered task's split as ``[batch_size, row_length]`` int32
    batches plus ``example_id [batch_size]``; ordering and sharding as
    glm_jax/data/superglue/converter.cloze_batches (the same count on every host)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = task_info(task_name)
    converter = Seq2SeqFeatureConverter(info)
    total, shards = info.num_examples(split), (shard.num_shards if shard else 1)
    num_batches = (total // shards) // batch_size if drop_remainder else math.ceil(math.ceil(total / shards) / batch_size)
    ds = seqio.get_mixture_or_task(task_name).get_dataset(
        sequence_length=None, split=split, shuffle=shuffle, seed=seed, shard_info=shard, num_epochs=1,
        trim_output_features=False)
    yield from fixed_batches(converter(ds, converter.task_feature_lengths()), converter.padding_rows, batch_size,
                             num_batches, drop_remainder)
