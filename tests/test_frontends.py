"""The device panel in the notebook front ends people use, each real, on loopback, in headless Chromium.

One Jupyter server serves JupyterLab 4, Notebook 7 and nbclassic at once.  In each, a user runs
``%webnet start``: the panel must render, its QR code read back from a screenshot (zbarimg) must be
the panel's own link, and a worker that joins must appear with no cell running.  The notebook the
front end saves must not hold the token, and opened again after the kernel has gone it must say that
the session ended and how to start one, with no link.  In JupyterLab, the panel must also follow a
cell that blocks waiting for a device, and a fleet that changes with no cell running.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nbformat
import pytest

from webnet_magic.broker.thread import BrokerThread

from .conftest import Workers, wait_until


class JupyterError(AssertionError):
    """The Jupyter server answered an API call with an error."""


@dataclass(frozen=True)
class Jupyter:
    """A Jupyter server on 127.0.0.1 serving ``root``, with its own token."""

    port: int
    token: str
    root: Path
    log: Path  # the server's output

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:
            said = self.log.read_text()[-3000:]
            raise JupyterError(f"{method} /api/{path}: {exc}; the server said: {said}") from None
        return json.loads(body) if body else None

    def kernel_ready(self) -> bool:
        """A kernel is idle with a front end connected to it (so a cell run now reaches it)."""
        try:
            kernels = self.api("GET", "kernels")
        except JupyterError:  # jupyter_server cannot list a kernel still starting (it has no last_activity yet)
            return False
        return any(k["connections"] and k["execution_state"] == "idle" for k in kernels)

    def shut_down_kernels(self) -> None:
        """End every session and its kernel (each kernel stops its broker on the way out)."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")

    def notebook(self, name: str, *sources: str) -> Path:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = self.root / name
        nbformat.write(nb, path)
        return path


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """JupyterLab's server, which also serves Notebook 7 (/notebooks) and nbclassic (/nbclassic)."""
    root = tmp_path_factory.mktemp("notebooks")
    settings = tmp_path_factory.mktemp("settings")
    workspaces = tmp_path_factory.mktemp("workspaces")
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news pop-up over the page
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Jupyter(port, secrets.token_hex(16), root, settings / "jupyter.log")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={server.token}", f"--ServerApp.root_dir={root}",
            "--LabApp.extension_manager=readonly", "--ServerApp.port_retries=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        # Settings and workspaces of its own: JupyterLab reopens the tabs a workspace remembers (in ~/.jupyter
        # by default), so an earlier run's notebooks could open beside the one a test means to run.
        env={**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(workspaces)},
        stdout=subprocess.DEVNULL,
        stderr=server.log.open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise JupyterError(f"the Jupyter server did not start: {server.log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        process.wait(20)


@dataclass(frozen=True)
class FrontEnd:
    """Where a front end opens a notebook, and how to tell that its kernel is up and to click into a cell."""

    name: str
    path: str  # with {} for the notebook's name
    idle: str  # present once the kernel is connected and idle
    cell: str  # a code cell's editor


FRONT_ENDS = [
    FrontEnd(
        "jupyterlab", "/lab/tree/{}", ".jp-Notebook-ExecutionIndicator[data-status='idle']", ".jp-Cell .cm-content"
    ),
    FrontEnd(
        "notebook7", "/notebooks/{}", ".jp-Notebook-ExecutionIndicator[data-status='idle']", ".jp-Cell .cm-content"
    ),
    FrontEnd("nbclassic", "/nbclassic/notebooks/{}", "#kernel_indicator_icon.kernel_idle_icon", ".cell .CodeMirror"),
]
SAVED_NOTE = "the session that showed its panel here has ended"


def open_notebook(chromium: Any, jupyter: Jupyter, front: FrontEnd, name: str) -> Any:
    """A fresh browser context on the notebook, its kernel connected and idle."""
    context = chromium.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(jupyter.url(front.path.format(name)))
    page.wait_for_selector(front.idle)
    wait_until(jupyter.kernel_ready, 60, f"{front.name}'s kernel")
    return page


def read_qr(element: Any, path: Path) -> str:
    """What zbarimg reads from a screenshot of ``element``."""
    element.screenshot(path=str(path))
    read = subprocess.run(["zbarimg", "--raw", "-q", str(path)], capture_output=True, text=True)
    assert read.returncode == 0, f"zbarimg read no QR code in {path} (status {read.returncode}; {read.stderr})"
    return read.stdout.strip()


def knock_with_a_wrong_token(port: int) -> None:
    """A WebSocket handshake with a wrong token, which the broker refuses."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET /ws?token=wrong HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        sock.recv(4096)


def broker_counts_refusals() -> bool:
    """Whether this version's broker reports refused connections (the panel shows them only then)."""
    broker = BrokerThread(calibrate=False).start()
    try:
        return "refused" in broker.fleet()
    finally:
        broker.stop()


@pytest.mark.parametrize("front", FRONT_ENDS, ids=[f.name for f in FRONT_ENDS])
def test_the_panel_works_and_a_saved_notebook_says_the_session_ended(
    chromium: Any, jupyter: Jupyter, workers: Workers, front: FrontEnd, tmp_path: Path
) -> None:
    """Start, read the QR code back, see a worker join live, save; reopened without the kernel, the
    notebook says the session ended and how to start one, and neither the file nor the page holds the token."""
    name = f"{front.name}.ipynb"
    saved = jupyter.notebook(name, "%load_ext webnet_magic\n%webnet start")
    try:
        page = open_notebook(chromium, jupyter, front, name)
        page.click(front.cell)
        page.keyboard.press("Shift+Enter")
        link = page.wait_for_selector(".webnet-panel a[href*='token=']").get_attribute("href")
        token = parse_qs(urlsplit(link).query)["token"][0]
        assert "webnet: 0 devices connected" in page.inner_text(".webnet-title")

        qr = page.query_selector(".webnet-qr svg")
        box = qr.bounding_box()
        assert box["width"] >= 148 and box["width"] == box["height"], box  # its own size, not the output area's
        assert read_qr(qr, tmp_path / f"{front.name}-qr.png") == link

        workers.start(link)  # with no cell running
        page.wait_for_selector(".webnet-panel tr[data-device='d1']")
        wait_until(lambda: "1 device connected" in page.inner_text(".webnet-title"), 30, "the title to count one")
        if broker_counts_refusals():
            knock_with_a_wrong_token(urlsplit(link).port)
            page.wait_for_selector(".webnet-totals:has-text('1 refused connection')")

        page.keyboard.press("Control+s")
        wait_until(lambda: "webnet-saved-note" in saved.read_text(), 30, f"{front.name} to save the notebook")
        text = saved.read_text()
        assert token not in text and "%webnet url" in text
        page.context.close()
        jupyter.shut_down_kernels()  # the session ends with no front end to hear it: the file stays as saved

        page = open_notebook(chromium, jupyter, front, name)
        page.wait_for_selector(f"text={SAVED_NOTE}")
        assert "%webnet start to start a new one" in page.inner_text("body")
        assert page.query_selector(".webnet-panel") is None and token not in page.content()
        page.context.close()
    finally:
        jupyter.shut_down_kernels()


def test_the_panel_renders_and_updates_live_while_a_cell_blocks(page: Any, jupyter: Jupyter, workers: Workers) -> None:
    """JupyterLab runs all cells: while the matmul cell blocks waiting for a device, a worker joins, and the
    panel shows it and then its finished job; then, with no cell running at all, a second worker joins and
    the first one dies, and the panel follows."""
    jupyter.notebook(
        "blocking.ipynb",
        "%load_ext webnet_magic",
        "%webnet start",
        "import numpy as np\nX = np.ones((256, 256), np.float32)",
        "%webnet matmul X X -> Y --timeout 120",
        "print('Y ok:', float(Y[0, 0]))",
    )
    try:
        page.set_default_timeout(120_000)
        page.goto(jupyter.url("/lab/tree/blocking.ipynb") + "&reset")  # only this notebook, nothing restored
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        page.wait_for_selector("text=(ipykernel) | Idle")
        wait_until(jupyter.kernel_ready, 60, "the kernel")
        page.click("li.lm-MenuBar-item:has-text('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        link = page.wait_for_selector(".webnet-panel a[href*='token=']")
        url = link.get_attribute("href")
        assert url and "webnet: 0 devices connected" in page.inner_text(".webnet-title")

        workers.start(url)  # the phone scans the code, while cell 4 is still blocking
        page.wait_for_selector(".webnet-panel tr[data-device='d1']")
        wait_until(lambda: "1 device connected" in page.inner_text(".webnet-title"), 30, "the title to update")
        jobs_cell = ".webnet-panel tr[data-device='d1'] td:nth-child(5)"
        page.wait_for_function(f"document.querySelector(\"{jobs_cell}\")?.textContent === '1'")
        # jobs done: the blocked cell's matmul ran on the worker, and the panel heard it live
        assert "llvmpipe" in page.inner_text(".webnet-panel tr[data-device='d1']")
        page.wait_for_selector("text=Y ok: 256.0")
        totals = page.inner_text(".webnet-totals")
        assert re.fullmatch(r"sent [\d.]+ (KB|MB) · received [\d.]+ (KB|MB)", totals)

        # The fleet changes with no cell running: a second device joins (and calibrates), the first leaves.
        workers.start(url, "--name", "second")
        page.wait_for_selector(".webnet-panel tr[data-device='d2']")
        wait_until(lambda: "2 devices connected" in page.inner_text(".webnet-title"), 30, "the title to count two")
        speed_cell = ".webnet-panel tr[data-device='d2'] td:nth-child(6)"
        page.wait_for_function(f'/F\\/s$/.test(document.querySelector("{speed_cell}")?.textContent)')
        workers.processes[0].kill()
        page.wait_for_selector(".webnet-panel tr[data-device='d1']", state="detached")
        wait_until(lambda: "1 device connected" in page.inner_text(".webnet-title"), 30, "the title to count one")
    finally:
        jupyter.shut_down_kernels()
