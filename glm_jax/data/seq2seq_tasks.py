"""Conditional-generation tasks in seqio (spec 4.4): registration, batches, evaluation.

:func:`register_seq2seq_task` registers one task of :data:`TASKS` over an official
folder or TFDS (glm_jax/data/seq2seq_sources.py) with a vocabulary and the
task's ``src_length`` / ``tgt_length``. Its preprocessor tokenises in Python as
upstream does (glm_jax/data/seq2seq.py) and adds, per example::

    tokens, targets, loss_mask, position_ids, block_position_ids   int32 [src_length + tgt_length]
    targets_pretokenized   string  the reference the metrics compare with

The training row doubles as the evaluation input: decoding reads Part A
(``tokens[:src_length]``) and the blank's position (``position_ids[src_length]``).
The reference is the target as the tokenizer gives it back
(``decode(encode(target))``, upstream's ``meta["ref"]``: lower-cased by the BERT
vocabulary). For question generation upstream's in-loop metric compares with the
answer's round trip, which reads as a slip (the question is what is generated);
glm-jax compares with the question.

Metrics (``seqio.Evaluator``; glm_jax/text_metrics.py): ROUGE-1/2/L with the official
post-processing for the summarisation tasks (its ``dataset`` as upstream chooses
it: ``cnn_dm`` for BERT-vocabulary models, else ``gigaword`` for Gigaword and
``cnn_dm_org`` for the others); BLEU-4 then ROUGE for question generation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

from glm_jax import multihost, text_metrics
from glm_jax.data import seq2seq
from glm_jax.data.pipeline import CheckedIterator
from glm_jax.data.seq2seq_sources import FolderLoader, Seq2SeqSource, TfdsLoader

FeatureSpec = seqio.FeatureConverter.FeatureSpec
ROW_KEYS = ("tokens", "targets", "loss_mask", "position_ids", "block_position_ids")


@dataclasses.dataclass(frozen=True)
class Seq2SeqTaskSpec:
    """What differs between the tasks on the data side.

    Attributes:
      kind: ``summary`` (``[CLS] [M] " Content:" article``) or ``question``
        (``[CLS] passage " Question:" [M] " Answer: " answer``).
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

    @property
    def row_length(self) -> int:
        return self.src_length + self.tgt_length

    def num_examples(self, split: str) -> int:
        return len(self.source.examples(split))


_INFO: dict[str, Seq2SeqTaskInfo] = {}


def task_info(name: str) -> Seq2SeqTaskInfo:
    if name not in _INFO:
        raise ValueError(f"{name!r} is not a registered seq2seq task")
    return _INFO[name]


def encode_example(task: str, source: str, target: str, answer: str, vocabulary: Any, src_length: int,
                   tgt_length: int) -> dict[str, np.ndarray]:
    """The training row of one example (glm_jax/data/seq2seq.py)."""
    if TASKS[task].kind == "question":
        return seq2seq.question_generation_row(source, answer, target, vocabulary, src_length, tgt_length)
    return seq2seq.summary_row(source, target, vocabulary, src_length, tgt_length)


def encode_preprocessor(task: str, vocabulary: Any, src_length: int, tgt_length: int):
    """A seqio preprocessor adding the row and the reference (module docstring)."""
    length = src_length + tgt_length

    def encode(source: bytes, target: bytes, answer: bytes) -> list[Any]:
        target_text = target.decode("utf-8")
        row = encode_example(task, source.decode("utf-8"), target_text, answer.decode("utf-8"), vocabulary,
                             src_length, tgt_length)
        reference = vocabulary.decode(vocabulary.encode(target_text))
        return [row[k] for k in ROW_KEYS] + [np.asarray(reference.encode("utf-8"), dtype=object)]

    def preprocess(ds: tf.data.Dataset) -> tf.data.Dataset:
        def add_row(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            values = tf.numpy_function(encode, [ex["source"], ex["target"], ex["answer"]],
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
    fns = {"rouge": text_metrics.seqio_metric(text_metrics.rouge, dataset=rouge_dataset(task, vocabulary)),
           "bleu": text_metrics.seqio_metric(text_metrics.bleu)}
    return [fns[m] for m in TASKS[task].metrics]


def register_seq2seq_task(
    task: str, *, vocabulary: Any, src_length: int, tgt_length: int, data_dir: Optional[str] = None,
    tfds_data_dir: Optional[str] = None, prefix: str = "glm_seq2seq", overwrite: bool = False,
) -> str:
    """Register ``{prefix}_{task}``; returns the name.

    Args:
      task: one of :data:`TASKS`.
      vocabulary: a GLM vocabulary (``encode``, ``decode``, ``command_tokens``).
      src_length, tgt_length: upstream's ``src_seq_length`` / ``tgt_seq_length``.
      data_dir: a folder in the official layout; None: TFDS (prepared).
      overwrite: replace a task of the same name.
    """
    spec = TASKS[check_task(task)]
    if src_length < 8 or tgt_length < 2:
        raise ValueError(f"{task}: src_length must be >= 8 and tgt_length >= 2, got {src_length} and {tgt_length}")
    name = f"{prefix}_{task}"
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
        seqio.TaskRegistry.remove(name)
    loader = FolderLoader(data_dir, spec.folder_dataset) if data_dir is not None else TfdsLoader(task, tfds_data_dir)
    source = Seq2SeqSource(loader)
    seqio.TaskRegistry.add(
        name, source=source, preprocessors=[encode_preprocessor(task, vocabulary, src_length, tgt_length)],
        output_features={"tokens": seqio.Feature(vocabulary, add_eos=False),
                         "targets": seqio.Feature(GeneratedTextVocabulary(vocabulary), add_eos=False)},
        metric_fns=metric_fns(task, vocabulary), shuffle_buffer_size=None,
    )
    _INFO[name] = Seq2SeqTaskInfo(name, task, src_length, tgt_length, vocabulary, source)
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


def _batch_numpy(ds: tf.data.Dataset, converter: Seq2SeqFeatureConverter, batch_size: int, num_batches: int,
                 drop_remainder: bool) -> Iterator[dict[str, np.ndarray]]:
    """Exactly ``num_batches`` batches; a short last one padded (or dropped), and
    missing ones (a shard with fewer examples) padding only."""
    emitted = 0
    for batch in CheckedIterator(ds.batch(batch_size).as_numpy_iterator(), None, endless=False):
        if emitted == num_batches:
            break
        n = len(batch["example_id"])
        if n < batch_size:
            if drop_remainder:
                break
            pad = converter.padding_rows(batch_size - n)
            batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
        yield batch
        emitted += 1
    while emitted < num_batches:
        yield converter.padding_rows(batch_size)
        emitted += 1


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
    yield from _batch_numpy(converter(ds, converter.task_feature_lengths()), converter, batch_size, num_batches,
                            drop_remainder)


# --------------------------------------------------------------------------- evaluation

GenerateFn = Callable[[Iterator[dict[str, np.ndarray]]], Mapping[int, list[int]]]
_EVALUATORS: dict[tuple[str, str], tuple[seqio.Task, seqio.Evaluator]] = {}


def _evaluator(task_name: str, split: str) -> seqio.Evaluator:
    task = seqio.get_mixture_or_task(task_name)
    cached = _EVALUATORS.get((task_name, split))
    if cached is None or cached[0] is not task:  # re-registered task: rebuild
        evaluator = seqio.Evaluator(task_name, Seq2SeqFeatureConverter(task_info(task_name)), eval_split=split,
                                    use_memory_cache=True, async_compute_metrics=False)
        if not evaluator.eval_tasks:
            raise ValueError(f"{task_name} has no {split!r} split to evaluate")
        cached = _EVALUATORS[(task_name, split)] = (task, evaluator)
    return cached[1]


def evaluate(task_name: str, split: str, generate_fn: GenerateFn, *, output_dir: Optional[str] = None,
             batch_size: int = 16) -> dict[str, float]:
    """The task's metrics (percent) of the texts ``generate_fn`` writes.

    Args:
      generate_fn: ``batches -> {example_id: generated token ids}`` (without
        ``[eop]`` and padding); ``batches`` as :func:`seq2seq_batches` unshuffled.
      output_dir: where ``{task_name}_{split}_predictions.jsonl`` goes: per example
        ``example_id``, ``guid``, ``prediction`` (text) and ``reference``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    evaluator = _evaluator(task_name, split)
    converter = Seq2SeqFeatureConverter(task_info(task_name))

    def seqio_predict_fn(enumerated) -> list[tuple[int, list[int]]]:
        positions = {int(eid): int(pos) for pos, eid in enumerated.map(
            lambda i, ex: (i, ex["example_id"])).as_numpy_iterator()}
        ds = enumerated.map(lambda i, ex: ex)
        generated = generate_fn(_batch_numpy(ds, converter, batch_size, math.ceil(len(positions) / batch_size), False))
        missing = sorted(set(positions) - {int(k) for k in generated})
        if missing:
            raise ValueError(f"{task_name} {split}: no text generated for {len(missing)} example ids "
                             f"(first: {missing[:5]})")
        # One length for all (seqio stacks them), padded with -1 (GeneratedTextVocabulary).
        width = max([len(ids) for ids in generated.values()] + [1])
        return [(pos, list(generated[eid]) + [-1] * (width - len(generated[eid]))) for eid, pos in positions.items()]

    metrics_future, outputs = evaluator.evaluate(compute_metrics=True, predict_fn=seqio_predict_fn)
    scores = metrics_future.result()[task_name]
    if output_dir is not None:
        generated = outputs[task_name][seqio.metrics.ModelOutputType.PREDICTION]  # token ids, in example order
        vocabulary = task_info(task_name).vocabulary
        path = os.path.join(output_dir, f"{task_name}_{split}_predictions.jsonl")
        os.makedirs(output_dir, exist_ok=True)
        examples = evaluator.cached_task_datasets[task_name].as_numpy_iterator()
        with open(path, "w", encoding="utf-8") as f:
            for ex, tokens in zip(examples, generated, strict=True):
                f.write(json.dumps({"example_id": int(ex["index"]), "guid": ex["guid"].decode("utf-8"),
                                    "prediction": vocabulary.decode([int(t) for t in tokens if t >= 0]), "reference": ex["targets_pretokenized"].decode("utf-8")},
                                   ensure_ascii=False) + "\n")
    return {name: float(value) for name, value in scores.items()}


class Seq2SeqData:
    """A registered seq2seq task as the data of the fine-tuning loop
    (``glm_jax.finetune.ClozeData``): each epoch's shuffled training batches (this
    process's shard) and the metrics of generated texts.

    Args:
      task_name: from :func:`register_seq2seq_task`.
      config: the run's ``finetune`` section (splits, batch sizes, seed).
      mesh: the run's mesh: with several processes each reads its own shard.
    """

    def __init__(self, task_name: str, config: Any, mesh: Any):
        self.task_name = task_name
        self.config = config
        self.info = task_info(task_name)
        self.local_batch = len(multihost.process_batch_indices(mesh, config.batch_size))

    def num_examples(self, split: str) -> int:
        return self.info.num_examples(split)

    def steps_per_epoch(self) -> int:
        return (self.info.num_examples(self.config.train_split) // jax.process_count()) // self.local_batch

    def train_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Epoch ``epoch``'s batches of ``[local_batch, ...]`` rows, shuffled with ``seed + epoch``."""
        index, count = jax.process_index(), jax.process_count()
        return seq2seq_batches(self.task_name, self.config.train_split, batch_size=self.local_batch, shuffle=True,
                               seed=self.config.seed + epoch, drop_remainder=True,
                               shard=seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None)

    def evaluate(self, generate_fn: GenerateFn, output_dir: Optional[str], split: Optional[str] = None
                 ) -> dict[str, float]:
        """The task's metrics of ``generate_fn``'s texts on ``split`` (default: the eval split)."""
        return evaluate(self.task_name, split or self.config.eval_split, generate_fn, output_dir=output_dir,
                        batch_size=self.config.eval_batch_size)

