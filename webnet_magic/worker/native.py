"""The native worker: this machine's GPU (through wgpu-py) joined to a broker over WebSocket.

It speaks the same protocol as the browser page and runs the same WGSL, so a
Mac's Metal GPU, a Linux box's Vulkan GPU, or lavapipe in CI can stand in for a
phone.  GPU work runs in a helper thread so heartbeats are answered while a
long kernel runs: a busy worker is never mistaken for a silent one.

The broker may send the next jobs before this one is done (pipelining).  Three
things then happen at once: the next job's data arrives (the reading loop), the
current job computes (the GPU thread), and the previous result goes back (the
sending task).  Jobs still run one at a time, in the order they came; a job
cancelled while it waits is answered at once and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import platform
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from .._threads import in_daemon_thread
from ..config import DEFAULTS
from ..frames import send_parts
from ..program import Program
from ..protocol import (
    CLOSE_BAD_TOKEN,
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL,
    CLOSE_SILENT,
    MAX_FRAME,
    Assembler,
    Message,
    ProtocolError,
    encode_parts,
)
from .gpu import GpuJobError, WgpuExecutor
from .warm import SPIN_SECONDS, Arrival

log = logging.getLogger(__name__)


class TokenRefused(RuntimeError):
    """The broker refused this worker's token; reconnecting would not help."""


#: Where the native worker looks for the session token when its URL has none.  Passing it here
#: keeps it off the command line, which every local user can read (``ps``, /proc/*/cmdline).
TOKEN_ENV = "WEBNET_TOKEN"


def split_token(page_url: str) -> tuple[str, str]:
    """``http://h:p/?token=T`` -> (``http://h:p/``, ``T``); the token is "" when the URL has none."""
    parts = urlsplit(page_url)
    token = parse_qs(parts.query).get("token", [""])[0]
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", "")), token


def socket_url(page_url: str) -> str:
    """The WebSocket URL for a worker page URL: ``http://h:p/?token=T`` -> ``ws://h:p/ws?token=T``.

    Without ``?token=`` in the URL, the token comes from the ``WEBNET_TOKEN`` environment variable.
    """
    parts = urlsplit(page_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{page_url!r} is not a worker URL; copy it from %webnet url")
    token = split_token(page_url)[1] or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ValueError(
            f"{page_url!r} has no ?token=... and {TOKEN_ENV} is not set; copy the whole link from %webnet url"
        )
    path = parts.path.rstrip("/")
    path = path if path.endswith("/ws") else path + "/ws"
    return urlunsplit((schemes[parts.scheme], parts.netloc, path, urlencode({"token": token}), ""))


class NativeWorker:
    """Connects, says hello, runs jobs one at a time, and reconnects with backoff when the link drops.

    ``slowdown`` stretches every job to ``slowdown`` times its real duration (compiling
    aside); benchmarks use it to stand in for slower devices.  ``depth`` caps how many jobs
    the broker may send ahead (reported as the ``maxJobsHeld`` limit; 1 turns pipelining off
    for this worker).  ``on_job`` is called after each job (with its id and timings) for
    callers that want to observe progress.
    """

    def __init__(
        self,
        url: str,
        executor: WgpuExecutor,
        *,
        name: str | None = None,
        slowdown: float = 1.0,
        depth: int | None = None,
        warm: bool = True,
        on_job: Callable[[str, dict[str, float]], None] | None = None,
    ) -> None:
        self.url = socket_url(url)
        self.executor = executor
        self.name = name or f"{platform.node()} ({executor.describe()['adapter']['device']})"
        self.slowdown = slowdown
        self.depth = depth
        self.warm = warm
        self.on_job = on_job
        self.device_id: str | None = None
        self.resume = ""  # the broker's secret for coming back as the same device after a drop
        self.gone = ""  # why this worker has no GPU any more: its device was lost and no new one came
        self.jobs_done = 0
        self._ids = itertools.count(1)
        self._cancelled: set[str] = set()  # cancels heard for jobs that are running, or not yet here
        self._waiting: dict[str, int] = {}  # jobs here and not started -> jobs ahead of each when it came
        self._in_hand = 0  # jobs here whose compute has not finished
        self._last_heard = time.monotonic()
        self._silence_limit = DEFAULTS.silence_limit  # until the broker's welcome says its own
        self._arrival = Arrival()
        self._assembler = Assembler()
        self._warm_timer: asyncio.TimerHandle | None = None
        self._pause = contextlib.ExitStack()  # the warmer's pause while jobs are here (see _hand)
        self._warmed = 0  # the warmer's dispatch count when the last job ended

    async def run(self, *, max_backoff: float = 10.0) -> None:
        """Serve until the broker stops (returns) or refuses the token (raises :class:`TokenRefused`)."""
        backoff = 0.25
        while True:
            try:
                conn = await connect(self.url)
            except OSError as exc:
                log.warning("cannot reach the broker (%s); retrying in %.1f s", exc, backoff)
            else:
                backoff = 0.25
                code, reason = await self._serve(conn)
                if code == CLOSE_BAD_TOKEN:
                    raise TokenRefused(reason or "the broker refused this worker's token")
                if code == CLOSE_GOING_AWAY:
                    log.info("the broker stopped: %s", reason)
                    return
                log.warning("connection lost (%s %s); reconnecting", code, reason)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, max_backoff)

    async def _serve(self, conn: WebSocketClientConnection) -> tuple[int | None, str | None]:
        assembler = self._assembler = Assembler()
        work: asyncio.Queue[tuple[Message, float]] = asyncio.Queue()  # with when each came
        outbox: asyncio.Queue[tuple[Message, float | None]] = asyncio.Queue()
        self._waiting.clear()
        self._last_heard = time.monotonic()
        describe = self.executor.describe()
        if self.depth is not None:
            describe["limits"]["maxJobsHeld"] = self.depth
        hello = {"runtime": "native", "name": self.name, "webgpu": not self.gone, "reason": self.gone,
                 "resume": self.resume, **describe}  # fmt: skip
        await self._send(conn, Message("hello", hello))
        tasks = [
            asyncio.ensure_future(self._run_jobs(work, outbox)),
            asyncio.ensure_future(self._send_replies(conn, outbox)),
            asyncio.ensure_future(self._watch(conn)),
        ]
        try:
            while (frame := await conn.read_message()) is not None:
                self._last_heard = time.monotonic()
                if isinstance(frame, str):
                    raise ProtocolError("the broker sent a text frame")
                before = assembler.arriving("job")
                message = assembler.feed(frame)
                left = assembler.arriving("job")
                if before or left or (message is not None and message.type == "job"):
                    self._arrival.frame(len(frame), time.perf_counter(), left)
                    self._rewarm()
                if message is None:
                    continue
                f = message.fields
                if message.type == "welcome":
                    self.device_id, self.resume = f["device"], str(f.get("resume", ""))
                    self._silence_limit = float(f["silence"])
                    log.info("joined as device %s", self.device_id)
                elif message.type == "ping":  # a pong echoes its ping: fields and any arrays
                    await self._send(conn, Message("pong", f, message.arrays))
                elif message.type in ("job", "put", "free"):
                    if message.type == "job":
                        self._waiting[f["job"]] = self._in_hand
                        self._hand(+1)
                    work.put_nowait((message, time.perf_counter()))
                elif message.type == "cancel":
                    if f["job"] in self._waiting:  # not started: answered now, skipped when its turn comes
                        del self._waiting[f["job"]]
                        self._hand(-1)
                        await self._send(conn, error_message(f["job"], "cancelled", "cancelled before it started"))
                    else:
                        self._cancelled.add(f["job"])
        except ProtocolError as exc:
            log.error("closing: the broker broke the protocol: %s", exc)
            conn.close(CLOSE_PROTOCOL, str(exc)[:120])
        except (WebSocketClosedError, StreamClosedError):
            pass  # the link dropped while answering; run() reconnects
        finally:
            for task in tasks:
                task.cancel()
            self._assembler = Assembler()
            self._hand(-self._in_hand)  # nothing arrives or waits on a closed link
        return conn.close_code, conn.close_reason

    async def _run_jobs(
        self, work: asyncio.Queue[tuple[Message, float]], outbox: asyncio.Queue[tuple[Message, float | None]]
    ) -> None:
        """Jobs, puts and frees, one at a time and in the order they came (a put precedes its use).

        Each answer goes to the outbox and the next job starts at once, while the answer travels.
        """
        while True:
            message, arrived = await work.get()
            f = message.fields
            if message.type == "job":
                if f["job"] not in self._waiting:
                    continue  # cancelled while it waited, and answered then
                ahead = self._waiting.pop(f["job"])
                try:
                    reply = await self._job(f["job"], message, arrived, ahead)
                finally:
                    self._hand(-1)
                outbox.put_nowait((reply, arrived))
                continue
            try:
                if message.type == "put":
                    await in_daemon_thread(self.executor.store, f["key"], message.arrays[0], f["pin"])
                else:
                    await in_daemon_thread(self.executor.drop, f["key"])
            except Exception as exc:  # a put that does not fit: the cache listing says it is not held
                log.warning("could not %s %s: %s", message.type, f["key"], exc)
            outbox.put_nowait((self._cache_message(f["key"]), None))

    async def _send_replies(
        self, conn: WebSocketClientConnection, outbox: asyncio.Queue[tuple[Message, float | None]]
    ) -> None:
        """Answers in the order they were made; a job's carries the keys now cached, and how long it was held here."""
        while True:
            reply, arrived = await outbox.get()
            if arrived is not None:
                fields = {**reply.fields, "cache": self.executor.cache.held()}
                if reply.type == "result":  # the broker takes this from the job's time to measure the link
                    fields["timings"] = {**fields["timings"], "held": (time.perf_counter() - arrived) * 1e3}
                reply = Message(reply.type, fields, reply.arrays)
            await self._send(conn, reply)

    async def _job(self, job: str, message: Message, arrived: float, ahead: int) -> Message:
        """Run one job that came at ``arrived`` with ``ahead`` jobs before it here; the result or error to send back."""
        if job in self._cancelled:
            self._cancelled.discard(job)
            return error_message(job, "cancelled", "cancelled before it started")
        started = time.perf_counter()
        warmed = self.executor.warmer.dispatches - self._warmed  # since the job before it ended
        try:
            program = Program.from_message(message)
            outputs, timings = await self._run(program)
            if self.slowdown > 1:
                # Compiling is left out: it happens once per kernel, and speeds are measured without it.
                ran = time.perf_counter() - started - timings.get("compile", 0.0) / 1e3
                throttle = max(0.0, ran) * (self.slowdown - 1)
                await asyncio.sleep(throttle)
                timings["throttle"] = throttle * 1e3
        except ProtocolError as exc:
            return error_message(job, "protocol", str(exc))
        except GpuJobError as exc:
            return error_message(job, exc.kind, str(exc), missing=exc.missing)
        except Exception as exc:  # report it to the notebook rather than die silently
            log.exception("job %s failed", job)
            return error_message(job, "internal", f"{type(exc).__name__}: {exc}")
        if job in self._cancelled:
            self._cancelled.discard(job)
            return error_message(job, "cancelled", "cancelled while running")
        timings["total"] = (time.perf_counter() - started) * 1e3
        timings["queue"] = (started - arrived) * 1e3  # here, waiting for the jobs ahead of it
        timings["ahead"] = ahead  # jobs running or waiting here when it came: it arrived while they ran
        timings["warmed"] = warmed  # warming dispatches since the last job: while it arrived and waited
        self._warmed = self.executor.warmer.dispatches
        self.jobs_done += 1
        log.debug("job %s done in %.1f ms (kernel %.1f ms)", job, timings["total"], timings["kernel"])
        if self.on_job:
            self.on_job(job, timings)
        return Message("result", {"job": job, "timings": timings}, outputs)

    async def _run(self, program: Program) -> tuple[list[np.ndarray], dict[str, float]]:
        """``program`` run; after a lost device (lost before the job or during it: wgpu-py says which
        only by failing), run once more on a new one, so the job costs no attempt.  With no new device
        the answer is ``no-device``: the broker stops sending work here and gives what is held to others."""
        if self.gone:
            raise GpuJobError("no-device", self.gone)
        try:
            return await in_daemon_thread(self.executor.run, program)
        except GpuJobError as exc:
            if exc.kind != "device-lost":
                raise
            log.warning("the GPU device was lost (%s); getting a new one", str(exc).splitlines()[-1])
        try:
            self.executor = await in_daemon_thread(self.executor.renewed)
        except Exception as exc:
            self.gone = f"GPU device lost and none came back: {exc}"
            log.error("%s", self.gone)
            raise GpuJobError("no-device", self.gone) from exc
        self._warmed = 0
        self._pause.close()  # the jobs here keep the new device's warmer paused, as they did the old one's
        if self._in_hand:
            self._pause.enter_context(self.executor.warmer.paused())
        return await in_daemon_thread(self.executor.run, program)

    def _hand(self, change: int) -> None:
        """``change`` more (or fewer) jobs here whose compute has not finished; while there are any, no warming.

        A job here runs as soon as the one before it is done; a warming dispatch slipped into
        that gap (a few milliseconds, and the GIL besides) only delayed it.
        """
        held, self._in_hand = self._in_hand, max(0, self._in_hand + change)  # (a job cancelled with its link: 0)
        if self._in_hand and not held:
            self._pause.enter_context(self.executor.warmer.paused())
        elif held and not self._in_hand:
            self._pause.close()
        self._rewarm()

    def _rewarm(self) -> None:
        """Warm the GPU while a job's data arrives, from :data:`~.warm.LEAD` seconds before it is due until
        one warming dispatch before (a dispatch begun later would only hold the job up), and again once it
        is a dispatch late; jobs here pause the warming (see :meth:`_hand` and :mod:`.warm`).

        Over loopback a job's data is all here within a dispatch of its head: no warming then, as the
        clock could not rise in that time anyway.
        """
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None
        now = time.perf_counter()
        warm, check = warming(self._arrival.warm_in(now), self._arrival.due - now)
        arriving = self.warm and self._assembler.arriving("job") > 0
        self.executor.warmer.arm(arriving and warm)
        if arriving and check is not None:
            self._warm_timer = asyncio.get_running_loop().call_later(check, self._rewarm)

    def _cache_message(self, key: str) -> Message:
        """What the cache holds, in answer to the put or free of ``key``."""
        cache = self.executor.cache
        return Message("cache", {"key": key, "held": cache.held(), "pinned": cache.pinned()})

    async def _watch(self, conn: WebSocketClientConnection) -> None:
        """Close a link on which the broker has gone quiet, so the main loop reconnects."""
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - self._last_heard > self._silence_limit:
                log.warning("no heartbeat from the broker for %.0f s", self._silence_limit)
                conn.close(CLOSE_SILENT, "broker silent")
                return

    async def _send(self, conn: WebSocketClientConnection, message: Message) -> None:
        for parts in encode_parts(message, next(self._ids) & 0xFFFFFFFF):
            await send_parts(conn.protocol, parts, client=True)


def warming(start: float, due: float) -> tuple[bool, float | None]:
    """Whether to warm while a job's data arrives, and in how many seconds to ask again (None: no need).

    ``start`` and ``due`` are seconds until warming should start (:data:`~.warm.LEAD` before the data
    is due) and until the data is due.  Warming stops one dispatch (:data:`~.warm.SPIN_SECONDS`)
    before then, as a dispatch begun later would hold the job up, and starts again once the data is
    a dispatch late (the rate it came at was wrong).
    """
    if start > 0:
        return False, start
    if due > SPIN_SECONDS:
        return True, due - SPIN_SECONDS
    if due > -SPIN_SECONDS:
        return False, due + SPIN_SECONDS
    return True, None


async def connect(url: str) -> WebSocketClientConnection:
    """A WebSocket to the broker (``url`` as :func:`socket_url` makes it) that sends each frame at once.

    With Nagle's algorithm on (tornado's default), a small frame written while the last
    segment is unacknowledged waits for its ACK, which the broker's side delays by up to
    40 ms: a result's last frame, or a pong, then arrived tens of milliseconds late.
    """
    conn = await websocket_connect(url, max_message_size=MAX_FRAME)
    conn.protocol.set_nodelay(True)
    return conn


def error_message(job: str, kind: str, text: str, **extra: Any) -> Message:
    return Message("error", {"job": job, "kind": kind, "message": text, **extra})


def run_forever(url: str, **options: Any) -> None:
    """Blocking entry point: build the executor, then serve ``url`` until the broker stops."""
    executor = WgpuExecutor(
        options.pop("power_preference", "high-performance"),
        options.pop("cache_bytes", 1 << 30),
        options.pop("max_buffer_bytes", None),
    )
    worker = NativeWorker(url, executor, **options)
    asyncio.run(worker.run())
