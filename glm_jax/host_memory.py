"""Host memory for XLA:CPU's buffers: keep what a step frees for the next step.

XLA:CPU allocates every execution's buffers (the temporaries and the outputs) with
``posix_memalign`` and frees them when it ends. Under glibc's default settings a
buffer above 64 MiB that a worker thread asks for comes from that thread's own
arena, which cannot hold it, so glibc maps it with ``mmap`` and unmaps it on free,
whatever ``M_MMAP_MAX`` says. The next step then maps the same size again and the
kernel zero-fills it page by page as the kernels first write it. For issue 18's
train step on 2 CPU cores (1.3 GB of temporaries) that is 370,000 page faults and
0.73 s of system CPU time per 3.6 s step; with freed memory kept: none, and the
step takes 0.87x the time, the forward 0.86x, the optimizer update alone 0.57x
(benchmarks/host_memory.py, RESULTS.md "Host memory"). The price is memory: the
heap keeps its largest size, and because ``posix_memalign`` asks a little more than
a freed buffer of the same size holds, it can hold a few copies of a large buffer
before every step reuses one (peak RSS 3.6-4.0 -> 4.0-4.4 GiB on that step).

:func:`retain_freed_memory` sets glibc's ``mallopt`` so that freed buffers stay in
the process and the next step reuses them: one arena (every thread allocates from
the main heap, which grows with ``brk``), no ``mmap`` for large blocks, and no
trimming of the heap's free top below 2 GiB (``mallopt`` takes an ``int``; the
environment variables in :data:`ENVIRONMENT` take any size). The settings must be
made before JAX starts its thread pools: a thread keeps the arena it first
allocated from, so the function refuses once ``jax`` is imported.

``glm-jax`` applies it when the process will run on CPU (:func:`configure_process`);
``GLM_JAX_HOST_MALLOC`` chooses: ``auto`` (the default: only when JAX will run on
CPU), ``retain`` (always) or ``system`` (never). Accelerator hosts keep glibc's
defaults: their steps' buffers live on the device, and one arena would make the
input pipeline's threads contend for its lock.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import os
import platform
import sys
from typing import Mapping, Optional

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
#: The largest value ``mallopt`` accepts (its argument is a C ``int``).
_INT_MAX = 2**31 - 1
#: Free memory glibc keeps above the heap's top when it does trim (a buffer of that
#: size or less is then reused without faults).
TOP_PAD_BYTES = 64 << 20

#: The same settings for a shell (``export`` them before Python starts); glibc reads
#: them as sizes, so the trim threshold has no 2 GiB cap there.
ENVIRONMENT = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(TOP_PAD_BYTES),
}

#: ``GLM_JAX_HOST_MALLOC``'s values.
MODES = ("auto", "retain", "system")
MODE_VARIABLE = "GLM_JAX_HOST_MALLOC"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`retain_freed_memory` or :func:`configure_process` did: ``applied``,
    and in words why (or why not)."""

    applied: bool
    reason: str


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's C library when it is glibc (``mallopt`` with glibc's parameters)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> Outcome:
    """Make glibc keep and reuse the memory XLA:CPU frees after each execution.

    Call it first in a process, before ``import jax``; returns what it did. Later
    (``jax`` imported) it changes nothing: threads that already own an arena keep
    it, so large buffers would still be mapped and unmapped per step.
    """
    if "jax" in sys.modules or "jaxlib" in sys.modules:
        return Outcome(False, "jax is already imported: set it before, or export "
                              + " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items()))
    libc = _glibc()
    if libc is None:
        return Outcome(False, "the C library is not glibc")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX), (M_TOP_PAD, TOP_PAD_BYTES))
    refused = [param for param, value in settings if libc.mallopt(param, value) != 1]
    if refused:
        return Outcome(False, f"glibc's mallopt refused parameter(s) {refused}")
    return Outcome(True, "glibc keeps freed memory: one arena, no mmap, heap trimmed only above 2 GiB free")


def runs_on_cpu(environ: Mapping[str, str]) -> bool:
    """Whether JAX will pick the CPU, decided without importing it: ``JAX_PLATFORMS``
    when set (CPU only when it names nothing else), else whether an accelerator's
    PJRT plugin (libtpu, CUDA, ROCm) is installed."""
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return all(p == "cpu" for p in platforms)
    plugins = ("libtpu", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
               "jax_rocm7_plugin")
    return not any(importlib.util.find_spec(name) is not None for name in plugins)


def configure_process(environ: Mapping[str, str] = os.environ) -> Outcome:
    """Apply :func:`retain_freed_memory` as ``GLM_JAX_HOST_MALLOC`` asks (see the
    module's docstring); a value outside :data:`MODES` is a ``ValueError`` naming it."""
    mode = environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={environ[MODE_VARIABLE]!r}: expected one of {', '.join(MODES)}")
    if mode == "system":
        return Outcome(False, f"{MODE_VARIABLE}=system")
    if mode == "auto" and not runs_on_cpu(environ):
        return Outcome(False, "JAX will run on an accelerator (JAX_PLATFORMS or an installed plugin)")
    return retain_freed_memory()
