"""The device panel in a real front end: JupyterLab on loopback, opened in headless Chromium.

The kernel, the widget manager and anywidget are JupyterLab's own; the worker is native.
While the matmul cell blocks waiting for a device, a worker joins, and the panel must
show it and then its finished job, without any cell running the update; then, with no
cell running at all, a second worker joins and the first one dies, and the panel follows.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from .conftest import Workers, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab serving ``tmp_path`` on 127.0.0.1; yields the notebook URL with its token."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext webnet_magic"),
        nbformat.v4.new_code_cell("%webnet start"),
        nbformat.v4.new_code_cell("import numpy as np\nX = np.ones((256, 256), np.float32)"),
        nbformat.v4.new_code_cell("%webnet matmul X X -> Y --timeout 120"),
        nbformat.v4.new_code_cell("print('Y ok:', float(Y[0, 0]))"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "panel.ipynb")
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.extension_manager=readonly", "--ServerApp.port_retries=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log = server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                    raise AssertionError(f"JupyterLab did not start: {log}") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/lab/tree/panel.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(20)


def test_the_panel_renders_and_updates_live_while_a_cell_blocks(page, lab: str, workers: Workers) -> None:
    page.set_default_timeout(120_000)
    page.goto(lab)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_selector("text=(ipykernel) | Idle")  # the kernel is up and connected
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")  # cell 4 blocks waiting for a device
    link = page.wait_for_selector(".webnet-panel a[href*='token=']")
    assert page.query_selector(".webnet-qr svg") is not None
    url = link.get_attribute("href")
    assert url and "webnet: 0 devices connected" in page.inner_text(".webnet-title")

    workers.start(url)  # the phone scans the code, while cell 4 is still blocking
    page.wait_for_selector(".webnet-panel tr[data-device='d1']")
    wait_until(lambda: "1 device connected" in page.inner_text(".webnet-title"), 30, "the title to update")
    jobs_cell = ".webnet-panel tr[data-device='d1'] td:nth-child(5)"
    page.wait_for_function(f"document.querySelector(\"{jobs_cell}\")?.textContent === '1'")
    # jobs done: the blocked cell's matmul ran on the worker, and the panel heard it live
    assert "llvmpipe" in page.inner_text(".webnet-panel tr[data-device='d1']")
    page.wait_for_selector("text=Y ok: 256.0")  # the cell after the matmul ran with Y bound
    assert re.fullmatch(r"sent [\d.]+ (KB|MB) · received [\d.]+ (KB|MB)", page.inner_text(".webnet-totals"))

    # The fleet changes with no cell running: a second device joins (and calibrates), the first leaves.
    workers.start(url, "--name", "second")
    page.wait_for_selector(".webnet-panel tr[data-device='d2']")
    wait_until(lambda: "2 devices connected" in page.inner_text(".webnet-title"), 30, "the title to count two")
    speed_cell = ".webnet-panel tr[data-device='d2'] td:nth-child(6)"
    page.wait_for_function(f'/F\\/s$/.test(document.querySelector("{speed_cell}")?.textContent)')
    workers.processes[0].kill()
    page.wait_for_selector(".webnet-panel tr[data-device='d1']", state="detached")
    wait_until(lambda: "1 device connected" in page.inner_text(".webnet-title"), 30, "the title to count one")
