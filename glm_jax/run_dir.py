"""Checks on a run's output directory before any work starts, so a run never throws
away its own (or an earlier run's) work.

* :func:`check_writable`: the directory (created if absent) accepts files, checked
  by writing one, not by reading permission bits (which lie on network and
  read-only file systems).
* :func:`check_resume`: a directory that already holds a run may only be continued
  by the same model towards a later step. Another architecture, or a
  ``train.steps`` the run has passed, is refused with a line saying how to start a
  new ``train.output_dir`` or continue on purpose. Runtime fields (dtype, dropout,
  remat: ``glm_jax.model.config.RUNTIME_FIELDS``) may change.
* :func:`saved_steps`: the committed checkpoint steps, read from the directory
  names alone (no orbax, no TensorStore), cheap enough for a pre-flight check.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

import yaml

from glm_jax import config as config_lib
from glm_jax.model import ModelConfig
from glm_jax.model.config import architecture_changes

RUN_CONFIG = "config.yaml"


class RunDirError(ValueError):
    """The output directory cannot take this run; the message says what to do."""


def check_writable(path: str | os.PathLike, key: str) -> Path:
    """Proves that ``path`` (or, while it does not exist, the place it would be
    created) takes a file; returns it. Leaves nothing behind: directories created
    for the probe are removed again, so a run refused later leaves no trace.

    Raises:
      RunDirError: naming ``key`` (e.g. ``train.output_dir``), the path and the cause.
    """
    directory = Path(path).expanduser()
    if "://" in str(path):
        return directory  # remote storage: checked by the first checkpoint write
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    probe = directory / f".write-test-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{key}={path} is not writable: {e.strerror or e} ({e.filename or directory})") from None
    finally:
        for made in created:  # innermost first
            try:
                made.rmdir()
            except OSError:
                break
    return directory


def saved_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    """Committed checkpoint steps under ``checkpoint_dir`` (directories named by a
    step number; uncommitted saves carry a suffix and are not counted), ascending."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def saved_model_config(output_dir: str | os.PathLike) -> Optional[ModelConfig]:
    """The ``model`` section of the run's saved config.yaml, or None if there is none."""
    path = Path(output_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("model")
        return config_lib.from_dict(ModelConfig, section, where=str(path))
    except (yaml.YAMLError, ValueError, AttributeError) as e:
        raise RunDirError(f"{path}: cannot read the run's saved model config ({e}); move it aside to continue") from None


def check_resume(
    output_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    model: ModelConfig,
    steps: int,
    *,
    steps_key: str = "train.steps",
    output_key: str = "train.output_dir",
) -> Optional[int]:
    """Refuses to continue a run with another architecture or to a passed step.

    Returns:
      The newest committed checkpoint step, or None for a fresh directory.

    Raises:
      RunDirError: the directory's run has another architecture, or is past ``steps``.
    """
    previous = saved_model_config(output_dir)
    latest = (saved_steps(checkpoint_dir) or [None])[-1]
    if previous is None and latest is None:
        return None
    new_dir = f"start a new {output_key}"
    if previous is not None:
        changes = architecture_changes(model, previous)
        if changes:
            raise RunDirError(
                f"{output_key}={output_dir} holds a run of another model ({'; '.join(changes)}): {new_dir}, "
                f"or set the model back to continue it"
            )
    if latest is not None and latest > steps:
        raise RunDirError(
            f"{output_key}={output_dir} is already at step {latest}, past {steps_key}={steps}: {new_dir}, "
            f"or set {steps_key} above {latest} to continue it"
        )
    return latest
