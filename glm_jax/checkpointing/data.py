"""Data iterator positions that a checkpoint can hold.

Two kinds, behind one protocol (``DataIteratorState``: save to / restore from a
directory):

* ``TfDataIteratorState``: a ``tf.data`` iterator checkpointed with
  ``tf.train.Checkpoint`` (T5X's approach); exact for any pipeline, but holds the
  shuffle and prefetch buffers.
* ``JsonIteratorState``: an iterator with ``get_state()``/``set_state()`` and a
  small JSON position (grain's convention), e.g. ``SkippingIterator`` for
  deterministic pipelines that can skip to element n.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from etils import epath

T = TypeVar("T")


@runtime_checkable
class DataIteratorState(Protocol):
    """A data iterator whose position can be written to and read from a directory.

    ``save`` must capture the position before it returns: the train loop advances
    the iterator right afterwards. Each process saves and restores its own
    position (its own directory).
    """

    def save(self, directory: epath.Path) -> None: ...

    def restore(self, directory: epath.Path) -> None: ...


@runtime_checkable
class StatefulIterator(Protocol):
    """An iterator with a small JSON-serialisable position (grain's convention)."""

    def get_state(self) -> Mapping[str, Any]: ...

    def set_state(self, state: Mapping[str, Any]) -> None: ...


class TfDataIteratorState(Generic[T]):
    """A ``tf.data`` iterator, saved with ``tf.train.Checkpoint`` (T5X's approach).

    The checkpoint holds the pipeline's internal state, shuffle and prefetch
    buffers included, so it resumes exactly but can be large: a shuffle buffer of
    10k examples of 512 int32 tokens holds 20 MB per feature, per process.
    Iterating this object iterates the wrapped iterator.
    """

    def __init__(self, iterator: Iterator[T]):
        self.iterator = iterator
        self._checkpoint = None

    def __iter__(self) -> TfDataIteratorState[T]:
        return self

    def __next__(self) -> T:
        return next(self.iterator)

    def _tf_checkpoint(self) -> Any:  # a tf.train.Checkpoint
        if self._checkpoint is None:
            # Imported here: TF takes ~5 s to import, and only tf.data users need it
            # (who have imported it already to build the pipeline).
            import tensorflow as tf

            self._checkpoint = tf.train.Checkpoint(iterator=self.iterator)
        return self._checkpoint

    def save(self, directory: epath.Path) -> None:
        self._tf_checkpoint().write(str(directory / "iterator"))

    def restore(self, directory: epath.Path) -> None:
        # assert_consumed: a checkpoint of a different pipeline is an error, not a
        # silent partial restore.
        self._tf_checkpoint().read(str(directory / "iterator")).assert_consumed()


class JsonIteratorState(Generic[T]):
    """Saves a ``StatefulIterator``'s ``get_state()`` as ``state.json``.

    For iterators that can be re-positioned cheaply from a few numbers, e.g.
    ``SkippingIterator`` or a grain iterator. Iterating this object iterates the
    wrapped iterator.
    """

    FILENAME = "state.json"

    def __init__(self, iterator: StatefulIterator):
        if not isinstance(iterator, StatefulIterator):
            raise TypeError(f"JsonIteratorState needs get_state() and set_state(), got {type(iterator).__name__}")
        self.iterator = iterator

    def __iter__(self) -> JsonIteratorState[T]:
        return self

    def __next__(self) -> T:
        return next(self.iterator)  # type: ignore[call-overload]

    def save(self, directory: epath.Path) -> None:
        state = self.iterator.get_state()
        try:
            text = json.dumps(state, indent=1, sort_keys=True)
        except TypeError as e:
            raise TypeError(f"{type(self.iterator).__name__}.get_state() is not JSON-serialisable: {e}") from None
        (directory / self.FILENAME).write_text(text)

    def restore(self, directory: epath.Path) -> None:
        self.iterator.set_state(json.loads((directory / self.FILENAME).read_text()))


class SkippingIterator(Generic[T]):
    """Iterates ``make_iterator(0)``; its state is the number of elements consumed.

    Restoring calls ``make_iterator(n)``, which must yield the stream from element
    n on: exact resume for deterministic pipelines, e.g. a seqio task with a fixed
    shuffle seed, ``lambda n: iter(ds.skip(n))``. Skipping costs reading n
    examples, which is cheap for pre-tokenised data and avoids saving buffers.
    """

    def __init__(self, make_iterator: Callable[[int], Iterator[T]]):
        self._make_iterator = make_iterator
        self._consumed = 0
        self._iterator = make_iterator(0)

    def __iter__(self) -> SkippingIterator[T]:
        return self

    def __next__(self) -> T:
        element = next(self._iterator)
        self._consumed += 1
        return element

    def get_state(self) -> dict[str, int]:
        return {"consumed": self._consumed}

    def set_state(self, state: Mapping[str, Any]) -> None:
        consumed = state.get("consumed")
        if not isinstance(consumed, int) or consumed < 0:
            raise ValueError(f"SkippingIterator state needs a non-negative int 'consumed', got {dict(state)!r}")
        self._iterator = self._make_iterator(consumed)
        self._consumed = consumed


def as_iterator_state(iterator: Any) -> DataIteratorState:
    """``iterator`` as a DataIteratorState: as is, or JSON-wrapped if it has get/set_state."""
    if isinstance(iterator, DataIteratorState):
        return iterator
    if isinstance(iterator, StatefulIterator):
        return JsonIteratorState(iterator)
    raise TypeError(
        f"cannot checkpoint a data iterator of type {type(iterator).__name__}: wrap a tf.data iterator in "
        "TfDataIteratorState, or give it get_state()/set_state() (see SkippingIterator)"
    )
