"""notebooks/quickstart.ipynb runs top to bottom (headless, small settings).

The notebook's own switch GLM_JAX_NOTEBOOK_QUICK=1 shortens pretraining and
fine-tuning; every cell must run without error, as on a CPU Colab.

Marked slow (~100 s on 2 cores, the longest test): CI runs it in its slow step, so
the notebook still executes on every CI run while the default suite keeps a margin
under its 15 minutes.
"""

import os

import nbclient  # the [test] extra installs them; a missing one must fail, not skip
import nbformat
import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {
        "GLM_JAX_NOTEBOOK_QUICK": "1",
        "GLM_JAX_NOTEBOOK_DIR": str(tmp_path / "work"),
        # One device, as on a CPU Colab (the test session's 8 fake devices stay here).
        "XLA_FLAGS": "",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
        client.execute()  # raises CellExecutionError naming the failing cell
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", []))
    assert "max |sharded - unsharded| =" in outputs
    assert "accuracy" in outputs
    assert (tmp_path / "work" / "pretrain" / "model" / "config.yaml").is_file()


def install_functions() -> dict:
    """The install cell's functions, defined without running its install."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    source = next(c.source for c in notebook.cells if c.cell_type == "code")
    definitions = source[: source.index("SOURCE = os.environ.get")]
    namespace: dict = {}
    exec(compile(definitions, "quickstart cell 1", "exec"), namespace)
    return namespace


def test_install_cell_picks_the_source_and_the_extra():
    """The notebook's first cell on a fake Colab runtime: a wheel, a git URL or a
    checkout; the tpu extra on a TPU runtime; a clear refusal without a source."""
    cell = install_functions()
    commands = cell["glm_jax_install_commands"]
    with pytest.raises(RuntimeError, match="set GLM_JAX_SOURCE to its git URL, a wheel file or a checkout"):
        commands(None, {})
    [wheel] = commands("dist/glm_jax-0.1.0-py3-none-any.whl", {"COLAB_TPU_ADDR": "10.0.0.2:8470"})
    assert wheel[-1] == f"glm-jax[tpu] @ file://{os.path.abspath('dist/glm_jax-0.1.0-py3-none-any.whl')}"
    clone, install = commands("https://github.com/OWNER/glm-jax.git", {})
    assert clone[:2] == ["git", "clone"] and install[-2:] == ["-e", "glm-jax"]
    [checkout] = commands("/src/glm-jax", {"TPU_ACCELERATOR_TYPE": "v5litepod-8"})
    assert checkout[-2:] == ["-e", "/src/glm-jax[tpu]"]
    # Installed already (this test environment): nothing runs.
    assert cell["install_glm_jax"]("anything", {}, run=lambda *a, **k: pytest.fail("ran pip")) == []


@pytest.mark.slow
def test_install_cell_installs_a_wheel_into_a_clean_venv(tmp_path):
    """The cell, run as on a fresh runtime: a wheel of this checkout built here,
    installed into a new venv by the cell's own code; glm_jax then imports from it.
    The venv reuses this environment's dependencies through PYTHONPATH (no network)."""
    import subprocess
    import sys
    import sysconfig

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, timeout=300)
    [wheel] = wheels.glob("glm_jax-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    definitions = "\n".join(["import os", "import sys"]) + "\n"
    script = tmp_path / "cell.py"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    source = next(c.source for c in notebook.cells if c.cell_type == "code")
    script.write_text(definitions + source[: source.index("QUICK = ")] + "import glm_jax\nprint('ok', glm_jax.__file__)\n")
    env = {**os.environ, "GLM_JAX_SOURCE": str(wheel), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    done = subprocess.run([str(venv / "bin" / "python"), str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok " + str(venv) in done.stdout, done.stdout
    # Without a source the cell refuses in one clear line.
    env.pop("GLM_JAX_SOURCE")
    other = tmp_path / "empty_venv"
    subprocess.run([sys.executable, "-m", "venv", str(other)], check=True, timeout=120)
    refused = subprocess.run([str(other / "bin" / "python"), str(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "set GLM_JAX_SOURCE" in refused.stderr
