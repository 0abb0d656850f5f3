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
import logging
from typing import Iterator, Optional

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data`` config section.

    Attributes:
      task: a registered seqio task or mixture (see tasks/pretrain.py for names).
      sequence_length: tokens per row, T.
      pack: pack several examples per row (segment ids + Part A flags).
      seed: seeds seqio's shuffling and every example's blank choice.
      shuffle_buffer: examples in seqio's shuffle buffer.
      train_split, eval_split: splits for training and held-out evaluation.
    """

    task: str = "glm_pretrain_multitask_embedded"
    sequence_length: int = 128
    pack: bool = False
    seed: int = 0
    shuffle_buffer: int = 10_000
    train_split: str = "train"
    eval_split: str = "validation"

    def __post_init__(self):
        if self.sequence_length < 8:
            raise ValueError(f"data.sequence_length must be >= 8, got {self.sequence_length}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


def _dataset(config: DataConfig, split: str, local_batch: int, *, train: bool, shard: Optional[tuple[int, int]]):
    import seqio
    import tensorflow as tf

    import tasks  # noqa: F401  (registers the tasks)
    from tasks.feature_converter import GLMFeatureConverter

    # tf.data runs on the host: keep TensorFlow off the accelerators JAX uses (else
    # it would reserve GPU memory for itself).
    tf.config.set_visible_devices([], "GPU")
    provider = seqio.get_mixture_or_task(config.task)  # raises with the known names if absent
    vocabulary = provider.output_features["targets"].vocabulary
    index, count = shard if shard is not None else (0, 1)
    sequence_length = {"tokens": config.sequence_length, "targets": config.sequence_length}
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
    from glm_jax.checkpointing import SkippingIterator, TfDataIteratorState

    shard = shard if shard is not None else _process_shard()

    def pipeline():
        return _dataset(config, config.train_split, local_batch, train=True, shard=shard)

    ds = pipeline()
    if _serializable(ds):
        return TfDataIteratorState(iter(ds))
    # Sources read in Python (text files, JSON lines, official tokenizers through
    # tf.numpy_function) make the pipeline stateful, and tf.data refuses to save its
    # position. The pipeline is deterministic for a seed, so a restore rebuilds it
    # and skips the batches already consumed. Rebuilt, not reused: a second iterator
    # over the same dataset object would draw a new shuffle order from its seed.
    logger.info("data: %s cannot be saved as tf.data state; checkpoints record the batches consumed", config.task)
    return SkippingIterator(lambda consumed: iter(ds if consumed == 0 else pipeline().skip(consumed)))


def _serializable(ds) -> bool:
    """Whether tf.data can save an iterator over ``ds`` (not through Python ops)."""
    import tensorflow as tf

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
    ds = _dataset(config, config.eval_split, local_batch, train=False, shard=shard)
    return ds.as_numpy_iterator()


def _process_shard() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def vocabulary_of(task: str):
    """The vocabulary of a registered task (its ``targets`` feature)."""
    import seqio

    import tasks  # noqa: F401

    return seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
