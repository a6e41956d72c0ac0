"""The broker over real loopback sockets: tokens, malformed peers, heartbeats, a clean stop.

The peers here are raw WebSocket clients speaking (or mis-speaking) the protocol by hand,
so every refusal path is driven from the outside, as a hostile or broken worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import urllib.request

import numpy as np
import pytest
from tornado.websocket import WebSocketClosedError, websocket_connect

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.errors import BrokerStopped, DeviceLimitError, DeviceNotFound, WorkerError, WorkerLost
from webnet_magic.protocol import (
    CLOSE_BAD_TOKEN,
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL,
    Message,
    encode,
)

from .conftest import run_async, settle, wait_until
from .peers import HELLO, Peer, answering, connect, result, say_hello, send, small_program


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

    code, reason = run_async(attempt())
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

    code, reason = run_async(attempt())
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

    run_async(attempt())
    wait_until(lambda: broker.devices() == [], 5, "the oversized peer to be dropped")


def test_a_result_of_the_wrong_shape_is_refused(broker: BrokerThread, peers: list[Peer]) -> None:
    """Nothing from a worker is trusted: a wrong-shaped result fails the job with the reason."""

    async def lie(conn, job: Message) -> None:
        await send(conn, Message("result", {"job": job.fields["job"], "timings": {}}, [np.zeros(3, np.float32)]))

    peers.append(Peer(broker, lie))
    with pytest.raises(WorkerError, match=r"returned output 0 as float32\[3\], expected float32\[4, 2\]"):
        broker.submit(small_program()).future.result(10)


def test_data_nobody_asked_for_is_refused_before_it_is_stored(broker: BrokerThread, peers: list[Peer]) -> None:
    """A result for a job the worker was never given, carrying arrays, closes the connection at its head;
    the job it did hold goes back to the queue and runs on the next device."""

    async def flood(conn, job: Message) -> None:
        junk = np.zeros(1 << 20, np.uint8)
        await send(conn, Message("result", {"job": "j999~1", "timings": {}}, [junk]))

    flooder = Peer(broker, flood)
    peers.append(flooder)
    handle = broker.submit(small_program())
    wait_until(lambda: flooder.close_code == CLOSE_PROTOCOL, 5, "the flooding peer to be closed")
    assert not handle.future.done()
    peers.append(Peer(broker, answering(np.full((4, 2), 3, np.float32))))
    np.testing.assert_array_equal(handle.future.result(10)[0], np.full((4, 2), 3, np.float32))
    assert "sent a malformed message" in handle.progress.failures[0]


def test_nonsense_timings_do_not_stop_a_result(broker: BrokerThread, peers: list[Peer]) -> None:
    """A kernel time that is not a finite number is dropped; the outputs are still bound."""

    async def answer(conn, job: Message) -> None:
        fields = {"job": job.fields["job"], "timings": {"kernel": 10**400}}
        await send(conn, Message("result", fields, [np.full((4, 2), 3, np.float32)]))

    peers.append(Peer(broker, answer))
    (out,) = broker.submit(small_program()).future.result(10)
    np.testing.assert_array_equal(out, np.full((4, 2), 3, np.float32))
    assert broker.devices()[0]["last_job_ms"] is None and broker.devices()[0]["state"] == "idle"


def test_timings_that_sum_to_infinity_leave_the_speed_finite(broker: BrokerThread, peers: list[Peer]) -> None:
    """Each part of a job's time finite but huge (their sum overflows): the speed is not made 0, which the
    scheduler divides by, and the next job still runs."""
    x = np.ones((128, 128), np.float32)
    program = ops.plan("matmul", x, x).program  # enough work to be measured

    async def answer(conn, job: Message) -> None:
        huge = {part: 1e308 for part in ("upload", "kernel", "download", "throttle")}
        await send(conn, result(job, np.full((128, 128), 128, np.float32), timings=huge))

    peers.append(Peer(broker, answer))
    for _ in range(2):
        broker.submit(program).future.result(10)
    speed = broker.devices()[0]["gflops"]
    assert speed is None or 0 < speed < float("inf")


def test_a_hello_cannot_forge_rows_or_send_absurd_limits(broker: BrokerThread, peers: list[Peer]) -> None:
    """Newlines and ANSI escapes in a device's name are made visible; limits that are not positive
    integers of sane size, or beyond the first 64, are dropped (hardening items 6 and 9)."""
    forged = "evil\nd9    idle    0\x1b[31m"
    limits = {"maxBufferSize": -1, "maxStorageBufferBindingSize": 2**60, **{f"junk{i}": 5 for i in range(1000)}}
    peers.append(Peer(broker, name=forged, limits=limits))
    (device,) = wait_until(broker.devices, 10, "the device")
    assert "\n" not in device["name"] and "\x1b" not in device["name"] and device["name"].startswith("evil")
    assert "maxBufferSize" not in device["limits"] and "maxStorageBufferBindingSize" not in device["limits"]
    assert len(device["limits"]) <= 64


def test_a_device_that_ignores_a_cancel_is_dropped(hasty_broker: BrokerThread, peers: list[Peer]) -> None:
    """A device must acknowledge a cancelled job; one that never does is dropped after a grace period."""
    broker = hasty_broker
    peers.append(Peer(broker))  # answers pings, never answers jobs
    handle = broker.submit(small_program())
    wait_until(lambda: broker.devices()[0]["state"] == "busy", 5, "the job to be sent")
    broker.cancel(handle.id)
    wait_until(handle.future.cancelled, 5, "the cancellation")
    wait_until(lambda: broker.devices() == [], 10, "the device to be dropped after the grace period")


def test_a_queued_job_fails_when_the_device_that_joins_cannot_hold_it(broker: BrokerThread, peers: list[Peer]) -> None:
    """Waiting for a device, then one joins whose limits are too small: the job fails, naming the limit."""
    handle = broker.submit(ops.plan("matmul", np.ones((64, 64), np.float32), np.ones((64, 64), np.float32)).program)
    settle(broker)
    assert not handle.future.done()
    peers.append(Peer(broker, limits={"maxStorageBufferBindingSize": 1024, "maxBufferSize": 1024}))
    with pytest.raises(DeviceLimitError, match="16384, above device d1's maxStorageBufferBindingSize of 1024"):
        handle.future.result(5)
    with pytest.raises(DeviceNotFound, match="no device 'd9' is connected"):
        broker.submit(small_program(), devices=frozenset({"d9"})).future.result(5)


def test_a_probe_fails_when_its_device_leaves(broker: BrokerThread, peers: list[Peer]) -> None:
    """An echo in flight to a device that disconnects raises WorkerLost instead of hanging."""
    peer = Peer(broker, silent=True)
    peers.append(peer)
    probe = threading.Thread(target=lambda: probe_result.append(_try(broker.echo, [np.zeros(4, np.float32)])))
    probe_result: list[object] = []
    probe.start()
    wait_until(lambda: broker.call(lambda: any(s.probes for s in broker.broker.sockets)), 10, "the probe")
    peer.stop()
    probe.join(10)
    assert isinstance(probe_result[0], WorkerLost)


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def test_a_connection_that_never_says_hello_is_closed(hasty_broker: BrokerThread) -> None:
    async def mute():
        conn = await connect(hasty_broker.url)
        while await conn.read_message() is not None:
            pass
        return conn.close_code, conn.close_reason

    code, reason = run_async(mute())
    assert code == CLOSE_PROTOCOL and "no hello within 1.5 s" in reason


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

    assert run_async(worker()) == CLOSE_GOING_AWAY


def test_a_port_in_use_is_reported_in_the_calling_thread() -> None:
    """Starting on a taken port raises OSError here, not silently in the broker thread."""
    first = BrokerThread().start()
    try:
        with pytest.raises(OSError):
            BrokerThread(port=first.port).start()
    finally:
        first.stop()
