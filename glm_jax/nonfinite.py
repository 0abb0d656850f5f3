"""The non-finite guard: a diverged run never saves, exports or keeps training on NaNs.

Every train step (pretraining and fine-tuning alike) reports a device flag,
``metrics['nonfinite']``: 1.0 when the step's loss, its gradient norm or the norm
of the updated parameters is NaN or infinite (:func:`glm_jax.train.apply_update`).
Two policies, ``train.on_nonfinite`` (``finetune.on_nonfinite``):

* ``stop`` (default): the step is applied as usual, and the loop stops before it
  saves or exports anything after the bad step. Every checkpoint on disk predates
  the divergence, no good checkpoint is rotated out by a bad one, and the run
  exits with :data:`EXIT_NONFINITE` naming the step and the last good checkpoint.
* ``skip_step``: the step leaves the parameters and the optimizer state as they
  were (the data position and the step count still advance, as in MaxText and
  Levanter), the skipped steps are counted in the metrics, and the run stops as
  above after ``max_consecutive_skips`` skips in a row.

The flags stay on the device until :meth:`NonFiniteGuard.check` fetches them all
at once; the loops call it where they already sync with the host (each log
interval) and before every save, evaluation and export, so the guard adds no
host sync to the steps in between.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np

POLICIES = ("stop", "skip_step")
# The process exit code of a run stopped by this guard (see docs/checkpoints.md).
EXIT_NONFINITE = 3


class NonFiniteError(RuntimeError):
    """The run diverged; the message names the step and what was kept."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def check_policy(policy: str, max_consecutive_skips: int, section: str) -> None:
    """Validates the two config keys of ``section`` (``train`` or ``finetune``)."""
    if policy not in POLICIES:
        raise ValueError(f"{section}.on_nonfinite must be one of {POLICIES}, got {policy!r}")
    if max_consecutive_skips < 1:
        raise ValueError(f"{section}.max_consecutive_skips must be >= 1, got {max_consecutive_skips}")


class NonFiniteGuard:
    """Collects the steps' device flags and acts on them at the loop's sync points.

    Args:
      policy: ``stop`` or ``skip_step``.
      max_consecutive_skips: with ``skip_step``, stop after this many skipped steps
        in a row.
      section: the config section that holds the policy, for messages.
    """

    def __init__(self, policy: str, max_consecutive_skips: int, section: str = "train"):
        check_policy(policy, max_consecutive_skips, section)
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.section = section
        self.skipped = 0  # skipped steps since the run (or its resumption) started
        self._consecutive = 0
        self._pending: list[tuple[int, Any]] = []

    def observe(self, step: int, metrics: dict[str, Any]) -> None:
        """Records ``metrics['nonfinite']`` of ``step`` (no host sync)."""
        self._pending.append((step, metrics["nonfinite"]))

    def check(self, last_good: Optional[str]) -> int:
        """Fetches the pending flags (one host sync) and applies the policy.

        Args:
          last_good: what a user can go back to (e.g. "checkpoint step 40 in DIR"),
            for the message; None if nothing was saved yet.

        Returns:
          How many of the pending steps were skipped.

        Raises:
          NonFiniteError: a bad step under ``stop``, or too many skips in a row.
        """
        if not self._pending:
            return 0
        steps = [step for step, _ in self._pending]
        flags = np.asarray(jax.device_get([flag for _, flag in self._pending]), np.float32)
        self._pending = []
        kept = f"the last good state is {last_good}" if last_good else "no checkpoint was saved before it"
        skipped = 0
        for step, bad in zip(steps, flags):
            if not bad:
                self._consecutive = 0
                continue
            if self.policy == "stop":
                raise NonFiniteError(
                    f"training diverged: the loss or gradient became NaN/inf at step {step} "
                    f"({self.section}.on_nonfinite=stop); nothing from that step on was saved, and {kept}. "
                    f"Lower optimizer.learning_rate, or set {self.section}.on_nonfinite=skip_step",
                    step,
                )
            skipped += 1
            self._consecutive += 1
            if self._consecutive >= self.max_consecutive_skips:
                raise NonFiniteError(
                    f"training diverged: {self._consecutive} steps in a row up to step {step} had a NaN/inf "
                    f"loss or gradient and were skipped ({self.section}.max_consecutive_skips="
                    f"{self.max_consecutive_skips}); {kept}",
                    step,
                )
        self.skipped += skipped
        return skipped
