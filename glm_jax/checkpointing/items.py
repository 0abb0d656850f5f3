"""Orbax handlers for the checkpoint's ``data`` and ``config`` items, and the
registry that maps every item (``state`` too) to its handler.

Orbax finds an item's handler through the registry, keyed by (item name, args
type); an explicit registry (rather than orbax's lazy, save-time choice) lets a
fresh process read a step's metadata before restoring anything.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from glm_jax.checkpointing.data import DataIteratorState

STATE, DATA, CONFIG = "state", "data", "config"  # item (subdirectory) names
CONFIG_FILENAME = "config.yaml"


@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    """Save ``iterator``'s position as the ``data`` item."""

    iterator: DataIteratorState


@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    """Restore the ``data`` item into ``iterator`` (in place)."""

    iterator: DataIteratorState


@dataclasses.dataclass
class TextSave(ocp.args.CheckpointArgs):
    """Save ``text`` as the ``config`` item."""

    text: str


@dataclasses.dataclass
class TextRestore(ocp.args.CheckpointArgs):
    """Read the ``config`` item's text."""


class _DataIteratorHandler(ocp.CheckpointHandler):
    """Each process saves its own iterator position into ``process_<index>/``.

    Synchronous (not an AsyncCheckpointHandler), so orbax runs it inside the
    blocking part of an async save: the position is captured before ``save`` returns.
    """

    @staticmethod
    def _process_dir(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}"

    def save(self, directory: epath.Path, args: DataSave) -> None:
        path = self._process_dir(directory)
        path.mkdir(parents=True, exist_ok=True)
        args.iterator.save(path)

    def restore(self, directory: epath.Path, args: DataRestore) -> DataIteratorState:
        path = self._process_dir(directory)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: no data position for process {jax.process_index()} "
                "(was the checkpoint written by fewer processes?)"
            )
        args.iterator.restore(path)
        return args.iterator


class _TextHandler(ocp.CheckpointHandler):
    """One text file, written by the primary process."""

    def save(self, directory: epath.Path, args: TextSave) -> None:
        if jax.process_index() == 0:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / CONFIG_FILENAME).write_text(args.text)

    def restore(self, directory: epath.Path, args: Optional[TextRestore] = None) -> str:
        return (directory / CONFIG_FILENAME).read_text()


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Handlers of the ``state``, ``data`` and ``config`` items."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    registry.add(STATE, ocp.args.StandardSave, state_handler)
    registry.add(STATE, ocp.args.StandardRestore, state_handler)
    data_handler = _DataIteratorHandler()
    registry.add(DATA, DataSave, data_handler)
    registry.add(DATA, DataRestore, data_handler)
    text_handler = _TextHandler()
    registry.add(CONFIG, TextSave, text_handler)
    registry.add(CONFIG, TextRestore, text_handler)
    return registry
