"""A relay on 127.0.0.1 that makes loopback behave like a phone's link: a rate and a delay each way.

Loopback hides what a phone sees: tens of MB/s and tens of milliseconds over Wi-Fi, a few MB/s
and more through a tunnel on 4G.  Put a :class:`LinkRelay` between a worker and the broker and
the worker's traffic crosses a link of that kind, while both ends stay real sockets::

    with LinkRelay(broker.port, WIFI) as relay:
        workers.start(relay.url(broker.url))       # the worker connects through the relay

Each direction is a token bucket (the rate) feeding a bounded delay line (the delay).  Bytes are
read from the sender no faster than the rate allows; each chunk falls due when its transmission
ends plus the delay; the line holds at most the link's bandwidth-delay product (plus two chunks).
When the receiver stops reading, the line fills, the relay stops reading, and the sender's TCP
window closes, so back-pressure works as it does on a real link and nothing piles up here.
The relay's own socket buffers are kept small for the same reason.

A test can also *hold* a direction (:meth:`LinkRelay.hold`): its bytes wait in the relay until
:meth:`LinkRelay.release`, so a job's answer cannot arrive while the test acts on the job, however
fast the worker computes.  What a held direction's sender writes is read on (without bound) and
kept; if the sender closes its end meanwhile, what was held is dropped and both ends are closed,
as when a worker dies before its answer gets through.  Held bytes are silence too: a broker whose
``silence_limit`` is shorter than the hold declares the worker lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

#: Receive buffer of the relay's sockets (bytes): data waits in the delay line, not in the kernel.
SOCKET_BUFFER = 256 * 1024
#: Bytes read at once from an unshaped direction.
UNSHAPED_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Direction:
    """One direction of a link: ``rate`` in bytes per second (None: as fast as loopback) and
    ``delay``, the one-way latency in seconds."""

    rate: float | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"a link's rate must be a positive number of bytes per second, not {self.rate!r}")
        if not self.delay >= 0:
            raise ValueError(f"a link's delay must be a non-negative number of seconds, not {self.delay!r}")

    @property
    def chunk(self) -> int:
        """Bytes moved as one piece: about 2 ms at the rate (4 to 64 KiB), so pacing stays smooth."""
        if self.rate is None:
            return UNSHAPED_CHUNK
        return int(min(64 * 1024, max(4 * 1024, self.rate * 0.002)))

    @property
    def capacity(self) -> int:
        """Bytes the delay line may hold: what is in flight on such a link, plus two chunks."""
        in_flight = (self.rate or 0.0) * self.delay
        return int(in_flight) + 2 * self.chunk

    def __str__(self) -> str:
        rate = "unlimited" if self.rate is None else f"{self.rate / 1e6:g} MB/s"
        return f"{rate}, {self.delay * 1e3:g} ms"


@dataclass(frozen=True)
class Link:
    """A link between broker and worker: ``down`` carries jobs to the worker, ``up`` its results."""

    name: str
    down: Direction
    up: Direction

    @classmethod
    def symmetric(cls, name: str, rate: float | None, delay: float) -> Link:
        """The same rate (bytes/s) and one-way delay (seconds) both ways."""
        return cls(name, Direction(rate, delay), Direction(rate, delay))

    @property
    def round_trip(self) -> float:
        return self.down.delay + self.up.delay

    def __str__(self) -> str:
        if self.down == self.up:
            return f"{self.name} ({self.down} each way)"
        return f"{self.name} (down {self.down}, up {self.up})"


#: A phone on 4G reaching the notebook through a tunnel: a few MB/s, tens of ms each way.
PHONE_4G = Link.symmetric("phone on 4G through a tunnel", 5e6, 0.060)
#: A phone or laptop on the same Wi-Fi: tens of MB/s, ~20 ms each way.
WIFI = Link.symmetric("Wi-Fi", 40e6, 0.020)
#: Loopback as it is: for a relay that is there to be held (see :meth:`LinkRelay.hold`).
LOOPBACK = Link.symmetric("loopback", None, 0.0)


class _DelayLine:
    """Chunks waiting for their due time, at most ``capacity`` bytes of them (one chunk always fits).

    While ``paused`` nothing leaves the line and any number of bytes may enter it, so that the
    sender's closing is seen (see :meth:`LinkRelay.hold`).
    """

    def __init__(self, capacity: int, paused: bool) -> None:
        self.capacity = capacity
        self.paused = paused
        self.items: deque[tuple[float, bytes] | None] = deque()  # None: the sender closed
        self.held = 0
        self.changed = asyncio.Condition()

    async def put(self, item: tuple[float, bytes] | None) -> None:
        size = 0 if item is None else len(item[1])
        async with self.changed:
            await self.changed.wait_for(lambda: self.paused or not self.held or self.held + size <= self.capacity)
            self.items.append(item)
            self.held += size
            self.changed.notify_all()

    async def pause(self, paused: bool) -> None:
        async with self.changed:
            self.paused = paused
            self.changed.notify_all()

    async def flowing(self) -> None:
        """Return once the line is not paused (at once if it is not): the caller may then deliver."""
        async with self.changed:
            await self.changed.wait_for(lambda: not self.paused)

    async def head(self) -> tuple[float, bytes] | None:
        """The oldest item, left in the line (its bytes are in flight until delivered)."""
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.items))
            return self.items[0]

    async def pop(self) -> None:
        async with self.changed:
            item = self.items.popleft()
            self.held -= 0 if item is None else len(item[1])
            self.changed.notify_all()


class LinkRelay:
    """Forwards connections on its own port to ``target_port`` on 127.0.0.1, shaped like ``link``.

    Runs its own event loop in a daemon thread (start/stop, or use it as a context manager).
    ``moved`` counts the bytes delivered each way (``"down"``: to the connecting side, which is
    the worker; ``"up"``: to the target, the broker), for benchmarks that compare with a bound.
    """

    def __init__(self, target_port: int, link: Link, *, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.link = link
        self.host = host
        self.port = 0
        self.moved = {"down": 0, "up": 0}
        self._paused = {"down": False, "up": False}
        self._lines: dict[str, set[_DelayLine]] = {"down": set(), "up": set()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webnet-link-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Future[None]] = set()

    def start(self) -> LinkRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection; end the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> LinkRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, url: str) -> str:
        """``url`` (a broker's worker URL) with its port replaced by the relay's."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{self.host}:{self.port}"))

    def hold(self, direction: str) -> None:
        """From now until :meth:`release`, deliver nothing more in ``direction`` ("down" or "up"), on every
        connection, present or future: bytes already delivered stay delivered, the rest wait here."""
        self._pause(direction, True)

    def release(self, direction: str) -> None:
        """Deliver what :meth:`hold` kept in ``direction``, in order, and carry on as before."""
        self._pause(direction, False)

    def waiting(self, direction: str) -> int:
        """Bytes read and not yet delivered in ``direction``, over all connections: while it is held,
        what its sender has sent so far (a worker's whole answer, once it has sent it)."""
        self._check(direction)

        async def count() -> int:
            return sum(line.held for line in self._lines[direction])

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(10)

    def _pause(self, direction: str, paused: bool) -> None:
        self._check(direction)

        async def pause() -> None:
            self._paused[direction] = paused
            for line in list(self._lines[direction]):
                await line.pause(paused)

        asyncio.run_coroutine_threadsafe(pause(), self._loop).result(10)

    def _check(self, direction: str) -> None:
        if direction not in self._paused:
            raise ValueError(f"a link's direction is 'down' or 'up', not {direction!r}")

    # -- on the relay's loop -------------------------------------------------------------------

    async def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)  # accepted sockets inherit it
        listener.bind((self.host, 0))
        self.port = listener.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=listener)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):  # each connection then closes both of its sockets
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, worker_in: asyncio.StreamReader, worker_out: asyncio.StreamWriter) -> None:
        target = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        target.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(target, self.target)
            broker_in, broker_out = await asyncio.open_connection(sock=target)
        except OSError:
            target.close()
            worker_out.close()
            return
        pumps = {
            asyncio.ensure_future(self._carry(broker_in, worker_out, self.link.down, "down")),
            asyncio.ensure_future(self._carry(worker_in, broker_out, self.link.up, "up")),
        }
        self._pumps |= pumps
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps -= pumps
            for writer in (worker_out, broker_out):
                writer.close()

    async def _carry(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: Direction, name: str
    ) -> None:
        """Read at the rate into the delay line while :meth:`_deliver` empties it when chunks fall due."""
        line = _DelayLine(direction.capacity, self._paused[name])
        self._lines[name].add(line)
        delivery = asyncio.ensure_future(self._deliver(line, sink, name))
        loop = asyncio.get_running_loop()
        free_at = loop.time()  # when the link finishes sending what it has read so far
        try:
            while data := await source.read(direction.chunk):
                now = loop.time()
                if direction.rate:
                    # The bucket holds one chunk's worth of tokens, so a late wake-up is made up for.
                    burst = direction.chunk / direction.rate
                    free_at = max(free_at, now - burst) + len(data) / direction.rate
                else:
                    free_at = now
                await line.put((max(free_at, now) + direction.delay, data))  # never sooner than the delay
                if direction.rate:  # the next chunk may start once this one is under way
                    await _sleep_until(loop, free_at - burst)
            if line.paused:  # the sender is gone and what it sent is held: the link dies with it
                raise ConnectionAbortedError(f"the sender closed while the relay held its bytes ({name})")
            await line.put(None)
            await delivery
        finally:
            self._lines[name].discard(line)
            delivery.cancel()

    async def _deliver(self, line: _DelayLine, sink: asyncio.StreamWriter, name: str) -> None:
        loop = asyncio.get_running_loop()
        while (item := await line.head()) is not None:
            due, data = item
            await _sleep_until(loop, due)
            await line.flowing()
            sink.write(data)
            await sink.drain()  # a receiver that does not read holds the line full: back-pressure
            self.moved[name] += len(data)
            await line.pop()
        await line.flowing()
        if sink.can_write_eof():
            sink.write_eof()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    wait = when - loop.time()
    if wait > 0:
        await asyncio.sleep(wait)


__all__ = ["LOOPBACK", "PHONE_4G", "WIFI", "Direction", "Link", "LinkRelay"]
