"""A hand-written worker for tests: raw WebSocket frames, so any behaviour can be scripted.

Peers stand in for workers that misbehave in ways a real one cannot be made to: lying
about shapes, answering late or twice, going silent while answering pings, returning
corrupted numbers.  They speak the real protocol over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

import numpy as np
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClosedError, websocket_connect

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.protocol import Assembler, Message, encode
from webnet_magic.worker.native import socket_url

HELLO = {
    "runtime": "native",
    "name": "hand-written peer",
    "webgpu": True,
    "adapter": {"description": "none"},
    "limits": {"maxStorageBufferBindingSize": 1 << 20, "maxBufferSize": 1 << 20},
}


def small_program():
    return ops.plan("matmul", np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)).program


async def connect(url: str, headers: dict[str, str] | None = None):
    """A WebSocket that sends each frame at once, as real workers' do (with Nagle's algorithm on, a
    pong could wait 40 ms for an ACK, and a peer's measured round trip would be noise)."""
    conn = await websocket_connect(HTTPRequest(socket_url(url), headers=headers))
    conn.protocol.set_nodelay(True)
    return conn


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


class Peer:
    """A hand-written worker in a thread of its own.

    It says hello (with ``hello`` overriding the defaults), answers pings unless
    ``silent``, and hands each job to ``reply(conn, job)``, or leaves it unanswered.
    ``welcome`` is the broker's welcome (its ``resume`` secret lets a new peer come back
    as this device) and ``cancels`` the attempt ids the broker cancelled.  ``headers`` go with
    its WebSocket's request (a browser's User-Agent, a tunnel's Host and X-Forwarded-For).
    """

    def __init__(
        self, broker: BrokerThread, reply=None, *, silent: bool = False, headers: dict[str, str] | None = None, **hello
    ) -> None:
        self.url, self.reply, self.silent, self.hello, self.headers = broker.url, reply, silent, hello, headers
        self.joined = threading.Event()
        self.close_code: int | None = None
        self.jobs: list[Message] = []
        self.cancels: list[str] = []
        self.welcome: Message | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.joined.wait(10), "the peer did not join"

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = conn = await connect(self.url, self.headers)
        self.welcome = await say_hello(conn, **self.hello)
        self.joined.set()
        # The broker may close the link while an answer is on its way (that is what some tests
        # provoke): the peer then ends as a worker would, rather than with an error in its thread.
        with contextlib.suppress(WebSocketClosedError):
            while (m := await read_message(conn, conn.assembler)) is not None:
                if m.type == "ping" and not self.silent:
                    await send(conn, Message("pong", m.fields, m.arrays))
                elif m.type == "cancel":
                    self.cancels.append(m.fields["job"])
                elif m.type == "job":
                    self.jobs.append(m)
                    if self.reply is not None:
                        await self.reply(conn, m)
        self.close_code = conn.close_code

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.conn.close)
            self.thread.join(10)


async def send(conn, message: Message) -> None:
    for frame in encode(message, id(message) & 0xFFFF):
        await conn.write_message(frame, binary=True)


def result(job: Message, *arrays: np.ndarray, timings: dict | None = None) -> Message:
    """The result message answering ``job`` (same attempt id) with ``arrays``."""
    return Message("result", {"job": job.fields["job"], "timings": timings or {}}, list(arrays))


def answering(*arrays: np.ndarray) -> Callable[[object, Message], Awaitable[None]]:
    """A peer's reply that sends ``arrays`` back for every job."""

    async def reply(conn, job: Message) -> None:
        await send(conn, result(job, *arrays))

    return reply


def once(
    event: threading.Event, reply: Callable[[object, Message], Awaitable[None]]
) -> Callable[[object, Message], Awaitable[None]]:
    """``reply``, given only once ``event`` is set: a test orders what happens before the answer."""

    async def later(conn, job: Message) -> None:
        await asyncio.to_thread(event.wait)
        await reply(conn, job)

    return later


def calibrated(answer: Callable[[Message], np.ndarray] | None = None) -> Callable[[object, Message], Awaitable[None]]:
    """A peer's reply that answers its calibration right, then ``answer(job)`` for every other job
    (by default zeros of the shape asked for)."""
    from webnet_magic.broker.calibration import calibration

    program, _ = calibration()
    a, b = program.inputs[:2]
    right = (a.astype(np.float64) @ b).astype(np.float32)

    async def reply(conn, job: Message) -> None:
        (spec,) = job.fields["outputs"]
        if tuple(spec["shape"]) == right.shape:
            reply_with = right
        else:
            reply_with = np.zeros(spec["shape"], np.float32) if answer is None else answer(job)
        await send(conn, result(job, reply_with, timings={"kernel": 5.0}))

    return reply


def sly() -> Callable[[object, Message], Awaitable[None]]:
    """A peer's reply that passes its calibration (a real answer) and then returns zeros for everything."""
    return calibrated()


def held(broker: BrokerThread) -> dict[str, list[str]]:
    """Everything the scheduler holds for jobs: tasks, the queue, jobs listed, attempts and calibrations."""

    def look() -> dict[str, list[str]]:
        scheduler = broker.broker.scheduler
        devices = scheduler.devices.values()
        return {
            "tasks": list(scheduler.tasks),
            "queue": [t.id for t in scheduler.queue],
            "groups": list(scheduler.groups),
            "attempts": [a.id for d in devices for a in d.attempts],
            "calibrating": [t for d in devices for t in d.calibrating],
        }

    return broker.call(look)


def nothing_held(broker: BrokerThread) -> bool:
    return not any(held(broker).values()) and broker.fleet()["jobs"] == []
