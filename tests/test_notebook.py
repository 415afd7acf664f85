"""notebooks/walkthrough.ipynb executes top to bottom (nbclient, the ``python3`` kernel of this interpreter), so
the walkthrough never rots."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks",
                        "walkthrough.ipynb")


def test_walkthrough_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # jupyter_client starts a kernel spec whose command is "python" with this interpreter (sys.executable),
    # so the kernel sees the same environment as the tests.
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    outputs = {i: "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                          for o in cell.get("outputs", []))
               for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(outputs.values())
    assert "report: " in text and "validate: " in text  # the CLI ran both stages
    assert "verdict" in text and "report.html" in text
