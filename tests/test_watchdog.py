"""SaveWatchdog: a storage fault during a blocking wait becomes an exception in the main thread."""

import signal
import threading
import time

import pytest

from glm_jax.checkpointing.watchdog import SaveWatchdog


def test_a_failing_probe_interrupts_a_blocked_main_thread():
    calls = []

    def probe():
        calls.append(time.monotonic())
        if len(calls) >= 2:
            raise OSError(30, "Read-only file system")

    before = signal.getsignal(SaveWatchdog.SIGNAL)
    start = time.monotonic()
    with pytest.raises(OSError, match="Read-only file system"):
        with SaveWatchdog(probe, interval_s=0.1):
            threading.Event().wait(30)  # what orbax's join does when its helper thread died
    assert time.monotonic() - start < 5
    assert signal.getsignal(SaveWatchdog.SIGNAL) is before  # the handler is put back


def test_a_healthy_save_is_left_alone():
    with SaveWatchdog(lambda: None, interval_s=0.05):
        time.sleep(0.3)
