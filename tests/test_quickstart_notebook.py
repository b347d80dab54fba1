"""examples/quickstart.ipynb runs top to bottom (nbclient, the embedded model), so it cannot rot."""

import os
from pathlib import Path

import pytest

import attrscope

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs the test extra (nbformat)")
    nbclient = pytest.importorskip("nbclient", reason="needs the test extra (nbclient)")
    pytest.importorskip("ipykernel", reason="needs the test extra (ipykernel)")
    # the kernel imports this checkout's attrscope, whatever the installed one is
    package_root = str(Path(attrscope.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("attrscope Scores" in page and "data:image/png" in page for page in html)
    printed = "".join(o.get("text", "") for o in outputs)
    # the comparison's summary: the dashboard as text, one row per kind and direction
    assert "heads denoising" in printed and "lowest rho" in printed
