"""Fine-tuning splits held in memory: their seqio source and fixed-shape batches.

The fine-tuning tasks (SuperGLUE as cloze, the seq2seq tasks) read a split once
into a list of examples and serve it in many orders: file order for evaluation,
a seeded permutation per epoch for training, a shard per process. Both pieces here
are shared by them:

* :class:`InMemorySource`: a seqio DataSource over a ``loader(split) -> list``,
  read on first use; the yield order is file order or
  ``default_rng(seed).permutation(n)`` (the same on every host), and
  ``ShardInfo(i, n)`` keeps positions ``i, i + n, ...`` of that order, so shards
  are disjoint and cover the split for any ``n``. A subclass says what one
  element is (:meth:`InMemorySource.element`, ``OUTPUT_SIGNATURE``).
* :func:`fixed_batches`: numpy batches of exactly ``num_batches`` x ``batch_size``
  rows, a short last batch padded (or dropped) and missing batches (a shard with
  fewer examples) padding only, so every host runs the same number of steps.
"""

from __future__ import annotations

import abc
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from glm_jax import multihost
from glm_jax.data.pipeline import CheckedIterator
from glm_jax.data.sources import ShardableSource, check_shard_info

SPLITS: tuple[str, ...] = ("train", "validation", "test")


class InMemorySource(ShardableSource, metaclass=abc.ABCMeta):
    """A split read once by ``loader`` and served in any order (module docstring).

    Subclasses set ``OUTPUT_SIGNATURE`` and write :meth:`element`.
    """

    OUTPUT_SIGNATURE: Mapping[str, tf.TensorSpec] = {}

    def __init__(self, loader: Callable[[str], list], splits: Sequence[str] = SPLITS):
        self._loader = loader
        self._examples: dict[str, list] = {}
        self._lock = threading.Lock()
        # Shuffling is a seeded permutation of the whole split: no shuffle buffer.
        super().__init__(splits=splits, performs_internal_shuffling=True)

    def examples(self, split: str) -> list:
        """The split's examples in file order, read once."""
        if split not in self.splits:
            raise ValueError(f"{self}: unknown split {split!r}; expected one of {self.splits}")
        with self._lock:
            if split not in self._examples:
                self._examples[split] = self._loader(split)
            return self._examples[split]

    def list_shards(self, split: str) -> Sequence[str]:
        return [f"{self._loader}:{split}"]

    def num_input_examples(self, split: str) -> int:
        return len(self.examples(split))

    def order(self, split: str, shuffle: bool, seed: Optional[int],
              shard_info: Optional[seqio.ShardInfo] = None) -> np.ndarray:
        """Indices of the examples this shard yields, in yield order."""
        n = len(self.examples(split))
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        check_shard_info(shard_info)
        if shard_info is not None:
            order = order[shard_info.index:: shard_info.num_shards]
        return order

    @abc.abstractmethod
    def element(self, index: int, example: Any, seed: Optional[int]) -> dict[str, Any]:
        """The dataset element of example ``index`` (its place in file order);
        ``seed`` is the shuffle seed, None when unshuffled."""

    def _make_dataset(self, split: str, *, shuffle: bool, seed: Optional[int],
                      shard_info: Optional[seqio.ShardInfo]) -> tf.data.Dataset:
        examples = self.examples(split)
        order = self.order(split, shuffle, seed, shard_info)

        def generate():
            for i in order:
                yield self.element(int(i), examples[i], seed if shuffle else None)

        return tf.data.Dataset.from_generator(generate, output_signature=self.OUTPUT_SIGNATURE)


class EpochData:
    """What the fine-tuning data classes share (``glm_jax.finetune.ClozeData``): this
    process's rows of each global batch, the full batches of an epoch, and this
    process's shard. Subclasses give ``num_examples(split)``, ``train_batches`` and
    ``evaluate``.

    Args:
      config: the run's ``finetune`` section (splits, batch sizes, seed).
      mesh: the run's mesh: with several processes each reads its own shard.
    """

    def __init__(self, config: Any, mesh: Any):
        self.config = config
        self.local_batch = len(multihost.process_batch_indices(mesh, config.batch_size))

    def num_examples(self, split: str) -> int:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Full training batches per epoch (every process the same count)."""
        return (self.num_examples(self.config.train_split) // jax.process_count()) // self.local_batch

    @staticmethod
    def process_shard() -> Optional[seqio.ShardInfo]:
        """This process's part of a split, or None with one process."""
        index, count = jax.process_index(), jax.process_count()
        return seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None


def fixed_batches(ds: tf.data.Dataset, padding_rows: Callable[[int], dict[str, np.ndarray]], batch_size: int,
                  num_batches: int, drop_remainder: bool) -> Iterator[dict[str, np.ndarray]]:
    """Exactly ``num_batches`` numpy batches of ``batch_size`` rows from ``ds``;
    ``padding_rows(n)`` gives ``n`` rows that count for nothing (module docstring)."""
    emitted = 0
    # One plain error line, with the pipeline released first (glm_jax.data.CheckedIterator).
    for batch in CheckedIterator(ds.batch(batch_size).as_numpy_iterator(), None, endless=False):
        if emitted == num_batches:
            break
        n = len(batch["example_id"])
        if n < batch_size:
            if drop_remainder:
                break
            pad = padding_rows(batch_size - n)
            batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
        yield batch
        emitted += 1
    while emitted < num_batches:
        yield padding_rows(batch_size)
        emitted += 1
