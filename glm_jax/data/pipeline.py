"""From a registered seqio task or mixture to the training loop's batches.

Each process reads its own shard of the data (``seqio.ShardInfo(process_index,
process_count)``) and yields its rows of every global batch; the loop assembles the
global arrays (glm_jax/multihost.py). The iterator is a ``tf.data`` iterator wrapped
for checkpointing (glm_jax/checkpointing/data.py): a resumed run continues from the
saved position instead of replaying the preprocessing of the steps already taken.
Pipelines tf.data cannot save (Python-read sources) resume by skipping instead.
Both hold for a ``seqio.Mixture`` of pretraining tasks (corpora mixed with rates):
its sampling is seeded with ``data.seed``, so it is as deterministic as its tasks.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import re
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import jax
import seqio
import tensorflow as tf

from glm_jax.checkpointing import SkippingIterator, TfDataIteratorState, as_iterator_state
from glm_jax.data import pretraining
from glm_jax.data.feature_converter import GLMFeatureConverter
from glm_jax.typed_config import require_at_least

logger = logging.getLogger(__name__)


DEFAULT_TASK = "glm_pretrain_multitask_embedded"
# The module that registers the built-in tasks (the top-level ``tasks`` package).
DEFAULT_TASK_MODULES = ("tasks",)
FILES_SOURCE = "files"  # the source name of the tasks over data.files
FILE_FORMATS = ("jsonl", "text", "paragraphs")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data`` config section.

    Attributes:
      task: a registered seqio task or mixture (see tasks/pretrain.py for names).
      task_modules: modules imported first to register ``task`` (T5X's
        ``MIXTURE_OR_TASK_MODULE``): dotted names on ``sys.path`` or ``.py`` files.
        The default registers glm-jax's built-in tasks (the ``tasks`` package).
      sequence_length: tokens per row, T.
      text_length: the most text tokens of a pretraining example, C (so Part A's
        positions stay below C), and the length of its windows; rows of T > C then
        grow to C + 2k as the official ones do (k spans, each adding ``[sop]`` and
        ``[eop]``), up to T. The paper presets use C = 512 and T = 576, which puts
        Part A over the official position range. None: C = T, and the text
        shrinks to leave Part B room (positions near T are then never trained).
      pack: pack several examples per row (segment ids + Part A flags).
      seed: seeds seqio's shuffling and every example's blank choice.
      shuffle_buffer: examples in seqio's shuffle buffer.
      train_split, eval_split: splits for training and held-out evaluation;
        ``eval_split: null`` trains without evaluating.
      files: your own corpus, without a launcher: file patterns of the train
        split (a string or a list). glm-jax registers the pretraining tasks over
        them as ``glm_pretrain_<objective>_files`` (glm_jax/data/pretraining.py), and a
        ``data.task`` left at its default becomes ``glm_pretrain_multitask_files``.
      validation_files: patterns of the validation split; without them the run
        does not evaluate (``eval_split`` becomes null).
      format: ``jsonl`` (a ``text`` field per line, the official GLM format),
        ``text`` (one document per line) or ``paragraphs`` (documents separated
        by blank lines).
      on_error: a bad document in ``files``: ``raise`` (stop the run, naming
        file and line) or ``skip`` (drop it, count it in a warning).
    """

    task: str = DEFAULT_TASK
    task_modules: tuple[str, ...] = DEFAULT_TASK_MODULES
    sequence_length: int = 128
    text_length: Optional[int] = None
    pack: bool = False
    seed: int = 0
    shuffle_buffer: int = 10_000
    train_split: str = "train"
    eval_split: Optional[str] = "validation"
    # One pattern (``data.files=data/wiki-*.jsonl``) or a list of them.
    files: Union[str, tuple[str, ...], None] = None
    validation_files: Union[str, tuple[str, ...], None] = None
    format: str = "jsonl"
    on_error: str = "raise"

    def __post_init__(self):
        if self.format not in FILE_FORMATS:
            raise ValueError(f"data.format must be one of {FILE_FORMATS}, got {self.format!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if isinstance(self.task_modules, str):
            object.__setattr__(self, "task_modules", (self.task_modules,))
        for key in ("files", "validation_files"):
            value = getattr(self, key)
            if isinstance(value, str):  # one pattern given as a string
                object.__setattr__(self, key, (value,))
        if self.validation_files and not self.files:
            raise ValueError("data.validation_files is set but data.files is not")
        if self.files:
            # Frozen dataclass: resolving the defaults that data.files implies.
            if self.task == DEFAULT_TASK:
                object.__setattr__(self, "task", f"glm_pretrain_multitask_{FILES_SOURCE}")
            elif not self.task.endswith(f"_{FILES_SOURCE}"):
                raise ValueError(
                    f"data.files is set, so data.task must be one of its tasks, glm_pretrain_<objective>_"
                    f"{FILES_SOURCE} (objectives: token, sentence, document, multitask, doc, sent); got {self.task!r}"
                )
            if not self.validation_files and self.eval_split == "validation":
                object.__setattr__(self, "eval_split", None)
        require_at_least("data", self, 8, "sequence_length")
        require_at_least("data", self, 1, "shuffle_buffer")
        require_at_least("data", self, 8, "text_length", or_null=True)
        if self.text_length is not None and self.text_length > self.sequence_length:
            raise ValueError(f"data.text_length={self.text_length} exceeds data.sequence_length="
                             f"{self.sequence_length}: rows must hold the text")

    @property
    def position_range(self) -> int:
        """Position ids of pretraining rows stay below this (the text cap or T)."""
        return self.text_length or self.sequence_length


class DataError(ValueError):
    """The data cannot be read; one line naming the file and line (or the task)."""


def import_task_modules(modules: Sequence[str], option: str = "data.task_modules") -> None:
    """Imports each module that registers tasks: a dotted name on ``sys.path`` (the
    working directory included), or a ``.py`` file. Importing twice is a no-op.

    Raises:
      ValueError: one line naming ``option`` and the module that cannot be imported.
    """
    for module in modules:
        try:
            if module.endswith(".py"):
                path = Path(module)
                if not path.is_file():
                    raise FileNotFoundError(f"{option}: {module}: no such file")
                if path.stem in sys.modules and getattr(sys.modules[path.stem], "__file__", None) == str(path):
                    continue
                spec = importlib.util.spec_from_file_location(path.stem, path)
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = loaded
                spec.loader.exec_module(loaded)
            else:
                if "" not in sys.path and "." not in sys.path:
                    sys.path.insert(0, "")  # a console script's sys.path lacks the working directory
                importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"{option}: {module}: cannot import it: {e}") from None


def register_tasks(config: DataConfig) -> None:
    """Registers what ``config`` reads: the modules of ``data.task_modules``, then
    the tasks over ``data.files``. Idempotent (registering again replaces them)."""
    import_task_modules(config.task_modules)
    if config.files:
        pretraining.register_file_tasks(
            FILES_SOURCE, config.files, config.validation_files, file_format=config.format, on_error=config.on_error
        )


def _provider_sources(provider) -> list:
    """The seqio DataSources of a task or (recursively) of a mixture's tasks."""
    if isinstance(provider, seqio.Mixture):
        return [source for task in provider.tasks for source in _provider_sources(task)]
    return [provider.source]


def check_splits(config: DataConfig) -> None:
    """Before any work: the task exists and has the splits the run will read.

    Raises:
      DataError: naming the missing split, the task's splits and the config key.
    """
    register_tasks(config)
    provider = seqio.get_mixture_or_task(config.task)  # raises with the known names if absent
    wanted = {"data.train_split": config.train_split, "data.eval_split": config.eval_split}
    for source in _provider_sources(provider):
        splits = list(source.splits)
        for key, split in wanted.items():
            if split is not None and split not in splits:
                hint = " (or data.eval_split=null to train without evaluation)" if key == "data.eval_split" else ""
                raise DataError(
                    f"data.task={config.task}: {source} has no split {split!r} (it has {splits}): "
                    f"set {key} to one of them{hint}"
                )


class CheckedIterator:
    """Iterates a tf.data pipeline so that a data error ends the run cleanly.

    A bad document (glm_jax/data/sources.py ends its stream and records the error
    instead of raising inside tf.data) or any error of the pipeline's own ops
    arrives as one :class:`DataError` line. Before raising, the pipeline's
    iterator is released: a tf.data iterator over Python-read data that is still
    alive when the interpreter exits deadlocks in its finaliser, which is how a bad
    line used to hang the process. ``save``/``restore`` pass through to the
    wrapped iterator (``as_iterator_state`` of it) for checkpoints.

    Args:
      iterator: the pipeline iterator (a checkpointable one, or a plain iterator).
      provider: the seqio task or mixture it reads, whose sources are asked for a
        recorded bad document (and whose name prefixes messages); None for a
        pipeline of examples already read in Python.
      endless: the stream never ends by itself (training); if it does, that is an
        error too.
    """

    def __init__(self, iterator, provider, *, endless: bool):
        self._iterator = iterator
        self._provider = provider
        self._endless = endless

    @property
    def inner(self):
        """The wrapped iterator (None once an error released it)."""
        return self._iterator

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            raise StopIteration
        failure = None
        try:
            return next(self._iterator)
        except StopIteration:
            failure = self._recorded_error()
            if failure is None and self._endless:
                failure = f"{self._where()}the training data ended (is the train split empty?)"
            if failure is None:
                raise
        except tf.errors.OpError as e:
            failure = self._recorded_error() or f"{self._where()}{pipeline_error_message(e)}"
        # Raised outside the except block, with the pipeline released: the new
        # exception must not hold the old one's frames (and through them the iterator).
        self._iterator = None
        raise DataError(failure)

    def _where(self) -> str:
        return "" if self._provider is None else f"data.task={self._provider.name}: "

    def _recorded_error(self):
        if self._provider is None:
            return None
        for source in _provider_sources(self._provider):
            recorded = getattr(source, "recorded_error", None)  # glm_jax/data/sources.py file sources
            error = recorded() if recorded is not None else None
            if error is not None:
                return str(error)
        return None

    # Checkpointing passes through (glm_jax.checkpointing.as_iterator_state).
    def save(self, directory):
        as_iterator_state(self._iterator).save(directory)

    def restore(self, directory):
        as_iterator_state(self._iterator).restore(directory)


def pipeline_error_message(error) -> str:
    """The reason inside a tf.data error, without TensorFlow's wrapping: the first
    line, from its innermost ``SomethingError: `` on (the Python exception that a
    map function raised), or the op's own message."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines() if line.strip()]
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", lines[0]) if lines else "unknown error"
    inner = list(re.finditer(r"\b[A-Z]\w*(?:Error|Exception): ", first))
    return first[inner[-1].end():] if inner else first


def _dataset(config: DataConfig, split: str, local_batch: int, *, train: bool, shard: Optional[tuple[int, int]]):
    register_tasks(config)

    # tf.data runs on the host: keep TensorFlow off the accelerators JAX uses (else
    # it would reserve GPU memory for itself).
    tf.config.set_visible_devices([], "GPU")
    provider = seqio.get_mixture_or_task(config.task)  # raises with the known names if absent
    vocabulary = provider.output_features["targets"].vocabulary
    index, count = shard if shard is not None else (0, 1)
    sequence_length = {"tokens": config.sequence_length, "targets": config.sequence_length}
    if config.text_length is not None:
        sequence_length["text"] = config.text_length  # read by the windows and objectives
    # A mixture's get_dataset takes no shuffle buffer size: each of its tasks shuffles
    # with the buffer it was registered with (register_pretraining_tasks'
    # shuffle_buffer_size), and data.shuffle_buffer does not apply.
    extra = {"shuffle_buffer_size": config.shuffle_buffer} if isinstance(provider, seqio.Task) else {}
    if train and not extra:
        logger.info("data: %s is a mixture; its tasks use their own shuffle buffers, not data.shuffle_buffer",
                    config.task)
    ds = provider.get_dataset(
        sequence_length=sequence_length,
        split=split,
        shuffle=train,
        seed=config.seed,
        **extra,
        shard_info=seqio.ShardInfo(index=index, num_shards=count),
        num_epochs=None if train else 1,
    )
    converter = GLMFeatureConverter(pack=config.pack, command_tokens=vocabulary.command_tokens)
    ds = converter(ds, {"tokens": config.sequence_length})
    return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_batches(config: DataConfig, local_batch: int, shard: Optional[tuple[int, int]] = None):
    """Endless, checkpointable iterator of this process's ``[local_batch, T]`` rows.

    Args:
      shard: ``(process_index, process_count)``; default: this JAX process's.
    """
    shard = shard if shard is not None else _process_shard()

    def pipeline():
        return _dataset(config, config.train_split, local_batch, train=True, shard=shard)

    ds = pipeline()
    provider = _provider(config.task)
    if _serializable(ds):
        return CheckedIterator(TfDataIteratorState(iter(ds)), provider, endless=True)
    # Sources read in Python (text files, JSON lines, official tokenizers through
    # tf.numpy_function) make the pipeline stateful, and tf.data refuses to save its
    # position. The pipeline is deterministic for a seed, so a restore rebuilds it
    # and skips the batches already consumed. Rebuilt, not reused: a second iterator
    # over the same dataset object would draw a new shuffle order from its seed.
    logger.info("data: %s cannot be saved as tf.data state; checkpoints record the batches consumed", config.task)
    skipping = SkippingIterator(lambda consumed: iter(ds if consumed == 0 else pipeline().skip(consumed)))
    return CheckedIterator(skipping, provider, endless=True)


def _serializable(ds) -> bool:
    """Whether tf.data can save an iterator over ``ds`` (not through Python ops)."""
    try:
        # The graph a tf.data checkpoint would need; refused for py_function /
        # from_generator stages. Cheap: nothing is read.
        ds._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL)
    except tf.errors.FailedPreconditionError:
        return False
    return True


def eval_batches(config: DataConfig, local_batch: int, shard: Optional[tuple[int, int]] = None) -> Iterator:
    """One pass over the held-out split, as numpy batches (deterministic order)."""
    shard = shard if shard is not None else _process_shard()
    if config.eval_split is None:
        raise ValueError("data.eval_split is null: this run has no evaluation data")
    ds = _dataset(config, config.eval_split, local_batch, train=False, shard=shard)
    return CheckedIterator(ds.as_numpy_iterator(), _provider(config.task), endless=False)


def _provider(task: str):
    return seqio.get_mixture_or_task(task)


def _process_shard() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def vocabulary_of(config: DataConfig):
    """The vocabulary of ``data.task`` (its ``targets`` feature), registering it first."""
    register_tasks(config)
    return seqio.get_mixture_or_task(config.task).output_features["targets"].vocabulary
