"""The broker's HTTP server, with bounds on what a connection may cost before it shows the token.

With a tunnel or ``--lan`` on, anyone who finds the port can connect.  Tornado's defaults
suit a server behind a proxy, not one a stranger reaches directly: a connection may idle
for an hour (headers trickling in, or a TLS handshake never finished), a 100 MB request
body is read before any handler sees it, nothing caps how many connections are open, and
a process out of descriptors logs a traceback on every turn of the loop (the listening
socket stays readable).  :class:`Listener` is tornado's server with those four bounded.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.iostream

log = logging.getLogger(__name__)

#: Connections accepted per wake-up of the listening socket at most (tornado's own figure), so
#: a flood of connections cannot starve the workers' traffic on the same loop.
ACCEPT_BATCH = 128
#: accept() errors that mean "no descriptor or memory for one more connection now", not "this one failed".
STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds between warnings that descriptors ran out (each episode is also counted).
STARVED_WARN_EVERY = 60.0


@dataclass(frozen=True)
class ServerLimits:
    """What a connection may take before it is a worker's WebSocket (whose frames the protocol bounds).

    Attributes
    ----------
    idle
        Seconds a connection may go without delivering a request's complete headers: an idle
        keep-alive connection, headers sent a byte at a time, and a TLS handshake that never
        finishes (no header can arrive before it does) are all closed after this long.
    body
        Seconds to read a request body.
    body_bytes
        The largest request body.  Every route is a GET; a larger body is refused from its
        ``Content-Length`` (or as its chunks add up) without being read.
    header_bytes
        The largest request head (cookies a browser keeps for 127.0.0.1 travel in it).
    connections
        HTTP connections open at once.  A worker's WebSocket stops counting once upgraded;
        further connections are closed as soon as they are accepted.
    accept_pause
        Seconds to stop accepting while the process has no descriptor for one more connection.
    """

    idle: float = 10.0
    body: float = 10.0
    body_bytes: int = 64 * 1024
    header_bytes: int = 64 * 1024
    connections: int = 128
    accept_pause: float = 1.0


class Listener(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server within :class:`ServerLimits`; ``on_refused(reason)`` hears each connection
    closed for being over the cap."""

    def initialize(  # type: ignore[override]
        self,
        request_callback: Any,
        limits: ServerLimits,
        on_refused: Callable[[str], None],
        ssl_options: Any = None,
    ) -> None:
        super().initialize(
            request_callback,
            ssl_options=ssl_options,
            idle_connection_timeout=limits.idle,  # tornado's header timeout too
            body_timeout=limits.body,
            max_body_size=limits.body_bytes,
            max_header_size=limits.header_bytes,
        )
        self.limits = limits
        self.on_refused = on_refused
        self.open_connections = 0  # HTTP connections (not yet WebSockets) open now
        self.starved = 0  # times accepting paused for want of a descriptor
        self._starved_since: float | None = None
        self._last_warning = -STARVED_WARN_EVERY

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Listen on ``sockets`` as tornado does, with the cap and the pause when descriptors run out.

        (Tornado's own accept handler lets ``EMFILE`` escape into the loop's exception handler,
        once per turn of the loop for as long as the backlog is not empty.)
        """
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> Callable[[], None]:
        """Accept connections on ``sock`` as they come; returns the function that stops it."""
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        resume: list[asyncio.TimerHandle] = []

        def accept() -> None:
            for _ in range(ACCEPT_BATCH):
                try:
                    connection, address = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno not in STARVED:  # that connection failed (reset, aborted): the next may not
                        continue
                    loop.remove_reader(fd)
                    resume[:] = [loop.call_later(self.limits.accept_pause, loop.add_reader, fd, accept)]
                    self._starving(exc)
                    return
                self._accepted()
                if self.open_connections >= self.limits.connections:
                    connection.close()
                    self.on_refused(f"more than {self.limits.connections} connections at once")
                    continue
                self._handle_connection(connection, address)

        def stop() -> None:
            loop.remove_reader(fd)
            for handle in resume:
                handle.cancel()

        loop.add_reader(fd, accept)
        return stop

    def _starving(self, exc: OSError) -> None:
        self.starved += 1
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
        level = logging.WARNING if now - self._last_warning >= STARVED_WARN_EVERY else logging.DEBUG
        if level == logging.WARNING:
            self._last_warning = now
        log.log(level, "out of file descriptors (%s): new connections wait, %g s at a time, until some close",
                exc.strerror, self.limits.accept_pause)  # fmt: skip

    def _accepted(self) -> None:
        if self._starved_since is not None:
            waited = time.monotonic() - self._starved_since
            log.info("accepting connections again after %.1f s without descriptors", waited)
            self._starved_since = None
