"""A watchdog for the part of a checkpoint save that runs in the calling thread.

Why it exists: see :class:`SaveWatchdog`; ``Checkpointer.save`` uses it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional


class SaveWatchdog:
    """Interrupts the main thread when storage breaks during the blocking part of a save.

    orbax 0.12 runs part of every save in the calling thread, waiting on signals
    from helper threads; when the directory becomes unwritable mid-save, the
    helper that fails never sends its signal and the caller waits forever (seen
    in tests/test_faults.py). While that part runs, this watchdog probes the
    directory once a second; if the probe fails, it raises the probe's error in
    the main thread (a signal whose handler raises: a blocked ``join`` is
    interruptible). It does nothing outside the main thread, where Python cannot
    install signal handlers.
    """

    SIGNAL = signal.SIGUSR1

    def __init__(self, probe, interval_s: float = 1.0):
        self._probe = probe
        self._interval_s = interval_s
        self._error: Optional[OSError] = None
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "SaveWatchdog":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = signal.signal(self.SIGNAL, self._raise_in_main_thread)
        self._thread = threading.Thread(target=self._watch, daemon=True, name="glm-jax-save-watchdog")
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                self._probe()
            except OSError as e:
                self._error = e
                signal.pthread_kill(threading.main_thread().ident, self.SIGNAL)
                return

    def _raise_in_main_thread(self, signum: int, frame: Any) -> None:
        del signum, frame
        if self._error is not None:
            raise self._error

    def __exit__(self, *exc_info: Any) -> None:
        if self._thread is None:
            return
        self._done.set()
        self._thread.join()
        signal.signal(self.SIGNAL, self._previous)
