"""glm_jax/host_memory.py: when glm-jax changes glibc's malloc, and that XLA:CPU's
freed buffers are then reused instead of being mapped and zero-filled again."""

import importlib.util
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glm_jax import host_memory

REPO = Path(__file__).resolve().parents[1]

# A program with one 64 MiB temporary (the barrier keeps XLA from fusing it away),
# run 30 times in a fresh interpreter; prints the median minor page faults of the
# last 10 runs. Kept memory is not reused at once: a run's buffers are freed just
# after its result is ready, so the next run may ask before they are back, and
# posix_memalign asks a little more than a freed buffer of the same size holds; the
# heap grows to a few buffers (5 here), then every run reuses one.
PROBE = textwrap.dedent("""
    import resource, statistics, sys
    from glm_jax import host_memory
    if sys.argv[1] == "retain":
        assert host_memory.retain_freed_memory().applied
    import jax, jax.numpy as jnp

    @jax.jit
    def f(scale):
        y = jnp.sin(jnp.arange(1 << 24, dtype=jnp.float32) * scale)
        return jnp.sum(jnp.cos(jax.lax.optimization_barrier(y)))

    assert f.lower(1.0).compile().memory_analysis().temp_size_in_bytes >= 1 << 26
    faults = []
    for i in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(float(i)).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(statistics.median(faults[-10:]))
""")
TEMP_PAGES = (1 << 26) // 4096


def _probe_faults(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)  # one device is enough
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_retained_memory_is_reused_without_page_faults():
    system = _probe_faults("system")
    if system < 0.5 * TEMP_PAGES:  # e.g. transparent huge pages always on: few faults either way
        pytest.skip(f"this kernel faulted {system} pages per run of a 16384-page buffer: nothing to save")
    retained = _probe_faults("retain")
    # glibc's defaults map the buffer afresh each run (16384 faults); kept memory is
    # reused: a few faults at most.
    assert system >= 0.9 * TEMP_PAGES
    assert retained < 0.01 * TEMP_PAGES, (retained, system)


def test_too_late_once_jax_is_imported():
    import jax

    assert jax.devices()  # this process runs JAX already: its threads own their arenas

    outcome = host_memory.retain_freed_memory()
    assert not outcome.applied
    assert "already imported" in outcome.reason and "MALLOC_ARENA_MAX=1" in outcome.reason


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("CPU", True), ("cpu,tpu", False), ("cuda", False),
                                                 ("tpu", False)])
def test_runs_on_cpu_reads_jax_platforms(platforms, expected):
    assert host_memory.runs_on_cpu({"JAX_PLATFORMS": platforms}) is expected


def test_runs_on_cpu_without_jax_platforms_looks_for_accelerator_plugins(monkeypatch):
    installed = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert host_memory.runs_on_cpu({})
    installed.add("libtpu")
    assert not host_memory.runs_on_cpu({})
    installed.clear()
    installed.add("jax_cuda12_plugin")
    assert not host_memory.runs_on_cpu({"JAX_PLATFORMS": ""})


def test_configure_process_modes(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "retain_freed_memory",
                        lambda: calls.append(1) or host_memory.Outcome(True, "retained"))
    assert host_memory.configure_process({"JAX_PLATFORMS": "cpu"}).applied  # auto, on CPU
    assert not host_memory.configure_process({"JAX_PLATFORMS": "tpu"}).applied  # auto, accelerator
    assert host_memory.configure_process({"JAX_PLATFORMS": "tpu", "GLM_JAX_HOST_MALLOC": "retain"}).applied
    outcome = host_memory.configure_process({"JAX_PLATFORMS": "cpu", "GLM_JAX_HOST_MALLOC": "System"})
    assert outcome == host_memory.Outcome(False, "GLM_JAX_HOST_MALLOC=system")
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"GLM_JAX_HOST_MALLOC='keep': expected one of auto, retain, system"):
        host_memory.configure_process({"GLM_JAX_HOST_MALLOC": "keep"})


def test_cli_entry_applies_it_before_jax(tmp_path):
    # `python -m glm_jax.cli` in a fresh process: the console script's path. With
    # GLM_JAX_HOST_MALLOC=retain the settings are made (glibc), so the reason reads so.
    env = dict(os.environ, GLM_JAX_HOST_MALLOC="retain", GLM_JAX_VERBOSE="1")
    done = subprocess.run([sys.executable, "-m", "glm_jax.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0
    expected = "glibc keeps freed memory" if platform.libc_ver()[0] == "glibc" else "not glibc"
    assert f"glm-jax: host memory: {expected}" in done.stderr


def test_cli_entry_names_a_bad_mode():
    env = dict(os.environ, GLM_JAX_HOST_MALLOC="keep")
    done = subprocess.run([sys.executable, "-m", "glm_jax.cli", "--help"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "glm-jax: error: GLM_JAX_HOST_MALLOC='keep': expected one of auto, retain, system")


@pytest.mark.slow  # two child processes, each compiling three small programs: CI's slow step
def test_the_benchmark_runs_both_modes_at_toy_size():
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "host_memory.py"), "--hidden", "64", "--layers", "2", "--heads",
         "2", "--vocab", "512", "--batch", "2", "--seq", "64", "--part-a", "48", "--processes", "2", "--rounds", "1",
         "--no-append"], cwd=REPO, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith(("| system", "| retain"))]
    assert [cells[0].strip() for cells in rows] == ["system", "retain"]
    assert all(re.fullmatch(r"\d+(\.\d+)?", cell.strip()) for cells in rows for cell in cells[1:])
    assert "train step retain / system time" in done.stdout
