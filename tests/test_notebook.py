"""notebooks/quickstart.ipynb runs top to bottom in a real kernel, with a local worker for the phone.

Outside Colab and Kaggle, ``%webnet start`` (tunnel "auto") opens no tunnel, as here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs_top_to_bottom() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3").execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells)}
    texts = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("evalue", "")
        for cell_outputs in outputs.values()
        for o in cell_outputs
    )
    assert "Open In Colab" in notebook.cells[0].source and "NGROK_AUTHTOKEN" in notebook.cells[0].source
    assert "max |C - A@B| =" in texts
    assert "rows sum to 1: True" in texts  # the expression cell
    assert "inner dimensions 129 and 300 must be equal" in texts  # the deliberate error cell
    assert "broker stopped" in texts
    widgets = [o for cell_outputs in outputs.values() for o in cell_outputs if o.get("output_type") == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in o["data"] for o in widgets)
