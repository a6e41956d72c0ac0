"""The extension in a real ipykernel, driven over ZMQ by jupyter_client as a front end would."""

from __future__ import annotations

import json
import queue
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from webnet_magic.testing.linkrelay import LOOPBACK, LinkRelay

from .conftest import Workers

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@dataclass
class Reply:
    """What one execution produced on iopub, in order, and its reply."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    displays: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    comms: list[dict[str, Any]] = field(default_factory=list)
    result: str | None = None


class Kernel:
    """A started kernel plus a blocking client."""

    def __init__(self) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.kernel_cmd = None
        self.manager.start_kernel(extra_arguments=["--HistoryManager.enabled=False"])
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.comm_log: list[dict[str, Any]] = []

    def execute(self, code: str, timeout: float = 120, on_iopub: Any = None) -> Reply:
        msg_id = self.client.execute(code)
        reply = Reply(status="")
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle status after {timeout} s for: {code}") from None
            kind, content = msg["msg_type"], msg["content"]
            if kind.startswith("comm_"):
                self.comm_log.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if on_iopub:
                on_iopub(msg)
            if kind == "stream":
                setattr(reply, content["name"], getattr(reply, content["name"]) + content["text"])
            elif kind == "display_data":
                reply.displays.append(content["data"])
            elif kind == "update_display_data":
                reply.updates.append(content["data"])
            elif kind.startswith("comm_"):
                reply.comms.append(msg)
            elif kind == "execute_result":
                reply.result = content["data"]["text/plain"]
            elif kind == "error":
                reply.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
        content = self.client.get_shell_msg(timeout=timeout)["content"]
        reply.status = content["status"]
        if reply.status == "error":  # IPython reports UsageError only here and on stderr
            reply.error = {k: content[k] for k in ("ename", "evalue")}
        return reply

    def value(self, expression: str) -> Any:
        reply = self.execute(f"import json as _j; print(_j.dumps({expression}))")
        assert reply.status == "ok", reply.error
        return json.loads(reply.stdout)

    def drain_comms(self, seconds: float) -> None:
        """Collect comm messages the kernel sends while idle (from the broker thread)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if msg["msg_type"].startswith("comm_"):
                self.comm_log.append(msg)

    def settle_panel(self, name: str, ready: Callable[[Any], bool], seconds: float = 30) -> Any:
        """The panel's latest ``name`` once ``ready`` holds for it: the broker tells the panel of changes
        at most every 0.1 s, so the final state of a cell's job may come just after the cell."""
        deadline = time.monotonic() + seconds
        while not ((values := panel_states(self, name)) and ready(values[-1])) and time.monotonic() < deadline:
            self.drain_comms(0.2)
        return panel_states(self, name)[-1] if panel_states(self, name) else None

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    if k.manager.is_alive():
        k.shutdown()


def started(kernel: Kernel) -> tuple[str, int]:
    assert kernel.execute("%load_ext webnet_magic").status == "ok"
    reply = kernel.execute("%webnet start")
    assert reply.status == "ok", reply.error
    url = kernel.execute("%webnet url").stdout.strip()
    return url, int(url.split(":")[2].split("/")[0])


def panel_states(kernel: Kernel, name: str) -> list[Any]:
    """Every value of the widget model's ``name`` trait the kernel sent, oldest first."""
    return [
        m["content"]["data"]["state"][name]
        for m in kernel.comm_log
        if m["msg_type"] == "comm_msg" and name in m["content"]["data"].get("state", {})
    ]


def panel_devices(kernel: Kernel) -> list[list[dict[str, Any]]]:
    return panel_states(kernel, "devices")


def test_start_shows_the_panel_and_a_text_form_without_the_link(kernel: Kernel) -> None:
    """%webnet start displays the anywidget (QR code + URL in its live state); its text/plain fallback,
    which a saved notebook keeps, says how to get the link and holds no token."""
    assert kernel.execute("%load_ext webnet_magic").status == "ok"
    reply = kernel.execute("%webnet start")
    data, note = reply.displays  # the note says the session ended, where the panel is not live
    assert WIDGET_MIME in data
    assert "?token=" not in data["text/plain"] and "%webnet url" in data["text/plain"]
    assert "has ended" in note["text/html"] and "?token=" not in note["text/html"]
    opened = [m for m in reply.comms if m["msg_type"] == "comm_open"]
    states = [m["content"]["data"]["state"] for m in opened if "url" in m["content"]["data"]["state"]]
    assert states and states[0]["qr_svg"].startswith("<svg") and "?token=" in states[0]["url"]


def test_a_cell_of_only_the_magic_line_runs_on_a_worker_and_the_panel_updates_live(
    kernel: Kernel, workers: Workers
) -> None:
    """The design card's flow in a kernel; the panel hears the join while idle and `busy` mid-cell."""
    url, _ = started(kernel)
    workers.start(url)
    deadline = time.monotonic() + 60
    while not any(panel_devices(kernel)) and time.monotonic() < deadline:
        kernel.drain_comms(0.5)  # the kernel is idle: updates come from the broker thread
    assert any(panel_devices(kernel)), "the widget never heard of the worker"
    assert (
        kernel.execute("import numpy as np\nA = np.random.rand(300, 129)\nB = np.random.rand(129, 77)").status == "ok"
    )
    reply = kernel.execute("%%webnet matmul A B -> C")
    assert reply.status == "ok", reply.error
    assert kernel.value("float(abs(C - A @ B).max())") < 1e-3
    assert kernel.value("str(C.dtype)") == "float32"
    kernel.execute("X = np.ones((512, 512), np.float32)")
    reply = kernel.execute("%webnet matmul X X -> Y")
    assert reply.status == "ok"
    seen_busy_in_log = any(d and d[0]["state"] == "busy" for d in panel_devices(kernel))
    assert seen_busy_in_log, "the panel never showed the device busy while the cell blocked"
    assert kernel.settle_panel("devices", lambda d: d[0]["jobs_done"] == 2)[0]["jobs_done"] == 2


def test_a_long_job_shows_a_progress_bar_and_the_panel_lists_its_shards(kernel: Kernel, workers: Workers) -> None:
    """A sharded job that outlasts ``progress_after``: a bar under the cell, updated in place, the job in the
    panel; then the same in the background (`--bg`), awaited at top level as ipykernel allows.  The worker
    starts only once the bar shows, so the job is long enough on any machine, however fast."""
    url, _ = started(kernel)
    kernel.execute("%config WebnetMagics.progress_after = 0.2\nimport numpy as np\nA = np.ones((256, 256), np.float32)")

    def start_a_worker_once_the_bar_shows(msg: dict[str, Any]) -> None:
        shown = msg["msg_type"] == "display_data" and "webnet-progress" in msg["content"]["data"].get("text/html", "")
        if shown and not workers.processes:
            workers.start(url)

    reply = kernel.execute("%webnet A @ A -> C --shard 4 --timeout 120", on_iopub=start_a_worker_once_the_bar_shows)
    assert reply.status == "ok", reply.error
    assert workers.processes, "no progress bar was shown"
    (shown,) = [d for d in reply.displays if "webnet-progress" in d.get("text/html", "")]
    assert "<progress" in shown["text/html"] and "/4 shards" in shown["text/plain"]
    assert reply.updates and "done: 4/4 shards" in reply.updates[-1]["text/plain"]
    listed = [jobs for jobs in panel_states(kernel, "jobs") if jobs]
    assert listed and listed[0][0]["total"] == 4
    assert kernel.settle_panel("jobs", lambda jobs: jobs == []) == []  # gone from the panel once done
    assert kernel.value("float(C[0, 0])") == 256.0
    # In the background: the cell returns at once; top-level await on the handle gives the result.
    assert kernel.execute("h = %webnet A @ A -> E --bg --shard 2\nD = await h").status == "ok"
    assert kernel.value("float(D[0, 0]) + float(E[0, 0])") == 512.0


def test_a_background_job_binds_only_once_no_cell_is_running(kernel: Kernel, workers: Workers) -> None:
    """A `--bg` job that finishes while a cell runs (its answer is held in a relay until the cell says it
    is waiting) leaves the cell's names alone, awaited or not; the next cell sees them bound."""
    url, port = started(kernel)
    with LinkRelay(port, LOOPBACK) as relay:
        workers.start(relay.url(url))
        assert (
            kernel.execute("from webnet_magic.client.session import current\ncurrent().wait_for_devices(1, 60)").status
            == "ok"
        )
        kernel.execute("import numpy as np, time\nA = np.ones((64, 64), np.float32)\nC = 'before'")

        def release_once_waiting(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and "waiting" in msg["content"]["text"]:
                relay.release("up")

        relay.hold("up")
        assert kernel.execute("h = %webnet A @ A -> C --bg").status == "ok"
        waiting = "print('waiting', flush=True)\nwhile not h.done():\n    time.sleep(0.01)\nseen = C"
        assert kernel.execute(waiting, on_iopub=release_once_waiting).status == "ok"
        assert kernel.value("seen") == "before" and kernel.value("float(C[0, 0])") == 64.0

        relay.hold("up")
        assert kernel.execute("h = %webnet A @ A -> E --bg").status == "ok"
        awaiting = "print('waiting', flush=True)\nD = await h\nseen = globals().get('E', 'unbound')"
        assert kernel.execute(awaiting, on_iopub=release_once_waiting).status == "ok"
        assert kernel.value("seen") == "unbound" and kernel.value("float(D[0, 0] + E[0, 0])") == 128.0


def test_bad_input_in_the_kernel_is_a_usage_error_and_leaves_variables(kernel: Kernel) -> None:
    started(kernel)
    kernel.execute("import numpy as np\nA = np.ones((3, 4))\nC = 'untouched'")
    reply = kernel.execute("%webnet matmul A A -> C")
    assert reply.status == "error" and reply.error["ename"] == "UsageError"
    assert "inner dimensions 4 and 3" in reply.error["evalue"]
    assert kernel.value("C") == "untouched"


def test_interrupting_the_kernel_cancels_the_waiting_job(kernel: Kernel) -> None:
    """Ctrl-C (a kernel interrupt) while the cell waits: KeyboardInterrupt, no job left, nothing bound."""
    started(kernel)
    kernel.execute("import numpy as np\nA = np.ones((2, 2), np.float32)")

    def interrupt_when_waiting(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "waiting for a device" in msg["content"]["text"]:
            kernel.manager.interrupt_kernel()

    reply = kernel.execute("%webnet matmul A A -> C --timeout 60", timeout=30, on_iopub=interrupt_when_waiting)
    assert reply.status == "error" and reply.error["ename"] == "KeyboardInterrupt"
    assert kernel.value("'C' in globals()") is False
    kernel.execute("from webnet_magic.client.session import current")
    assert kernel.value("len(current().broker.broker.scheduler.tasks)") == 0


def test_kernel_shutdown_frees_the_port(kernel: Kernel) -> None:
    """No broker outlives its kernel: after shutdown the port refuses connections."""
    _, port = started(kernel)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    kernel.shutdown()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_the_kernel_uses_this_python(kernel: Kernel) -> None:
    """Guard: the kernel imports the package under test, not another install."""
    import webnet_magic

    assert kernel.value("__import__('webnet_magic').__file__") == webnet_magic.__file__
    assert kernel.value("__import__('sys').executable") == sys.executable


def test_a_one_task_job_shows_a_moving_bar_and_the_time_not_a_frozen_count(kernel: Kernel, workers: Workers) -> None:
    """One task has nothing to count: no 0/1, an indeterminate bar and the seconds elapsed (the worker starts
    only once the bar shows, so the job lasts long enough on any machine)."""
    import re

    url, _ = started(kernel)
    kernel.execute("%config WebnetMagics.progress_after = 0.2\nimport numpy as np\nA = np.ones((64, 64), np.float32)")

    def start_a_worker_once_the_bar_shows(msg: dict[str, Any]) -> None:
        shown = msg["msg_type"] == "display_data" and "webnet-progress" in msg["content"]["data"].get("text/html", "")
        if shown and not workers.processes:
            workers.start(url)

    reply = kernel.execute("%webnet A @ A -> C --shard off --timeout 120", on_iopub=start_a_worker_once_the_bar_shows)
    assert reply.status == "ok", reply.error
    (shown,) = [d for d in reply.displays if "webnet-progress" in d.get("text/html", "")]
    assert '<progress style="width:12em">' in shown["text/html"] and "value=" not in shown["text/html"]
    assert "0/1" not in shown["text/plain"] and re.search(r"\(\d+\.\d s\)$", shown["text/plain"])
    assert "done: " in reply.updates[-1]["text/plain"] and "1/1" not in reply.updates[-1]["text/plain"]
