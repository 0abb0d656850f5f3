"""``Checkpointer``: save and restore (train state, data position, config) with an
orbax ``CheckpointManager``; see the package docstring for the layout and the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from glm_jax.checkpointing.data import as_iterator_state
from glm_jax.checkpointing.items import (
    CONFIG,
    DATA,
    STATE,
    DataRestore,
    DataSave,
    TextRestore,
    TextSave,
    handler_registry,
)
from glm_jax.checkpointing.preemption import preemption_requested
from glm_jax.checkpointing.watchdog import SaveWatchdog
from glm_jax.typed_config import require_at_least, to_yaml

logger = logging.getLogger(__name__)

PyTree = Any
QUARANTINE = "quarantine"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or none can be read; the message names the
    directory, the step and the cause in one line."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint (the ``checkpoint`` config section).

    Attributes:
      directory: root directory of the run's checkpoints (local path or any URL
        that etils.epath and TensorStore understand, e.g. ``gs://``). None means
        the run does not checkpoint.
      save_interval_steps: save when ``step % save_interval_steps == 0`` (and at a
        preemption).
      max_to_keep: keep the newest N checkpoints; None keeps all.
      keep_period: also keep every checkpoint whose step is a multiple of this,
        beyond ``max_to_keep`` (e.g. for later evaluation); None keeps no extras.
      async_save: write in a background thread (``save`` returns once the arrays
        are in host memory).
    """

    directory: Optional[str] = None
    save_interval_steps: int = 1000
    max_to_keep: Optional[int] = 3
    keep_period: Optional[int] = None
    async_save: bool = True

    def __post_init__(self):
        require_at_least("checkpoint", self, 1, "save_interval_steps")
        require_at_least("checkpoint", self, 1, "max_to_keep", "keep_period", or_null=True)


class Checkpointer:
    """Saves and restores (train state, data position, config) with orbax.

    Not thread-safe; in a multi-process run every process makes the same calls.
    Use as a context manager, or call ``close()``, so the last async save commits.
    """

    def __init__(self, config: CheckpointConfig):
        if not config.directory:
            raise ValueError("checkpoint.directory is not set; it is needed to save or restore checkpoints")
        self.config = config
        self.directory = _absolute(config.directory)
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(config.max_to_keep)]
        if config.keep_period is not None:
            policies.append(ocp.checkpoint_managers.EveryNSteps(config.keep_period))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=config.async_save,
            # No InitialSavePolicy (orbax's default saves the first step it sees).
            save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(
                [
                    ocp.checkpoint_managers.FixedIntervalPolicy(config.save_interval_steps),
                    ocp.checkpoint_managers.PreemptionCheckpointingPolicy(),
                ]
            ),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # Uncommitted directories are moved to quarantine/ by restore_latest,
            # never deleted.
            cleanup_tmp_directories=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=handler_registry())
        self._barrier_ids = itertools.count()
        self._stop_logged = False
        self._pending_step: Optional[int] = None  # the last save started

    # ---- queries

    def all_steps(self) -> list[int]:
        """Steps saved or being saved, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        """The newest step saved or being saved, or None."""
        return self._manager.latest_step()

    def should_stop(self, step: int) -> bool:
        """True when the run should save ``step`` (``force=True``) and exit: a SIGTERM
        arrived (see ``install_preemption_handler``), or all hosts reached JAX's
        preemption sync point at ``step``. Call it after every step."""
        stop = preemption_requested() or self._manager.reached_preemption(step)
        if stop and not self._stop_logged:
            logger.warning("preemption: stopping after step %d", step)
            self._stop_logged = True
        return stop

    def would_save(self, step: int) -> bool:
        """Whether ``save(step)`` without ``force`` would save: the loop checks the
        state (glm_jax/nonfinite.py) before a save, not after every step."""
        step = int(step)
        return step not in self._manager.all_steps() and self._manager.should_save(step)

    def describe_latest(self) -> Optional[str]:
        """``"checkpoint step N in DIR"`` for the newest saved step, or None."""
        step = self.latest_step()
        return None if step is None else f"checkpoint step {step} in {self.directory}"

    # ---- saving

    def save(
        self,
        step: int,
        state: PyTree,
        data_iterator: Any = None,
        config: Any = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (a pytree of possibly sharded arrays) as step ``step``
        when ``step`` is a multiple of ``save_interval_steps``, at a preemption sync
        point, or with ``force``; returns whether it started a save.

        A step already saved (or being saved) is not saved again, so forcing the
        save of a step that the interval just saved is a no-op. Like orbax, a step
        not after the latest saved step is not saved unless forced.

        Args:
          step: completed train steps.
          state: the pytree to save; the caller may donate its buffers once save
            returns (orbax has copied them to host memory).
          data_iterator: a DataIteratorState, or an iterator with
            get_state()/set_state(); its position is saved before save returns.
          config: the run's config, a dataclass (saved with glm_jax.typed_config.to_yaml)
            or YAML text.
          force: save regardless of the interval.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        if not force and not self._manager.should_save(step):
            return False
        items: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = DataSave(as_iterator_state(data_iterator))
        if config is not None:
            items[CONFIG] = TextSave(_config_text(config))
        with self._storage_errors(step):
            # An async save that failed since the last call raises here, so a
            # storage fault stops the run within one save interval.
            self._manager.check_for_errors()
            self._probe_writable()
            with SaveWatchdog(self._probe_writable):
                # force=True: the decision is made above, don't let orbax re-evaluate it.
                started = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        if started:
            self._pending_step = step
        return started

    def wait(self) -> None:
        """Blocks until the pending async save (if any) has committed; raises
        :class:`CheckpointError` if it failed."""
        with self._storage_errors(self._pending_step):
            self._manager.wait_until_finished()
            self._manager.check_for_errors()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads; raises
        :class:`CheckpointError` if the last save failed."""
        with self._storage_errors(self._pending_step):
            self._manager.close()
            self._manager.check_for_errors()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: still wait for the last save (it may be good), but let
        # the original error through rather than a second one from storage.
        try:
            self.close()
        except CheckpointError as e:
            logger.warning("%s", e)

    def _probe_writable(self) -> None:
        """Writes and removes a small file in the directory before a save starts.

        Why: when the directory has become unwritable (or has vanished), orbax's
        save does not raise: its caller waits forever on a signal from a write
        thread that failed (orbax 0.12, ``signaling_client.blocking_key_value_get``).
        Checked here, the fault is one error instead of a hang. Local paths only;
        remote storage reports its errors through orbax. Every process probes
        (each writes its own shards); one that fails ends the job, as any process
        failure does in a multi-process JAX run.
        """
        if "://" in str(self.directory):
            return
        probe = self.directory / f".glm-jax-write-test-{jax.process_index()}-{os.getpid()}"
        probe.write_text("")
        probe.unlink()

    @contextlib.contextmanager
    def _storage_errors(self, step: Optional[int]):
        """Turns a failed write (disk full, no permission, a vanished directory)
        into one CheckpointError line naming the step, the directory and the cause.
        Earlier checkpoints are untouched: orbax deletes old steps only after a save
        commits."""
        try:
            yield
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001  (storage libraries raise many types)
            text = " ".join(str(e).split())
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)  # the step whose save broke
            where = failed.group(1) if failed else step
            cause = text.replace(f"{self.directory}/", "")
            cause = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]|^[A-Z_]{4,}: ", "", cause)
            cause = f"{type(e).__name__}: {cause[:240]}{' ...' if len(cause) > 240 else ''}"
            raise CheckpointError(
                f"saving checkpoint step {where} to {self.directory} failed: {cause}; the checkpoints saved "
                "before it are kept"
            ) from e

    # ---- restoring

    def restore(self, step: int, abstract_state: PyTree, data_iterator: Any = None) -> PyTree:
        """The state saved at ``step``, in the shardings of ``abstract_state``.

        Resuming training from a step older than the latest: the newer steps stay,
        and (as in orbax) steps up to the latest are not saved again unless forced.

        Args:
          step: a saved step.
          abstract_state: the target: the state's pytree with a
            ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` at every leaf
            (dtypes may differ from the saved ones; values are cast).
          data_iterator: if given, its position is restored too (in place).

        Raises:
          ValueError: ``abstract_state`` is malformed or does not match the saved
            structure and shapes.
          Exception: whatever orbax raises for an unreadable checkpoint.
        """
        _check_abstract(abstract_state)
        self.wait()  # the step may be our own save, still in flight
        saved_items, saved_tree = self._saved_items_and_tree(step)
        _check_matches(abstract_state, saved_tree, f"checkpoint step {step} in {self.directory}")
        return self._restore_items(step, abstract_state, data_iterator, saved_items)

    def restore_latest(
        self, abstract_state: PyTree, data_iterator: Any = None
    ) -> Optional[tuple[int, PyTree]]:
        """``(step, state)`` of the newest checkpoint that restores, or None if there
        is no checkpoint.

        Newer checkpoints that fail to read are skipped with a warning and, once an
        older one has restored, moved to ``quarantine/`` (so that their steps can be
        saved again); uncommitted directories of interrupted saves are moved there
        too. Nothing is deleted.

        Raises:
          ValueError: ``abstract_state`` does not match the checkpoint (a wrong
            target, not a bad checkpoint; nothing is skipped or moved).
          RuntimeError: there are checkpoints but none restores.
        """
        _check_abstract(abstract_state)
        self.wait()  # our own pending save must commit before we look
        self._manager.reload()
        self._quarantine_uncommitted()
        failed: list[tuple[int, Exception]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            where = f"checkpoint step {step} in {self.directory}"
            # A checkpoint may fail for any reason (truncated files, missing items,
            # TensorStore errors): each makes it unusable, so catch them all.
            try:
                saved_items, saved_tree = self._saved_items_and_tree(step)
            except Exception as e:  # noqa: BLE001
                logger.warning("skipping %s: cannot read its metadata: %s", where, self.describe_failure(e))
                failed.append((step, e))
                continue
            _check_matches(abstract_state, saved_tree, where)
            try:
                state = self._restore_items(step, abstract_state, data_iterator, saved_items)
            except Exception as e:  # noqa: BLE001
                logger.warning("skipping %s: restore failed: %s", where, self.describe_failure(e))
                failed.append((step, e))
                continue
            if failed:
                # An older checkpoint restored under the same conditions, so the newer
                # ones are bad; move them out of the way of the steps about to be saved.
                # (Step directories are named str(step): no prefix, no padding.)
                self._quarantine([self.directory / str(bad_step) for bad_step, _ in failed])
                self._manager.reload()
            logger.info("restored %s", where)
            return step, state
        if failed:
            details = "; ".join(f"step {s}: {self.describe_failure(e)}" for s, e in failed)
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be restored ({details}); nothing was moved or deleted: "
                f"move the damaged steps aside (e.g. into {self.directory / QUARANTINE}/) to start this run over, "
                "or start a new run directory"
            ) from failed[0][1]
        return None

    def describe_failure(self, error: BaseException) -> str:
        """One short line for why a checkpoint did not restore: the kind of damage
        (missing file, short read, bad metadata, missing item) and the storage
        library's innermost message, without its multi-kilobyte spec dumps."""
        chain = []
        while error is not None and len(chain) < 16:
            # Iteration signals in the context chain are a parser's internals, not causes.
            if not isinstance(error, (StopIteration, StopAsyncIteration, GeneratorExit)):
                chain.append(error)
            error = error.__cause__ or error.__context__
        inner = chain[-1]
        text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
        text = next((line.strip() for line in text.splitlines() if line.strip()), type(inner).__name__)
        text = re.sub(r"^[A-Z_]{4,}: ", "", text).replace(f"{self.directory}/", "")
        if isinstance(inner, json.JSONDecodeError) or "metadata" in text.lower():
            kind = "bad metadata"
        elif isinstance(inner, FileNotFoundError) or "NOT_FOUND" in str(inner) or "was not found" in text:
            kind = "missing file or item"
        elif "OUT_OF_RANGE" in str(inner) or "runcated" in text or "byte range" in text:
            kind = "short read (a truncated or missing data file)"
        else:
            kind = type(inner).__name__
        return f"{kind}: {text[:160]}{' ...' if len(text) > 160 else ''}"

    def saved_config(self, step: int) -> Optional[str]:
        """The config YAML saved with ``step``, or None if none was saved."""
        saved_items, _ = self._saved_items_and_tree(step)
        if CONFIG not in saved_items:
            return None
        return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: TextRestore()}))[CONFIG]

    # ---- internals

    def _saved_items_and_tree(self, step: int) -> tuple[set[str], PyTree]:
        """The items saved at ``step`` and the state's metadata tree; raises if unreadable."""
        metadata = self._manager.metadata(step)
        items = set(metadata.item_handlers or ())
        state_metadata = metadata.item_metadata[STATE] if STATE in items else None
        if state_metadata is None:
            raise FileNotFoundError(f"step {step} in {self.directory} has no readable '{STATE}' item")
        return items, state_metadata.tree

    def _restore_items(
        self, step: int, abstract_state: PyTree, data_iterator: Any, saved_items: set[str]
    ) -> PyTree:
        items: dict[str, ocp.args.CheckpointArgs] = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            if DATA in saved_items:
                items[DATA] = DataRestore(as_iterator_state(data_iterator))
            else:
                logger.warning(
                    "checkpoint step %d in %s has no data position: the data iterator starts from its beginning",
                    step,
                    self.directory,
                )
        return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def _quarantine_uncommitted(self) -> None:
        """Moves the directories of saves that never committed into quarantine/."""
        # Listed by the primary process only: the others may look while it renames.
        paths = []
        if jax.process_index() == 0:
            paths = [temporary.get() for temporary in ocp.path.step.all_temporary_paths(self.directory)]
        for path in paths:
            logger.warning("moving %s aside: a save that never committed (interrupted run?)", path)
        self._quarantine(paths)

    def _quarantine(self, paths: Sequence[epath.Path]) -> None:
        """Moves ``paths`` into quarantine/, keeping their files. Called by every
        process (it ends in a barrier); only the primary one renames."""
        if jax.process_index() == 0 and paths:
            quarantine = self.directory / QUARANTINE
            quarantine.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for path in paths:
                target = quarantine / f"{path.name}.{stamp}"
                for n in itertools.count(1):
                    if not target.exists():
                        break
                    target = quarantine / f"{path.name}.{stamp}.{n}"
                path.rename(target)
                logger.warning("moved %s to %s (kept for inspection; delete it when done)", path, target)
        ocp.multihost.sync_global_processes(f"glm_jax_checkpoint_quarantine_{next(self._barrier_ids)}")


def _absolute(directory: str) -> epath.Path:
    # Local paths become absolute, so that logged paths are unambiguous and a later
    # chdir cannot redirect saves; URLs (gs://...) are left alone.
    if "://" in directory:
        return epath.Path(directory)
    return epath.Path(directory).expanduser().resolve()


def _config_text(config: Any) -> str:
    return config if isinstance(config, str) else to_yaml(config)


def _path_str(path: Sequence[Any]) -> str:
    """A key path as ``opt_state/0/mu/layers_0/kernel``, the same for a namedtuple
    in the target and the dict orbax's metadata has in its place."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _check_abstract(abstract_state: PyTree) -> None:
    bad = [
        f"{_path_str(path)}: {leaf!r}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        if not isinstance(leaf, jax.ShapeDtypeStruct) or leaf.sharding is None
    ]
    if bad:
        raise ValueError(
            f"the restore target needs a jax.ShapeDtypeStruct with a sharding at every leaf; got:{_listing(bad)}"
        )


def _check_matches(abstract_state: PyTree, saved_tree: PyTree, where: str) -> None:
    """Raises ValueError naming every leaf that is missing on either side or whose
    shape differs: a wrong target (e.g. a changed model config), not a bad checkpoint."""
    flatten = jax.tree_util.tree_flatten_with_path
    target = {_path_str(p): tuple(leaf.shape) for p, leaf in flatten(abstract_state)[0]}
    saved = {_path_str(p): tuple(getattr(leaf, "shape", ())) for p, leaf in flatten(saved_tree)[0]}
    problems = [f"{k}: not in the checkpoint" for k in sorted(target.keys() - saved.keys())]
    problems += [f"{k}: in the checkpoint, not in the target" for k in sorted(saved.keys() - target.keys())]
    problems += [
        f"{k}: saved shape {saved[k]}, target shape {target[k]}"
        for k in sorted(target.keys() & saved.keys())
        if target[k] != saved[k]
    ]
    if problems:
        raise ValueError(f"{where} does not match the restore target:{_listing(problems)}")


def _listing(lines: Sequence[str], limit: int = 20) -> str:
    """Indented lines for an error message, at most ``limit`` of them."""
    more = [f"... and {len(lines) - limit} more"] if len(lines) > limit else []
    return "".join(f"\n  {line}" for line in [*lines[:limit], *more])
