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
