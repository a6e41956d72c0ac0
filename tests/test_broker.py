"""The broker over real loopback sockets: tokens, malformed peers, heartbeats, a clean stop.

The peers here are raw WebSocket clients speaking (or mis-speaking) the protocol by hand,
so every refusal path is driven from the outside, as a hostile or broken worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest
from tornado.websocket import WebSocketClosedError, websocket_connect

from webnet_magic.broker.thread import BrokerThread
from webnet_magic.errors import BrokerStopped, DeviceLimitError, WebnetError, WorkerError, WorkerLost
from webnet_magic.ops import matmul
from webnet_magic.protocol import (
    CLOSE_BAD_TOKEN,
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL,
    Assembler,
    Message,
    encode,
)
from webnet_magic.worker.native import socket_url

from .conftest import wait_until

HELLO = {
    "runtime": "native",
    "name": "hand-written peer",
    "webgpu": True,
    "adapter": {"description": "none"},
    "limits": {"maxStorageBufferBindingSize": 1 << 20, "maxBufferSize": 1 << 20},
}


def small_program():
    plan = matmul.plan(np.ones((4, 3), np.float32), np.ones((3, 2), np.float32))
    assert plan.program is not None
    return plan.program


async def connect(url: str):
    return await websocket_connect(socket_url(url))


async def read_message(conn, assembler: Assembler) -> Message | None:
    while (frame := await conn.read_message()) is not None:
        if (message := assembler.feed(frame)) is not None:
            return message
    return None


async def say_hello(conn, **fields) -> Message:
    for frame in encode(Message("hello", {**HELLO, **fields}), 1):
        await conn.write_message(frame, binary=True)
    welcome = await read_message(conn, assembler := Assembler())
    conn.assembler = assembler
    assert welcome is not None and welcome.type == "welcome"
    return welcome


def test_the_worker_page_and_its_scripts_share_one_port(broker: BrokerThread) -> None:
    """GET / serves the page (no caching, a CSP limited to this origin); scripts come from the same port."""
    with urllib.request.urlopen(broker.url) as response:
        assert response.status == 200
        assert "webnet worker" in response.read().decode()
        assert response.headers["Cache-Control"] == "no-store"
        assert f"ws://127.0.0.1:{broker.port}" in response.headers["Content-Security-Policy"]
    base = broker.url.split("?")[0]
    for name in ("worker.js", "protocol.js", "gpu.js", "worker.css"):
        with urllib.request.urlopen(base + name) as response:
            assert response.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "widget.py")


def test_the_broker_listens_on_loopback_only_by_default(broker: BrokerThread) -> None:
    """Bound to 127.0.0.1: nothing listens on the machine's other addresses."""
    assert broker.host == "127.0.0.1"
    listening = [s for s in broker._server._sockets.values()]  # type: ignore[union-attr]
    assert [s.getsockname()[0] for s in listening] == ["127.0.0.1"]


@pytest.mark.parametrize("token", ["", "wrong-token", "x" * 500])
def test_a_wrong_or_missing_token_is_refused(broker: BrokerThread, token: str) -> None:
    """The socket closes with 4003 and a reason telling the user where the right link is."""

    async def attempt():
        url = f"ws://127.0.0.1:{broker.port}/ws" + (f"?token={token}" if token else "")
        conn = await websocket_connect(url)
        assert await conn.read_message() is None
        return conn.close_code, conn.close_reason

    code, reason = asyncio.run(attempt())
    assert code == CLOSE_BAD_TOKEN and "%webnet url" in reason
    assert broker.devices() == []


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        (["a text frame"], "text frames"),
        ([b"garbage that is not a frame"], "WN"),
        ([next(encode(Message("result", {"job": "j1", "timings": {}}), 1))], "before hello"),
        (
            [*encode(Message("hello", HELLO), 1), *encode(Message("ping", {"t": 0}), 2)],
            "may not send 'ping'",
        ),
        ([*encode(Message("hello", {**HELLO, "features": 5}), 1)], "'features' must be a list"),
    ],
)
def test_a_malformed_peer_is_disconnected_and_the_broker_keeps_serving(
    broker: BrokerThread, frames: list, complaint: str
) -> None:
    """Protocol violations close that one connection with 1002 and the reason; others are unaffected."""

    async def attempt():
        conn = await connect(broker.url)
        for frame in frames:
            await conn.write_message(frame, binary=not isinstance(frame, str))
        while await conn.read_message() is not None:  # a welcome may come first
            pass
        return conn.close_code, conn.close_reason

    code, reason = asyncio.run(attempt())
    assert code == CLOSE_PROTOCOL and complaint in reason
    with urllib.request.urlopen(broker.url) as response:
        assert response.status == 200


def test_an_oversized_frame_is_refused_by_the_server(broker: BrokerThread) -> None:
    """A single frame larger than a chunk plus header never reaches the assembler."""

    async def attempt():
        conn = await connect(broker.url)
        await say_hello(conn)
        assert len(broker.devices()) == 1
        with contextlib.suppress(WebSocketClosedError):  # the server may close before the write ends
            await conn.write_message(b"WN\x01\x01" + bytes(8 * 2**20), binary=True)
        while await conn.read_message() is not None:
            pass

    asyncio.run(attempt())
    wait_until(lambda: broker.devices() == [], 5, "the oversized peer to be dropped")


def test_a_peer_that_stops_answering_heartbeats_is_declared_lost_and_its_job_fails(
    broker: BrokerThread,
) -> None:
    """A worker silent past the limit is dropped; its running job fails with WorkerLost, not a timeout."""
    joined = threading.Event()
    release = threading.Event()

    async def silent_worker():
        conn = await connect(broker.url)
        await say_hello(conn)
        joined.set()
        while not release.is_set():  # read (and so keep the TCP link) but never answer
            await asyncio.sleep(0.05)
        conn.close()

    thread = threading.Thread(target=asyncio.run, args=(silent_worker(),))
    thread.start()
    try:
        joined.wait(10)
        wait_until(broker.devices, 5, "the silent peer to join")
        started = time.monotonic()
        handle = broker.submit(small_program())
        with pytest.raises(WorkerLost, match="stopped answering heartbeats"):
            handle.future.result(10)
        assert time.monotonic() - started < 5  # silence limit 1.5 s + one heartbeat period
        assert broker.devices() == []
    finally:
        release.set()
        thread.join(10)


def test_a_result_of_the_wrong_shape_is_refused(broker: BrokerThread) -> None:
    """Nothing from a worker is trusted: a wrong-shaped result fails the job with the reason."""

    async def lying_worker():
        conn = await connect(broker.url)
        await say_hello(conn)
        while (m := await read_message(conn, conn.assembler)) is not None:
            if m.type == "job":
                bogus = Message("result", {"job": m.fields["job"], "timings": {}}, [np.zeros(3, np.float32)])
                for frame in encode(bogus, 2):
                    await conn.write_message(frame, binary=True)
                return

    thread = threading.Thread(target=asyncio.run, args=(lying_worker(),))
    thread.start()
    wait_until(broker.devices, 5, "the lying peer to join")
    with pytest.raises(WorkerError, match=r"returned output 0 as float32\[3\], expected float32\[4, 2\]"):
        broker.submit(small_program()).future.result(10)
    thread.join(10)


def test_a_job_larger_than_every_device_is_refused_naming_the_limit(broker: BrokerThread) -> None:
    """Work that cannot fit the connected devices fails at once, naming the limit, before sending."""

    async def tiny_device(ready: threading.Event, done: threading.Event):
        conn = await connect(broker.url)
        await say_hello(conn, limits={"maxStorageBufferBindingSize": 1024, "maxBufferSize": 1024})
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        conn.close()

    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(tiny_device(ready, done),))
    thread.start()
    try:
        ready.wait(10)
        wait_until(broker.devices, 5, "the tiny device")
        plan = matmul.plan(np.ones((64, 64), np.float32), np.ones((64, 64), np.float32))
        with pytest.raises(
            DeviceLimitError, match="16384, above device d1's maxStorageBufferBindingSize of 1024"
        ):
            broker.submit(plan.program).future.result(5)
        with pytest.raises(WebnetError, match="no device 'd9' is connected"):
            broker.submit(small_program(), "d9").future.result(5)
    finally:
        done.set()
        thread.join(10)


def test_stop_fails_waiting_jobs_and_frees_the_thread_and_port() -> None:
    """After stop() the port can be bound again and no broker thread is left."""
    thread = BrokerThread().start()
    port = thread.port
    handle = thread.submit(small_program())  # no device: it waits
    thread.stop()
    with pytest.raises(BrokerStopped):
        handle.future.result(5)
    assert not any(t.name == "webnet-broker" and t.is_alive() for t in threading.enumerate())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_workers_are_told_the_broker_is_going_away() -> None:
    """A stop closes each worker's socket with 1001, so pages and native workers do not retry."""
    thread = BrokerThread().start()

    async def worker():
        conn = await connect(thread.url)
        await say_hello(conn)
        await asyncio.get_running_loop().run_in_executor(None, thread.stop)
        while await conn.read_message() is not None:
            pass
        return conn.close_code

    assert asyncio.run(worker()) == CLOSE_GOING_AWAY


def test_a_port_in_use_is_reported_in_the_calling_thread() -> None:
    """Starting on a taken port raises OSError here, not silently in the broker thread."""
    first = BrokerThread().start()
    try:
        with pytest.raises(OSError):
            BrokerThread(port=first.port).start()
    finally:
        first.stop()
