"""Preemption notice: SIGTERM (or Ctrl-C) sets a flag that the train loop polls.

A scheduler that preempts a job sends SIGTERM and, after a grace period, SIGKILL.
Python's default for SIGTERM is to die at once, losing everything since the last
checkpoint; inside ``install_preemption_handler()`` it only sets a flag, and the
loop (``Checkpointer.should_stop``) saves the step it reached and stops. The
process should then exit with :func:`preempted_exit_code` (128 + the signal, 143
for SIGTERM), so that a scheduler tells a preempted run from a finished one.

A second signal ends the process at once (exit code 128 + signal): whatever the
loop is waiting for, the user can always stop it. Checkpoints already committed
are safe; a save in flight stays uncommitted and is set aside at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax

logger = logging.getLogger(__name__)

# Process-global, like the signal disposition they mirror.
_PREEMPTION_NOTICE = threading.Event()
_SIGNALS_RECEIVED: list[int] = []
# Exit code when the stop came from JAX's preemption service (no signal of ours).
DEFAULT_PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def _on_preemption_signal(signum: int, frame: Any) -> None:
    del frame
    if _PREEMPTION_NOTICE.is_set():
        # The second signal: the user (or scheduler) insists. os.write, not print:
        # this may interrupt a print in the main thread.
        os.write(2, f"glm-jax: stopped by a second {signal.Signals(signum).name}, without saving\n".encode())
        time.sleep(0.2)  # let glm_jax.console's stderr filter forward the line
        os._exit(128 + signum)
    # Only set the flag: the handler interrupts arbitrary code in the main thread.
    # Checkpointer.should_stop logs when it sees the flag.
    _SIGNALS_RECEIVED.append(signum)
    _PREEMPTION_NOTICE.set()


def preemption_requested() -> bool:
    """True once a preemption signal arrived inside ``install_preemption_handler``."""
    return _PREEMPTION_NOTICE.is_set()


def preempted_exit_code() -> int:
    """The exit code of a run that stopped for a preemption: 128 + the first signal
    received (143 for SIGTERM, 130 for SIGINT), 143 when JAX's preemption service
    stopped it."""
    return 128 + _SIGNALS_RECEIVED[0] if _SIGNALS_RECEIVED else DEFAULT_PREEMPTED_EXIT_CODE


@contextlib.contextmanager
def install_preemption_handler(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, SIGTERM or SIGINT (or ``signals``) asks the run to
    checkpoint and stop; a second one exits at once.

    The first signal only sets a flag that ``preemption_requested`` (and
    ``Checkpointer.should_stop``) report. The flag lives as long as the block (it
    is cleared on entry; the signal is remembered for :func:`preempted_exit_code`)
    and the previous handlers come back on exit. Call from the main thread
    (Python installs signal handlers only there).

    In a multi-process run the handler is not installed: JAX's preemption service
    (``jax.distributed``) already receives SIGTERM and makes every host reach
    ``should_stop`` at the same step, which one host's own flag could not (the
    others would block in the next collective).
    """
    if jax.process_count() > 1:
        logger.info("multi-process run: SIGTERM is left to JAX's preemption service")
        yield
        return
    _PREEMPTION_NOTICE.clear()
    _SIGNALS_RECEIVED.clear()
    previous = {sig: signal.signal(sig, _on_preemption_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _PREEMPTION_NOTICE.clear()
