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
    # The devices a cell ends with show as a short table (a header and a row each), not a screen of dicts.
    (joined,) = [i for i, cell in enumerate(notebook.cells) if cell.source.endswith("wait_for_devices(1, timeout=90)")]
    (shown,) = [o["data"]["text/plain"] for o in outputs[joined] if o.get("output_type") == "execute_result"]
    assert shown.startswith("id    state") and len(shown.splitlines()) == 2 and "d1 " in shown
    assert "rows sum to 1: True" in texts  # the expression cell
    assert "inner dimensions 129 and 300 must be equal" in texts  # the deliberate error cell
    assert "broker stopped" in texts
    # The panel was shown (its state is saved) and, once stopped, replaced by a line saying how to start anew.
    assert notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert "this session has ended. Run %webnet start" in texts and "token=" not in nbformat.writes(notebook)


MODELS = NOTEBOOK.parent / "models.ipynb"


def test_the_models_notebook_runs_top_to_bottom() -> None:
    """The seed project's demo from a torch module, a CNN and a GPT-style decoder; weights sent once."""
    notebook = nbformat.read(MODELS, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()  # the error cell is tagged raises-exception
    cells = notebook.cells
    texts = "\n".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("evalue", "")
        for cell in cells
        for o in cell.get("outputs", [])
    )
    errors = [(i, o["ename"]) for i, cell in enumerate(cells) for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]  # fmt: skip
    assert len(errors) == 1 and errors[0][1] == "ShapeError", errors  # only the deliberate one
    assert "Open In Colab" in cells[0].source
    assert "first call sent" in texts and "the next" in texts
    assert "max |webnet - torch| =" in texts and "next tokens:" in texts
    assert "got shape (2, 3, 64)" in texts  # the deliberate error names the input and its shape
    assert "broker stopped" in texts
