"""Fixtures that start real parts: a broker on loopback, native workers on lavapipe, headless
Chromium with WebGPU (SwiftShader), and an IPython shell with the extension loaded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from webnet_magic.broker.thread import BrokerThread
from webnet_magic.worker.launch import chromium_flags, find_chromium

from .peers import Peer

T = TypeVar("T")

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # quiets Mesa's lavapipe warnings


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` on a thread of its own: once a browser test has run, Playwright's sync
    API keeps a loop running on the main thread for the rest of the session, where asyncio.run refuses."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def settle(broker: BrokerThread) -> None:
    """Let the broker's loop run what is queued on it, and the callbacks that sets off (a task's
    future settling): then what the broker decided about an event is in its state and futures, so
    a test can check that something did *not* happen without waiting a while for it."""
    for _ in range(2):
        broker.call(lambda: None)


@pytest.fixture
def broker() -> Iterator[BrokerThread]:
    """A broker on 127.0.0.1, port 0, with fast heartbeats (round trips measured at once) and the
    default silence limit: a page or worker busy for a second on a loaded machine (a browser echoing
    10 MB) is not dropped.  Tests of silence make a broker with a short limit of their own."""
    thread = BrokerThread(heartbeat=0.2, calibrate=False).start()
    yield thread
    thread.stop()


@pytest.fixture
def hasty_broker() -> Iterator[BrokerThread]:
    """A broker that gives up after 1.5 s of silence (no hello, a cancel never acknowledged): for the
    tests of those limits, where the peer is silent by design rather than slow."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=1.5, calibrate=False).start()
    yield thread
    thread.stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Hand-written peers a test makes (see :mod:`tests.peers`); all stopped afterwards."""
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.stop()


class Workers:
    """Starts native worker processes and ends every one of them after the test."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, url: str, *extra: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "webnet_magic.worker", url, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers()
    yield pool
    pool.stop_all()


def join_native(broker: BrokerThread, workers: Workers, count: int = 1) -> list[dict]:
    """Start ``count`` native workers on ``broker`` and wait until all have joined."""
    before = len(broker.devices())
    for _ in range(count):
        workers.start(broker.url)
    return wait_until(lambda: len(broker.devices()) >= before + count and broker.devices(), 60, "native workers")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Debian's Chromium under Playwright, with real WebGPU on SwiftShader."""
    from playwright.sync_api import sync_playwright

    path = find_chromium()
    if path is None:
        pytest.fail("Chromium is not installed; run `make setup` (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=path,
            args=[f for f in chromium_flags(software_gpu=True) if f != "--headless=new"]
            + ["--host-resolver-rules=MAP insecure.webnet.test 127.0.0.1, MAP tunnel.webnet.test 127.0.0.1"],
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_worker(chromium: object) -> Iterator[BrokerThread]:
    """One broker and one worker page in Chromium for a whole module (hypothesis runs many examples)."""
    broker = BrokerThread().start()
    context = chromium.new_context()  # type: ignore[attr-defined]
    context.new_page().goto(broker.url)
    wait_until(broker.devices, 30, "the page to join")
    yield broker
    context.close()
    broker.stop()


@pytest.fixture
def page(chromium: object) -> Iterator[object]:
    """A fresh browser context and page; its console is kept for failure messages."""
    # bypass_csp lets Playwright evaluate test expressions; the page itself keeps its strict CSP.
    context = chromium.new_context(bypass_csp=True)  # type: ignore[attr-defined]
    page = context.new_page()
    page.console_lines = []
    page.on("console", lambda m: page.console_lines.append(m.text))
    yield page
    context.close()


@pytest.fixture
def shell() -> Iterator[object]:
    """IPython's shell with webnet_magic loaded; unloaded (broker stopped) afterwards."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_cell("%load_ext webnet_magic", store_history=False)
    yield ip
    ip.run_cell("%unload_ext webnet_magic", store_history=False)
    for name in [n for n in ip.user_ns if not n.startswith("_") and n not in ip.user_ns_hidden]:
        del ip.user_ns[name]


@pytest.fixture
def joined(shell, workers: Workers):
    """The shell after ``%webnet start``, with one native worker joined and calibrated."""
    from webnet_magic.client import session as sessions

    assert shell.run_cell("%webnet start", store_history=False).success
    session = sessions.current()
    workers.start(session.url)
    session.wait_for_devices(1, 60)
    return shell


@pytest.fixture(scope="module")
def native_session():
    """This process's session (``webnet_magic.start``) with one native worker, shared by a module's tests."""
    import webnet_magic as wm
    from webnet_magic.client import session as sessions

    sessions.stop()
    running = wm.start(tunnel="off")
    running.local_worker("native")
    running.wait_for_devices(1, 120)
    yield running
    wm.stop()
