"""The broker's asyncio loop in a daemon thread of the kernel, and thread-safe calls into it.

ipykernel owns the main thread's event loop, so the broker gets a loop of its
own in a thread (the pattern of IPython's ``%%script``).  The notebook side
calls in with :meth:`BrokerThread.call` and waits on ``concurrent.futures``
futures, which a Ctrl-C in the main thread can abandon; :meth:`cancel` then
tells the scheduler, so the device drops the job too.

Code on the broker thread never prints: output from a thread lands in
whichever cell ran last.  It logs, and reports through ``on_change``.  Nor may
its logging print: ipykernel gives tornado's logger a handler on the process's
stderr, which it shows in the cell, so what tornado and asyncio log on a broker
thread is moved under ``webnet_magic``'s logger (see :class:`_ThreadLogs`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import ssl as ssl_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tornado.netutil

from .._assets import static_dir
from ..config import DEFAULTS, Config
from ..program import Program
from .listener import Listener, ServerLimits
from .records import DeviceRecord
from .scheduler import Progress
from .server import Broker

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The panel is told of changes at most this often (seconds): ten updates a second look live.
NOTIFY_INTERVAL = 0.1

#: Called on the broker thread after each change with :meth:`BrokerThread.fleet`'s snapshot.
ChangeListener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TaskHandle:
    """A submitted task: its id (for :meth:`BrokerThread.cancel`), a future for its outputs, and
    its progress (updated by the broker thread, read here)."""

    id: str
    future: concurrent.futures.Future[list[np.ndarray]]
    progress: Progress


class BrokerThread:
    """Owns the loop, the HTTP/WebSocket server and the :class:`Broker`; start once, stop once.

    Its settings are ``config`` (the defaults if None) with any of its fields given as keywords,
    e.g. ``BrokerThread(heartbeat=0.2)`` (see :class:`~webnet_magic.config.Config`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        config: Config | None = None,
        on_change: ChangeListener | None = None,
        static: Path | None = None,
        limits: ServerLimits | None = None,
        **settings: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(18)
        self.config = (config or DEFAULTS).updated(**settings)
        self._listeners: list[ChangeListener] = [on_change] if on_change else []
        self._notified = -NOTIFY_INTERVAL  # when the listeners were last told (monotonic seconds)
        self._notify_due: asyncio.TimerHandle | None = None
        self.broker = Broker(self.token, static or static_dir(), self.config, on_change=self._changed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="webnet-broker", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.limits = limits or ServerLimits()
        self._server: Listener | None = None
        self._https: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> BrokerThread:
        """Start serving; raises here (not in the thread) if the port cannot be bound."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        log.info("broker listening on %s port %d", self.host, self.port)  # not self.url: it holds the token
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._startup_error is None

    @property
    def url(self) -> str:
        """The worker page URL, token included: what the QR code and ``%webnet url`` show."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection, fail pending jobs, free the port, end the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        _THREAD_LOGS.attach()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            self._loop.close()
            _THREAD_LOGS.detach()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
            _THREAD_LOGS.detach()

    async def _serve(self) -> None:
        sockets = tornado.netutil.bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self._server = self._listener()
        self._server.add_sockets(sockets)
        self.broker.start_heartbeat()

    async def _shutdown(self) -> None:
        servers = [s for s in (self._server, self._https) if s is not None]
        for server in servers:
            server.stop()  # no new connections; the listening socket is closed now
        await self.broker.shutdown()
        await asyncio.sleep(0.05)  # let the close frames go out
        for server in servers:
            await server.close_all_connections()

    def serve_https(self, host: str, ssl: ssl_module.SSLContext, port: int = 0) -> int:
        """Also serve the page and socket over https on ``host`` (the LAN mode); returns the port.

        The loopback listener stays as it was, for local workers and the notebook's own browser.
        """

        def bind() -> int:
            sockets = tornado.netutil.bind_sockets(port, host)
            self._https = self._listener(ssl)
            self._https.add_sockets(sockets)
            return int(sockets[0].getsockname()[1])

        return self.call(bind)

    def _listener(self, ssl: ssl_module.SSLContext | None = None) -> Listener:
        return Listener(self.broker.application(), self.limits, self.broker.refuse, ssl_options=ssl)

    def expose_through(self, host: str | None) -> None:
        """Count the bytes of requests whose ``Host`` is ``host`` (a tunnel's public name) apart."""
        self.call(setattr, self.broker, "tunnel_host", host)

    # -- calls from the notebook thread --------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` on the broker thread and return its result here."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout)

    def new_job_id(self) -> str:
        """A fresh id for a job (a task, or the shards that share it as their group); safe from any thread."""
        return self.broker.scheduler.new_task_id()

    def submit(self, program: Program, **options: Any) -> TaskHandle:
        """Queue ``program`` without waiting for the broker thread (``options`` as for
        :meth:`Scheduler.submit <webnet_magic.broker.scheduler.Scheduler.submit>`).

        The id is made here, so the handle exists before the task does and a Ctrl-C at any
        point can cancel it: the broker thread runs the submit before any later cancel.
        """
        task_id = options.pop("task_id", None) or self.new_job_id()
        handle = TaskHandle(task_id, concurrent.futures.Future(), Progress())
        self._loop.call_soon_threadsafe(self._submit, handle, program, options)
        return handle

    def _submit(self, handle: TaskHandle, program: Program, options: dict[str, Any]) -> None:
        try:
            task = self.broker.scheduler.submit(program, task_id=handle.id, progress=handle.progress, **options)
        except BaseException as exc:  # the broker is stopping: fail the handle rather than lose it
            handle.future.set_exception(exc)
            return
        task.future.add_done_callback(lambda done: _settle(handle.future, done))

    def echo(self, arrays: list[np.ndarray], device: str | None = None, timeout: float = 60.0) -> list[np.ndarray]:
        """``arrays`` to a worker and back, through its WebSocket only (see :meth:`Broker.echo`)."""
        future = asyncio.run_coroutine_threadsafe(self.broker.echo(device, arrays), self._loop)
        try:
            return future.result(timeout)
        finally:
            future.cancel()  # a no-op once done; otherwise stops waiting for the pong

    def put(self, key: str, array: np.ndarray, timeout: float = 120.0) -> dict[str, bool]:
        """Pin ``array`` under ``key`` on every device (see :meth:`Broker.put`); which of them hold it."""
        return asyncio.run_coroutine_threadsafe(self.broker.put(key, array), self._loop).result(timeout)

    def free(self, key: str) -> None:
        self.call(self.broker.free, key)

    def cancel(self, job_id: str) -> None:
        """Cancel a task; a no-op once the broker has stopped (stopping failed every task)."""
        if self.running:
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):  # it stopped meanwhile
                self.call(self.broker.scheduler.cancel, job_id)

    def records(self) -> list[DeviceRecord]:
        """The connected devices, typed: what the notebook side decides from."""
        return self.call(self._records)

    def devices(self) -> list[dict[str, Any]]:
        """The connected devices as the panel shows them (see :meth:`DeviceRecord.display`)."""
        return [r.display() for r in self.records()]

    def fleet(self) -> dict[str, Any]:
        """Devices, jobs in flight, and bytes sent and received this session: what the panel shows."""
        return self.call(self._fleet)

    def add_listener(self, listener: ChangeListener) -> None:
        """Also call ``listener`` (on the broker thread) after every change; it must not print."""
        self._listeners.append(listener)

    def _records(self) -> list[DeviceRecord]:
        return [d.record() for d in self.broker.scheduler.devices.values()]

    def _fleet(self) -> dict[str, Any]:
        return {
            "devices": [r.display() for r in self._records()],
            "jobs": self.broker.scheduler.jobs_snapshot(),
            "sent": self.broker.bytes_sent,
            "received": self.broker.bytes_received,
            "tunnel": self.broker.tunnel_bytes,
            "refused": self.broker.refused,  # connections closed before showing the token
        }

    def _changed(self) -> None:
        """Tell the listeners (the panel) of a change, at most once every :data:`NOTIFY_INTERVAL`.

        A device may cause thousands of changes a second (a hostile one reconnecting, frame after
        frame): each would be a fleet snapshot and a message to the notebook's front end, which
        then falls behind.  The first change is told at once; those that follow within the
        interval are told together at its end, so the last state always arrives.
        """
        if not self._listeners or self._notify_due is not None:
            return
        wait = self._notified + NOTIFY_INTERVAL - time.monotonic()
        if wait <= 0:
            self._notify()
        else:
            self._notify_due = self._loop.call_later(wait, self._notify)

    def _notify(self) -> None:
        self._notify_due, self._notified = None, time.monotonic()
        snapshot = self._fleet()
        for listener in self._listeners:
            listener(snapshot)


class _ThreadLogs(logging.Filter):
    """Hands what tornado and asyncio log on a broker thread to ``webnet_magic``'s logger instead.

    That logger has only a NullHandler (and the root logger's handlers, if the user set some),
    so a stranger's bad handshakes never print into a cell, while anyone who configures logging
    still sees them.  Records from other threads pass untouched.
    """

    LOGGERS = ("tornado", "tornado.access", "tornado.application", "tornado.general", "asyncio")

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def attach(self) -> None:
        """Start moving the current thread's records (filters are added once)."""
        self.threads.add(threading.get_ident())
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        self.threads.discard(threading.get_ident())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread not in self.threads:
            return True
        log.handle(record)
        return False


_THREAD_LOGS = _ThreadLogs()


def _settle(target: concurrent.futures.Future[T], source: asyncio.Future[T]) -> None:
    """Copy an asyncio future's outcome into a concurrent one (which another thread waits on)."""
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
