"""The console is for the user: native libraries' start-up chatter is filtered out.

TensorFlow (seqio's data pipeline), XLA and sentencepiece write log lines from C++
straight to file descriptor 2, before and regardless of Python's logging:
``All log messages before absl::InitializeLog() ...``, ``oneDNN custom operations
are on``, ``failed call to cuInit``, ``precompiled_charsmap is empty``. A newcomer
reads them as errors, before anything of ours. ``TF_CPP_MIN_LOG_LEVEL`` does not
stop them in TensorFlow 2.21 (they are written before absl logging is set up), so
:class:`NativeLogFilter` puts a pipe in place of descriptor 2 and forwards every
line except those chatter lines to the real stderr. Python's own warnings and
tracebacks go through unchanged; so do native errors that are not known chatter
(``E``-level lines from other sources, and every ``F``atal line).

``glm-jax --debug`` (and ``GLM_JAX_VERBOSE=1``) leaves the console alone.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import sys
import threading
from typing import Optional

# One glog/absl line: severity, date, time, thread, file:line].
_NATIVE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ ([\w./-]+):\d+\] (.*)")
# Error-level lines that are only noise on a machine without the hardware they probe.
_NOISY_ERRORS = (
    rb"failed call to cuInit", rb"Unable to register cu", rb"oneDNN supports DT_", rb"cuda_dnn", rb"cuda_fft",
    rb"cuda_blas",
)
_CHATTER = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(rb"^normalizer\.cc\(\d+\) LOG\(INFO\)"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow"),
)
# Python loggers of libraries that talk to their developers, not to ours (seqio's
# "'logger_cls' is empty"; orbax logs a failed save with three tracebacks before
# it raises the error, which glm-jax then reports in one line).
_QUIET_LOGGERS = ("absl", "tensorflow", "jax._src.xla_bridge", "asyncio")
# Python tracebacks that storage libraries print (not raise) from their callback
# threads after a failed write that glm-jax has already reported.
_NOISE_EXCEPTIONS = (re.compile(rb"^RuntimeError: Event loop is closed$"),)
_TRACEBACK = b"Traceback (most recent call last):"


def is_chatter(line: bytes) -> bool:
    """Whether a line written to stderr is known native chatter."""
    match = _NATIVE.match(line)
    if match:
        severity, message = match.group(1), match.group(3)
        if severity in (b"I", b"W"):
            return True
        return severity == b"E" and any(noise in message for noise in _NOISY_ERRORS)
    return any(pattern.match(line) for pattern in _CHATTER)


class NativeLogFilter:
    """Replaces descriptor 2 with a pipe whose lines are forwarded unless chatter.

    Use as a context manager around a command. Not re-entrant; the main thread's
    ``sys.stderr`` keeps working (it writes to descriptor 2).
    """

    def __init__(self) -> None:
        self._user_fd: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._fault_fd: Optional[int] = None

    def __enter__(self) -> NativeLogFilter:
        sys.stderr.flush()
        self._user_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        if faulthandler.is_enabled():
            # A crash or hang dump must reach the user even when the process is
            # stuck holding the GIL, which would also stop the pump thread.
            self._fault_fd = os.dup(self._user_fd)
            faulthandler.enable(file=self._fault_fd, all_threads=True)
        self._thread = threading.Thread(target=self._pump, args=(read_fd, self._user_fd), daemon=True,
                                        name="glm-jax-stderr")
        self._thread.start()
        return self

    @staticmethod
    def _pump(read_fd: int, user_fd: int) -> None:
        traceback: list[bytes] = []  # a printed traceback, held until its last line

        def forward(line: bytes) -> None:
            if traceback:
                if line.startswith(b" "):
                    traceback.append(line)
                    return
                block = [*traceback, line]
                traceback.clear()
                if not any(noise.match(line) for noise in _NOISE_EXCEPTIONS):
                    os.write(user_fd, b"\n".join(block) + b"\n")
            elif line == _TRACEBACK:
                traceback.append(line)
            elif not is_chatter(line):
                os.write(user_fd, line + b"\n")

        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    forward(line)
            if traceback:
                os.write(user_fd, b"\n".join(traceback) + b"\n")
            if pending and not is_chatter(pending):
                os.write(user_fd, pending)

    def __exit__(self, *exc_info) -> None:
        sys.stderr.flush()
        # Putting the real stderr back closes the pipe's write end: the pump sees
        # EOF, forwards what is left and ends (a child process holding the pipe open
        # could delay that, hence the timeout).
        os.dup2(self._user_fd, 2)
        self._thread.join(timeout=5)
        os.close(self._user_fd)
        if self._fault_fd is not None:
            faulthandler.enable(file=2, all_threads=True)  # descriptor 2 is the real stderr again
            os.close(self._fault_fd)
            self._fault_fd = None


def quiet_library_loggers() -> None:
    """Silences chatty libraries' Python loggers: whatever goes wrong there reaches
    the user as the exception glm-jax reports (``--debug`` shows the logs)."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def verbose_requested() -> bool:
    return os.environ.get("GLM_JAX_VERBOSE", "") not in ("", "0")
