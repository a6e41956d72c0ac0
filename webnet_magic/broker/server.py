"""The broker's one port: the worker page, its scripts, and the workers' WebSocket.

Serving page and socket on one origin is what lets one tunnel (ngrok) carry both,
and lets the page build its ``ws(s)://`` URL from ``location`` alone.  Tornado
does HTTP and WebSocket natively and already ships with ipykernel.

Every WebSocket must present the session token (compared in constant time), and
one that a browser opens must come from the worker page's own origin.  A socket
without the token is told so (close code 4003) and may then send only small frames
until it goes, which are dropped: a larger one aborts the connection unread.  No
log line holds the request's query string, since that is where the token travels.
Every authenticated frame goes through :class:`~webnet_magic.protocol.Assembler`, whose
schema checks and size budget run before anything reaches the scheduler: a
worker may send only as many bytes as the broker asked it for.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import tornado.web
import tornado.websocket

from ..config import DEFAULTS, Config
from ..errors import DeviceNotFound, WorkerLost
from ..frames import send_parts
from ..program import padded
from ..protocol import (
    CLOSE_BAD_TOKEN,
    CLOSE_GOING_AWAY,
    CLOSE_PROTOCOL,
    CLOSE_SILENT,
    CLOSE_TRY_LATER,
    MAX_FRAME,
    Assembler,
    Message,
    ProtocolError,
    encode_parts,
)
from .hello import below_webgpu, printable, reported_limits
from .origin import MAX_PER_ADDRESS, origin_of
from .scheduler import Device, Scheduler

log = logging.getLogger(__name__)

STATIC_FILES = ("worker.js", "protocol.js", "protocol.json", "gpu.js", "spin.wgsl", "worker.css")


#: Worker connections beyond this many are refused (each may hold a job's buffers in flight).
MAX_SOCKETS = 64
#: The largest frame a connection refused for its token may send while its close handshake lasts
#: (an honest worker's hello fits; it is dropped unread by the protocol either way).
REFUSED_FRAME = 64 * 1024
#: Seconds a refused WebSocket has to answer the close before it is dropped.
REFUSED_LINGER = 1.0
#: Seconds between panel updates for refused connections (a flood of them is one update a second).
REFUSALS_SHOWN_EVERY = 1.0


class Broker:
    """State shared by all connections: token, settings (heartbeat timing, ...), scheduler."""

    def __init__(
        self,
        token: str,
        static_dir: Path,
        config: Config = DEFAULTS,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.token = token
        self.static_dir = static_dir
        self.config = config
        self.scheduler = Scheduler(on_change, config)
        self.sockets: set[WorkerSocket] = set()
        self.pinned: dict[str, np.ndarray] = {}  # content key -> array, for %webnet put
        self.bytes_sent = 0  # to all workers this session, frames included
        self.bytes_received = 0
        self.tunnel_host: str | None = None  # the public Host of a tunnel to this broker, if one is open
        self.tunnel_bytes = 0  # page, scripts and frames through it, both ways (ngrok's free tier caps them)
        self.refused = 0  # connections closed unheard: wrong token, another site's, over the cap
        self._on_change = on_change
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._refusals_shown: asyncio.TimerHandle | None = None

    def free_a_slot(self) -> bool:
        """With every worker slot taken, close the connection of a device that can never be given work
        (no WebGPU, limits below WebGPU's, banned: the longest connected of them); whether there was one."""
        device = self.scheduler.unworkable()
        sock = next((s for s in self.sockets if device is not None and s.device is device), None)
        if sock is None:
            return False
        sock.close(CLOSE_TRY_LATER, "its slot went to a device that can work")
        sock.forget("gave its slot to a device that can work")
        return True

    def token_ok(self, offered: bytes) -> bool:
        """Whether ``offered`` (the raw query value: nothing to decode, so nothing to fail) is the token."""
        return hmac.compare_digest(offered, self.token.encode())

    def refuse(self, reason: str) -> None:
        """Count a connection closed before it showed the token; the panel hears of it, at most once a second.

        Logged at debug only: a stranger can make any number of these, and none may print.
        """
        self.refused += 1
        log.debug("refused a connection: %s", reason)
        if self._refusals_shown is None:
            self._refusals_shown = asyncio.get_running_loop().call_later(REFUSALS_SHOWN_EVERY, self._show_refusals)

    def _show_refusals(self) -> None:
        self._refusals_shown = None
        self._on_change()

    def application(self) -> tornado.web.Application:
        return tornado.web.Application(
            [
                (r"/", WorkerPage, {"broker": self}),
                (r"/ws", WorkerSocket, {"broker": self}),
                (r"/favicon\.ico", NoContent),
                (
                    "/({})".format("|".join(name.replace(".", r"\.") for name in STATIC_FILES)),
                    StaticFile,
                    {"path": str(self.static_dir), "broker": self},
                ),
            ],
            websocket_ping_interval=None,  # heartbeats are application messages, visible to JS
            log_function=_log_without_query,
        )

    def start_heartbeat(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        """Ping every worker; close one silent for longer than ``silence_limit`` (its job then fails)."""
        while True:
            await asyncio.sleep(self.config.heartbeat)
            now = time.monotonic()
            for sock in list(self.sockets):
                if sock.device is None:
                    continue
                if now - sock.device.last_seen > self.config.silence_limit:
                    sock.close(CLOSE_SILENT, f"no heartbeat for {self.config.silence_limit:.0f} s")
                    sock.forget("stopped answering heartbeats")
                else:
                    sock.spawn(sock.send(Message("ping", {"t": time.time()})))

    async def echo(self, device_id: str | None, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Send ``arrays`` to a worker in a ping and await them back in its pong.

        Measures the link alone (no GPU involved): the benchmark's transport figure,
        and a way to check a device's bandwidth before giving it large work.
        """
        socks = [s for s in self.sockets if s.device and (device_id is None or s.device.id == device_id)]
        if not socks:
            raise DeviceNotFound(f"no device {device_id!r} is connected" if device_id else "no device is connected")
        return await socks[0].probe(arrays)

    async def put(self, key: str, array: np.ndarray) -> dict[str, bool]:
        """Pin ``array`` on every connected device (and on devices that join later); who holds it."""
        self.pinned[key] = array
        socks = [s for s in self.sockets if s.device and s.device.usable]
        held = await asyncio.gather(
            *(s.pin(key, array) if s.fits(padded(array.nbytes)) else _false() for s in socks), return_exceptions=True
        )
        return {s.device.id: ok is True for s, ok in zip(socks, held, strict=True) if s.device}

    def free(self, key: str) -> None:
        """Unpin ``key``: devices drop it, and devices that join later are not sent it."""
        self.pinned.pop(key, None)
        for sock in self.sockets:
            if sock.device is not None:
                sock.spawn(sock.send(Message("free", {"key": key})))

    async def shutdown(self) -> None:
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
        if self._refusals_shown is not None:
            self._refusals_shown.cancel()
        self.scheduler.stop()
        for sock in list(self.sockets):
            sock.close(CLOSE_GOING_AWAY, "the notebook stopped the broker")


def _log_without_query(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, minus the query string: it holds the session token."""
    request = handler.request
    log.debug("%d %s %s (%s)", handler.get_status(), request.method, request.path, request.remote_ip)


class Handler(tornado.web.RequestHandler):
    """What all the broker's handlers share: errors logged without the URL, whose query holds the token.

    (Tornado's own ``log_exception`` writes the full URI and the request's repr.)
    """

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        request = self.request
        if isinstance(value, tornado.web.HTTPError):
            log.debug("%d on %s %s: %s", value.status_code, request.method, request.path, value.log_message)
        else:
            log.error("unexpected error on %s %s from %s", request.method, request.path, request.remote_ip,
                      exc_info=(typ, value, tb) if typ is not None and value is not None else None)  # fmt: skip


class TunnelCounted(Handler):
    """A handler whose response bodies through the tunnel are added to the broker's count."""

    broker: Broker

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        if self.request.host == self.broker.tunnel_host and isinstance(chunk, bytes):
            self.broker.tunnel_bytes += len(chunk)
        super().write(chunk)


class WorkerPage(TunnelCounted):
    """The worker page; it needs the token in its query string but only the socket checks it."""

    def initialize(self, broker: Broker) -> None:
        self.broker = broker

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")  # its URL holds the token
        host = self.request.host
        self.set_header("Content-Security-Policy", f"default-src 'self'; connect-src 'self' ws://{host} wss://{host}")
        self.write((self.broker.static_dir / "worker.html").read_bytes())


class NoContent(Handler):
    """Browsers ask for a favicon; an empty answer keeps their consoles clean."""

    def get(self) -> None:
        self.set_status(204)


class StaticFile(TunnelCounted, tornado.web.StaticFileHandler):
    def initialize(self, path: str, broker: Broker) -> None:  # type: ignore[override]
        super().initialize(path)
        self.broker = broker

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


class WorkerSocket(Handler, tornado.websocket.WebSocketHandler):
    """One worker's connection: token check, frame assembly, and dispatch to the scheduler."""

    def initialize(self, broker: Broker) -> None:
        self.broker = broker
        self.device: Device | None = None
        self.assembler = Assembler(budget=self._budget)
        self.probes: dict[str, tuple[int, asyncio.Future[list[np.ndarray]]]] = {}
        self.cache_waiters: dict[str, list[asyncio.Future[set[str]]]] = {}  # key -> puts awaiting the answer
        self._message_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hello_timer: asyncio.TimerHandle | None = None
        self.tunneled = False
        self.authorized = False

    def prepare(self) -> None:
        # Before the upgrade, so that a refused connection's frame limit is set from its first frame.
        self.authorized = self.broker.token_ok(self.request.query_arguments.get("token", [b""])[-1])
        self.tunneled = self.request.host == self.broker.tunnel_host
        self.origin = origin_of(self.request.remote_ip, self.request.headers, self.tunneled)

    @property
    def max_message_size(self) -> int:
        """The largest frame tornado reads: the protocol's, or for a refused connection a hello's at most."""
        return MAX_FRAME if self.authorized else REFUSED_FRAME

    def check_origin(self, origin: str) -> bool:
        """Refuse a WebSocket opened by a script of another site (counted as a refusal).

        Tornado asks only about cross-origin requests (by ``Sec-Fetch-Site``, else ``Origin`` against
        ``Host``); the worker page opens its socket on its own origin, by whichever name it was
        reached (loopback, the tunnel's, the LAN address).  So a leaked token cannot be used from
        another web page in the browser of whoever visits it.  Clients that are not browsers send
        no ``Origin``: for them, as for everyone, the token is the credential.
        """
        self.broker.refuse(f"a WebSocket opened by another site ({origin[:100]})")
        return False

    def open(self) -> None:
        if not self.authorized:
            self.broker.refuse(f"a wrong or missing token from {self.request.remote_ip}")
            self.close(CLOSE_BAD_TOKEN, "wrong or missing session token: open the link from %webnet url")
            asyncio.get_running_loop().call_later(REFUSED_LINGER, self._drop)
            return
        if len(self.broker.sockets) >= MAX_SOCKETS and not self.broker.free_a_slot():
            self.close(CLOSE_TRY_LATER, f"this notebook already has {MAX_SOCKETS} worker connections")
            return
        if sum(s.origin.address == self.origin.address for s in self.broker.sockets) >= MAX_PER_ADDRESS:
            self.close(CLOSE_TRY_LATER, f"this address already has {MAX_PER_ADDRESS} worker connections")
            return
        self.broker.sockets.add(self)
        self.set_nodelay(True)  # a job's head frame goes out alone: Nagle's algorithm held it for an ACK
        limit = self.broker.config.silence_limit  # a peer silent this long is gone, hello or not
        self._hello_timer = asyncio.get_running_loop().call_later(
            limit, lambda: self._refuse(f"no hello within {limit:g} s")
        )

    async def on_message(self, frame: str | bytes) -> None:
        if self not in self.broker.sockets:
            return
        if isinstance(frame, str):
            return self._refuse("text frames are not part of the protocol")
        self.broker.bytes_received += len(frame)
        self.broker.tunnel_bytes += len(frame) if self.tunneled else 0
        if self.device is not None:
            self.device.bytes_in += len(frame)
            self.device.last_seen = time.monotonic()
        try:
            message = self.assembler.feed(frame)
            if message is not None:
                self._handle(message)
        except ProtocolError as exc:
            self._refuse(str(exc))
        except Exception as exc:  # kept from tornado's log, which would print the URL's token
            log.exception("closing a worker connection after an unexpected error")
            self._refuse(f"unexpected error: {type(exc).__name__}")

    def _budget(self, type_: str, fields: Mapping[str, Any]) -> int:
        """Payload bytes this worker may send: an attempt's declared outputs, a probe's own size, else none.

        A late or duplicate result of one of its recent attempts may be read in full (and is then
        dropped by the scheduler); anything else with data is a protocol error.
        """
        if type_ == "result" and self.device is not None:
            return self.device.reply_budget(str(fields.get("job")))
        if type_ == "pong":
            return self.probes.get(str(fields.get("probe")), (0, None))[0]
        return 0

    def _handle(self, m: Message) -> None:
        f, scheduler = m.fields, self.broker.scheduler
        if m.type == "hello":
            if self.device is not None:
                raise ProtocolError("a second hello on one connection")
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            self.device = self._device(f)
            # The timings the worker keeps to: pings this often, and a broker silent this long is gone.
            config = self.broker.config
            welcome = {"device": self.device.id, "heartbeat": config.heartbeat, "silence": config.silence_limit,
                       "resume": self.device.resume}  # fmt: skip
            self.spawn(self.send(Message("welcome", welcome)))
            for key, array in self.broker.pinned.items():  # what the notebook pinned reaches new devices too
                if self.fits(padded(array.nbytes)):
                    self.spawn(self.send(Message("put", {"key": key, "pin": True}, [array])))
            scheduler.join(self.device)
            return
        if self.device is None:
            raise ProtocolError(f"{m.type!r} before hello")
        held = f.get("held", f.get("cache"))  # a worker lists the keys it keeps after each job, put and free
        if held is not None:
            self.device.cache = _keys(held)
        if m.type == "cache":  # the answer to the put or free of one key
            for waiter in self.cache_waiters.pop(f["key"], []):
                if not waiter.done():
                    waiter.set_result(self.device.cache)
        elif m.type == "result":
            scheduler.result(self.device, _text(f["job"]), list(m.arrays), f["timings"])
        elif m.type == "error":
            scheduler.error(self.device, _text(f["job"]), _text(f["kind"]), _text(f["message"]))
        elif m.type == "pong":
            _, answer = self.probes.pop(str(f.get("probe")), (0, None))
            if answer is not None and not answer.done():
                answer.set_result(list(m.arrays))
            elif "probe" not in f:  # a heartbeat's: the link's round trip
                scheduler.pong(self.device, f["t"])
        else:
            raise ProtocolError(f"a worker may not send {m.type!r}")

    def _device(self, f: Mapping[str, Any]) -> Device:
        """The scheduler's record of this worker, from its hello (strings cut to sane lengths).

        A hello with the resume secret of a device this session knows makes the worker that
        device again; a connection it still has open (a link that died unnoticed) is closed.
        """
        features = f.get("features", [])
        if not isinstance(features, list):
            raise ProtocolError("hello field 'features' must be a list")
        scheduler = self.broker.scheduler
        limits = reported_limits(f["limits"])
        unfit = below_webgpu(limits) if f["webgpu"] else None
        device = Device(
            id="",
            name=printable(f["name"], 120),
            runtime=printable(f["runtime"], 20),
            adapter={printable(k, 40): printable(v, 200) for k, v in list(f["adapter"].items())[:20]},
            limits=limits,
            features=[printable(x, 60) for x in features][:100],
            webgpu=f["webgpu"] and unfit is None,
            reason=unfit or printable(f.get("reason", ""), 500),
            send=self.send,
            close=self.close,
            origin=self.origin,
        )
        old = scheduler.returning(str(f.get("resume", ""))[:64])
        if old is None:
            device.id, device.resume = scheduler.new_device_id(), secrets.token_urlsafe(18)
            return device
        for sock in list(self.broker.sockets):
            if sock is not self and sock.device is old:
                sock.close(CLOSE_SILENT, "the worker reconnected")
        scheduler.leave(old, "reconnected on a new link")  # its attempt, if any, is queued again
        scheduler.departed.pop(old.resume, None)
        device.inherit(old)
        return device

    async def pin(self, key: str, array: np.ndarray) -> bool:
        """Send ``array`` to be kept pinned under ``key``; True once the worker says it holds it.

        (Not ``put``: that name is tornado's handler for HTTP PUT requests.)
        """
        waiter: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self.cache_waiters.setdefault(key, []).append(waiter)
        await self.send(Message("put", {"key": key, "pin": True}, [array]))
        return key in await waiter

    def fits(self, nbytes: int) -> bool:
        """Whether this device's buffer limits admit one buffer of ``nbytes``."""
        limits = self.device.limits if self.device else {}
        return all(nbytes <= limits.get(name, nbytes) for name in ("maxStorageBufferBindingSize", "maxBufferSize"))

    async def probe(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """``arrays`` out in a ping and back in its pong (see :meth:`Broker.echo`)."""
        probe = f"p{next(self._message_ids)}"
        answer: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self.probes[probe] = (sum(a.nbytes for a in arrays), answer)
        try:
            await self.send(Message("ping", {"t": time.time(), "probe": probe}, arrays))
            return await answer
        finally:
            self.probes.pop(probe, None)

    async def send(self, message: Message) -> None:
        """Send a message as frames, waiting on each write (backpressure).

        Frames of concurrent sends may interleave; each message's stay in order and the
        receiving assembler keeps them apart, so a ping is never stuck behind a large job.
        """
        message_id, job = next(self._message_ids) & 0xFFFFFFFF, message.type == "job"
        for parts in encode_parts(message, message_id, self.broker.config.chunk_size, head_alone=job):  # see warm.py
            await send_parts(self.ws_connection, parts, client=False)  # from the arrays' own memory
            size = sum(len(p) for p in parts)
            self.broker.bytes_sent += size
            self.broker.tunnel_bytes += size if self.tunneled else 0
            if self.device is not None:
                self.device.bytes_out += size

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; a failed send closes this connection."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), tornado.websocket.WebSocketClosedError):
            self.forget("closed its connection")

    def _drop(self) -> None:
        """End a refused connection whose peer has not answered the close (tornado would wait 5 s)."""
        connection = self.ws_connection
        if connection is not None and connection.stream is not None:
            connection.stream.close()

    def _refuse(self, reason: str) -> None:
        log.warning("closing worker connection: %s", reason)
        self.close(CLOSE_PROTOCOL, reason[:120])
        self.forget(f"sent a malformed message ({reason})")

    def forget(self, reason: str) -> None:
        """This connection is over: its device leaves (failing its job), its probes fail."""
        self.broker.sockets.discard(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        for _, answer in self.probes.values():
            if not answer.done():
                answer.set_exception(WorkerLost(f"the device {reason} before answering a probe"))
        self.probes.clear()
        for waiters in self.cache_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(WorkerLost(f"the device {reason} before confirming a put"))
        self.cache_waiters.clear()
        if self.device is not None:
            self.broker.scheduler.leave(self.device, reason)

    def on_close(self) -> None:
        self.forget("disconnected")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    """A worker's string with its lone surrogates (JSON's ``"\\ud800"``) as U+FFFD, and otherwise as sent
    (a compile error's newlines included): no UTF-8 writer takes a lone surrogate, and the scheduler
    logs these strings and puts them in the notebook's errors (a log file's handler printed a traceback
    into the cell; the front end's messages are UTF-8 too)."""
    return _SURROGATE.sub("\ufffd", value)


def _keys(value: Any) -> set[str]:
    """A worker's list of cached content keys, checked (it decides which arrays are not re-sent)."""
    if (
        not isinstance(value, list)
        or len(value) > 100_000
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
    ):
        raise ProtocolError("a cache listing must be a list of content keys")
    return set(value)


async def _false() -> bool:
    return False  # a device too small for the array is not sent it
