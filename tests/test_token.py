"""The session token is shown when asked for (``%webnet url``) and in the panel's live QR code, and
nowhere else: not on a local worker's command line, not in what a notebook saves, not in messages.

Real parts throughout: a broker on loopback, headless Chromium, a real kernel over ZMQ, nbclient.
"""

from __future__ import annotations

import queue
import stat
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client.widget import ENDED_TEXT, QR_QUIET_ZONE, qr_svg
from webnet_magic.worker.launch import launch

from .conftest import wait_until
from .test_kernel import Kernel


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    if k.manager.is_alive():
        k.shutdown()


def command_lines() -> list[bytes]:
    """Every process's command line, as any local user can read it (``ps``)."""
    lines = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(path.read_bytes())
        except OSError:  # the process ended meanwhile
            continue
    return lines


def test_a_chromium_worker_keeps_the_token_off_every_command_line(broker: BrokerThread) -> None:
    """Chromium opens a private page (0600 in a 0700 folder) that forwards it to the link: it joins, and no
    process on the machine (the browser, its renderers, its GPU process) shows the token in its arguments."""
    worker = launch(broker.url, "browser")
    try:
        wait_until(broker.devices, 60, "the Chromium worker to join")
        assert not [line for line in command_lines() if broker.token.encode() in line]
        assert worker.profile is not None
        profile = Path(worker.profile.name)
        assert stat.S_IMODE(profile.stat().st_mode) == 0o700
        assert stat.S_IMODE((profile / "start.html").stat().st_mode) == 0o600
    finally:
        worker.stop()


def test_a_kernel_shows_the_token_only_when_asked(kernel: Kernel) -> None:
    """Start, status and a job with no device print the URL without its token; %webnet url prints the link;
    %webnet stop replaces the panel with a line saying the session ended, and empties its link and QR code."""
    assert kernel.execute("%load_ext webnet_magic").status == "ok"
    start = kernel.execute("%webnet start")
    link = kernel.execute("%webnet url").stdout.strip()
    token = link.split("token=")[1]
    status = kernel.execute("%webnet status")
    job = kernel.execute("import numpy as np\nA = np.ones((2, 2), np.float32)\n%webnet matmul A A -> C --timeout 1")
    assert job.error is not None and job.error["ename"] == "NoDeviceError"
    said = str(start.displays) + start.stdout + status.stdout + job.stdout + str(job.error)
    assert token not in said and "%webnet url shows the link with its token" in job.stdout + job.error["evalue"]
    assert link.split("?")[0] in status.stdout

    stop = kernel.execute("%webnet stop")
    assert stop.updates == [{"text/plain": ENDED_TEXT}, {"text/html": ""}]  # the panel, then its note
    states = [m["content"]["data"].get("state", {}) for m in stop.comms if m["msg_type"] == "comm_msg"]
    assert {"url": "", "qr_svg": "", "running": False}.items() <= {k: v for s in states for k, v in s.items()}.items()
    assert any(m["msg_type"] == "comm_close" for m in stop.comms)


def test_a_kernel_shutting_down_replaces_the_panel(kernel: Kernel) -> None:
    """A kernel shut down with its session running still tells the front end that the session ended."""
    assert kernel.execute("%load_ext webnet_magic").status == "ok"
    assert kernel.execute("%webnet start").status == "ok"
    kernel.manager.shutdown_kernel(now=False)  # a graceful shutdown, as JupyterLab's "Shut Down Kernel" asks
    updates = []
    while True:
        try:
            msg = kernel.client.get_iopub_msg(timeout=2)
        except queue.Empty:
            break
        if msg["msg_type"] == "update_display_data":
            updates.append(msg["content"]["data"])
    kernel.client.stop_channels()
    assert {"text/plain": ENDED_TEXT} in updates


def test_a_notebook_saved_after_start_holds_no_token(tmp_path: Path) -> None:
    """A notebook run by nbclient (as nbconvert --execute and papermill do, widget state included) and saved:
    the token appears nowhere in the file, though the run printed the link once, where asked."""
    nb = nbformat.v4.new_notebook()
    sources = ["%load_ext webnet_magic", "%webnet start", "%webnet status", "%webnet url", "%webnet stop"]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    link = nb.cells[3].outputs[0]["text"].strip()
    nb.cells[3].outputs = []  # the one place it was asked for
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    text = path.read_text()
    assert "?token=" in link and link.split("token=")[1] not in text
    assert "widget-state" in text  # the panel's state was saved, emptied of its link by %webnet stop


def test_the_qr_code_scales_and_has_the_standard_quiet_zone() -> None:
    """A viewBox (so a narrow output area scales it rather than cropping it), its natural size, crisp
    modules, and the first dark module 4 modules in from the edge."""
    svg = qr_svg("http://127.0.0.1:8888/?token=" + "x" * 24)
    side = int(svg.split('viewBox="0 0 ')[1].split(" ")[0])
    assert f'width="{side * 4}" height="{side * 4}"' in svg and 'shape-rendering="crispEdges"' in svg
    assert f'd="M{QR_QUIET_ZONE} {QR_QUIET_ZONE}.5h7' in svg  # the top-left finder pattern, after the margin
