"""Shared test setup: 8 fake CPU devices, float32 matmuls, the official fixture."""

import os

# Must happen before jax is imported anywhere: multi-device code is tested on a
# fake 8-device CPU platform (data=2, fsdp=2, tensor=2).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The embedded corpus and its vocabulary are built once per test session into a
# temporary cache (never the user's ~/.cache), shared by every test that needs them.
if "GLM_JAX_CACHE" not in os.environ:
    import tempfile

    os.environ["GLM_JAX_CACHE"] = tempfile.mkdtemp(prefix="glm_jax_test_cache_")

# One persistent compilation cache per test session, shared with the subprocesses the
# tests start: several tests compile the same program again (every pretrain.run builds
# its own jitted step), and a cache hit skips only XLA's compile, never the run. JAX's
# default threshold keeps it to compiles over a second, so writing entries costs
# little; tests/test_pretrain.py drops from ~87 s to ~50 s on 2 cores.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="glm_jax_test_xla_cache_")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """The official tiny GLM fixture (../shared/fixtures/official_glm_tiny by default)."""
    default = REPO.parent / "shared" / "fixtures" / "official_glm_tiny"
    return Path(os.environ.get("GLM_JAX_FIXTURES", default))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    path = fixture_dir()
    if not (path / "io.npz").exists():
        pytest.fail(f"official GLM fixture not found at {path}; set GLM_JAX_FIXTURES")
    return path


@pytest.fixture(scope="session")
def official_io(official_dir) -> dict:
    return dict(np.load(official_dir / "io.npz"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The embedded corpus and its sentencepiece model, built once per test session
    where the registered embedded tasks look for it ($GLM_JAX_CACHE)."""
    from glm_jax.data import corpus

    return corpus.embedded_corpus().directory
