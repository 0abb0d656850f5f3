"""Preemption notice: SIGTERM sets a flag that the train loop polls.

A scheduler that preempts a job sends SIGTERM and, after a grace period, SIGKILL.
Python's default for SIGTERM is to die at once, losing everything since the last
checkpoint; inside ``install_preemption_handler()`` it only sets a flag, and the
loop (``Checkpointer.should_stop``) saves the step it reached and exits cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax

logger = logging.getLogger(__name__)

# Process-global, like the signal disposition it mirrors.
_PREEMPTION_NOTICE = threading.Event()


def _on_preemption_signal(signum: int, frame: Any) -> None:
    del signum, frame
    # Only set the flag: the handler interrupts arbitrary code in the main thread.
    # Checkpointer.should_stop logs when it sees the flag.
    _PREEMPTION_NOTICE.set()


def preemption_requested() -> bool:
    """True once a preemption signal arrived inside ``install_preemption_handler``."""
    return _PREEMPTION_NOTICE.is_set()


@contextlib.contextmanager
def install_preemption_handler(signals: Sequence[int] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, SIGTERM (or ``signals``) asks the run to checkpoint and stop.

    The signal only sets a flag that ``preemption_requested`` (and
    ``Checkpointer.should_stop``) report. The flag lives as long as the block (it
    is cleared on entry and on exit) and the previous handlers come back on exit.
    Call from the main thread (Python installs signal handlers only there).

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
    previous = {sig: signal.signal(sig, _on_preemption_signal) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _PREEMPTION_NOTICE.clear()
