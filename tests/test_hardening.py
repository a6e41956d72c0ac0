"""A stranger with the broker's address: what it can hold, what it can make the broker read or print.

Real sockets on loopback against a real broker (in this process, or in a process of its own
where its memory, descriptors and stderr are measured), and a real kernel for what reaches a
cell.  Limits are set small so that each test waits a fraction of a second, never a minute.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gc
import logging
import os
import queue
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.listener import ServerLimits
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client.jobs import Job
from webnet_magic.errors import DeviceLimitError, VerificationFailed, WorkerError, WorkerLost
from webnet_magic.protocol import CLOSE_BAD_TOKEN, CLOSE_SILENT, CLOSE_TRY_LATER, Message

from .conftest import Workers, wait_until
from .peers import Peer, answering, calibrated, held, nothing_held, result, send, small_program
from .test_kernel import Kernel

DEADLINE = 30.0  # seconds: a fail-safe for every wait below, far above what each should take
MiB = 1024 * 1024


# -- raw clients ------------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def closing_times(socks: list[socket.socket], since: float | None = None) -> list[float | None]:
    """For each socket, the seconds from ``since`` (default: now) until the broker closed it, reading and
    dropping whatever comes before; None for one still open after ``DEADLINE``."""
    since = time.monotonic() if since is None else since
    closed: list[float | None] = [None] * len(socks)
    live = dict(enumerate(socks))
    while live and (left := since + DEADLINE - time.monotonic()) > 0:
        for sock in select.select(list(live.values()), [], [], left)[0]:
            index = socks.index(sock)
            try:
                data = sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                closed[index] = round(time.monotonic() - since, 3)
                del live[index]
    return closed


def upgrade(port: int, query: str, headers: str = "", host: str | None = None) -> tuple[socket.socket, bytes]:
    """A WebSocket handshake to ``/ws?query`` by hand (so any frame can follow): the socket and the answer's head."""
    sock = connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws?{query} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the head is consumed here
        assert chunk, f"the broker closed the handshake: {head!r}"
        head += chunk
    return sock, head


def websocket(port: int, query: str) -> socket.socket:
    """An upgraded WebSocket to ``/ws?query``."""
    sock, head = upgrade(port, query)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def close_code(sock: socket.socket) -> int:
    """The code of the close frame the broker sends first."""
    first, length = sock.recv(2, socket.MSG_WAITALL)
    assert first == 0x88 and length < 126, (first, length)
    return struct.unpack(">H", sock.recv(length, socket.MSG_WAITALL)[:2])[0]


def frame_head(nbytes: int) -> bytes:
    """A masked binary frame's head announcing ``nbytes`` of payload, as a browser would send it."""
    return bytes([0x82, 0x80 | 127]) + struct.pack(">Q", nbytes) + os.urandom(4)


# -- a broker in a process of its own --------------------------------------------------------


@dataclass
class BrokerProcess:
    """``tests/standalone_broker.py`` running; what it printed so far, its stderr once ended."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.expect("url")
        self.port = int(self.url.split(":")[2].split("/")[0])

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.put(line.strip())

    def expect(self, word: str) -> str:
        """The rest of the next printed line that starts with ``word``."""
        end = time.monotonic() + 120
        while (left := end - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(word + " "):
                return line[len(word) + 1 :]
        raise AssertionError(f"the broker process never printed {word!r}")

    def memory(self, field_name: str) -> int:
        """``VmRSS`` (now) or ``VmHWM`` (the peak) of the process, in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(field_name)

    def stop(self) -> str:
        """End the process (closing its stdin ends it); its stderr."""
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.process.stderr.read()  # type: ignore[union-attr]


@pytest.fixture
def broker_process() -> Iterator[object]:
    made: list[BrokerProcess] = []

    def start(*args: str) -> BrokerProcess:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.standalone_broker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        made.append(BrokerProcess(process))
        return made[-1]

    yield start
    for broker in made:
        if broker.process.poll() is None:
            broker.stop()


# -- without the token: time and descriptors ------------------------------------------------


def test_idle_slow_and_stalled_connections_are_closed() -> None:
    """An idle connection, headers a byte at a time, an idle keep-alive, and TLS handshakes never
    finished (silent, or a partial hello) on the --lan listener are all closed after ``idle`` seconds."""
    from webnet_magic.tunnel.lan import make_certificate

    broker = BrokerThread(calibrate=False, limits=ServerLimits(idle=0.5)).start()
    try:
        https = broker.serve_https("127.0.0.1", make_certificate("127.0.0.1").context)
        opened = time.monotonic()
        idle, keep_alive, silent_tls, partial_tls = [connect(port) for port in (broker.port, broker.port, https, https)]
        keep_alive.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        partial_tls.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]))  # a ClientHello's first bytes
        closed = dict(zip(["idle", "keep-alive", "TLS", "TLS hello"], closing_times(
            [idle, keep_alive, silent_tls, partial_tls], opened), strict=True))  # fmt: skip
        slow = connect(broker.port)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        opened, still_open = time.monotonic(), True
        for _ in range(int(DEADLINE / 0.05)):  # a byte every 50 ms, until the broker hangs up
            try:
                slow.sendall(b"a")
            except ConnectionError:
                break
            if select.select([slow], [], [], 0.05)[0]:
                try:
                    still_open = bool(slow.recv(1))
                except ConnectionError:  # closed with a reset rather than a FIN: closed all the same
                    still_open = False
                break
        closed["slowloris"] = None if still_open else round(time.monotonic() - opened, 3)
        print(f"\nclosed after (s), idle limit 0.5 s: {closed}")
        assert all(seconds is not None for seconds in closed.values()), closed
    finally:
        broker.stop()


def test_connections_beyond_the_cap_are_closed_at_once_and_counted(workers: Workers) -> None:
    """With every HTTP slot held, a further connection is closed as it comes and counted as refused;
    once the holders are gone, a real worker joins."""
    broker = BrokerThread(calibrate=False, limits=ServerLimits(connections=8, idle=60)).start()
    try:
        held = [connect(broker.port) for _ in range(8)]
        assert served(held[-1]), "the eighth connection was not served"  # so all eight were accepted
        extra = [connect(broker.port) for _ in range(12)]
        assert None not in closing_times(extra)
        assert not select.select(held, [], [], 0)[0], "a held connection was closed (only those over the cap should be)"
        assert broker.fleet()["refused"] == 12
        for sock in held:
            sock.close()
        workers.start(broker.url)
        wait_until(broker.devices, 60, "a worker to join")
    finally:
        broker.stop()


def served(sock: socket.socket) -> bool:
    """Whether a request on ``sock`` is answered (the connection was accepted and is being served)."""
    sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(DEADLINE)
    return sock.recv(65536).startswith(b"HTTP/1.1 204")


def test_out_of_descriptors_is_logged_once_and_the_broker_recovers(broker_process, workers: Workers) -> None:
    """A broker process out of descriptors (a stranger holding connections) pauses accepting instead of
    logging a traceback per turn of its loop; as the idle ones are closed, a real worker joins."""
    broker = broker_process("--spare", "16", "--idle", "1", "--accept-pause", "0.2", "--connections", "1000")
    held = [connect(broker.port) for _ in range(48)]  # three times its spare descriptors
    worker = workers.start(broker.url)
    try:
        joined = broker.expect("devices")
    except AssertionError:
        worker.kill()
        joined = f"none; the worker's stderr:\n{worker.communicate(timeout=30)[1].decode()[-3000:]}"
    for sock in held:
        sock.close()
    stderr = broker.stop()
    assert joined == "1", f"devices: {joined}\nthe broker's stderr:\n{stderr[-3000:]}"
    warnings = [line for line in stderr.splitlines() if "out of file descriptors" in line]
    assert len(warnings) == 1 and "Traceback" not in stderr and len(stderr.splitlines()) < 100, stderr[-3000:]


# -- without the token: memory ---------------------------------------------------------------


def chunked(nbytes: int) -> Iterator[bytes]:
    """A chunked request body of ``nbytes`` of zeros, a MiB per chunk."""
    for _ in range(nbytes // MiB):
        yield b"100000\r\n" + bytes(MiB) + b"\r\n"


def zeros(nbytes: int) -> Iterator[bytes]:
    for _ in range(nbytes // MiB):
        yield bytes(MiB)


def sent_before_refused(port: int, head: bytes, body: Iterator[bytes], query: str | None = None) -> int:
    """Bytes of ``body`` sent after ``head`` before the broker hung up (on a WebSocket refused for its
    token when ``query`` is given: its close code is checked first)."""
    sock = websocket(port, query) if query is not None else connect(port)
    sent = 0
    with sock:
        if query is not None:
            assert close_code(sock) == CLOSE_BAD_TOKEN
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
                sent += len(chunk)
        except (ConnectionError, TimeoutError):
            pass
    return sent


def test_bodies_and_frames_without_the_token_are_refused_unread(broker_process) -> None:
    """Eight 64 MB request bodies at once (by length and chunked, on each route) and eight 16 MiB frames on
    WebSockets refused for their token: none is read whole, and the broker's peak memory stays flat."""
    broker = broker_process()
    port, body = broker.port, 64 * MiB
    before = broker.memory("VmHWM")
    requests = [
        (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {body}\r\n\r\n".encode(), zeros(body))
        for method, path in [("POST", "/"), ("GET", "/"), ("GET", "/ws"), ("GET", "/worker.js"), ("PUT", "/nowhere")]
    ] + [
        (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode(), chunked(body))
        for path in ["/", "/ws", "/favicon.ico"]
    ]
    frame = 16 * MiB
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda request: sent_before_refused(port, *request), requests))
        frames = list(
            pool.map(lambda _: sent_before_refused(port, frame_head(frame), zeros(frame), "token=x"), range(8))
        )
    grown = broker.memory("VmHWM") - before
    print(
        f"\n8 bodies of 64 MB and 8 frames of 16 MiB: peak RSS {before / MiB:.0f} -> {(before + grown) / MiB:.0f} MiB"
    )
    assert all(sent < body for sent in bodies), bodies
    assert all(sent < frame for sent in frames), frames
    assert grown < 32 * MiB


# -- without the token: logs ------------------------------------------------------------------


def test_the_token_reaches_no_log(caplog: pytest.LogCaptureFixture) -> None:
    """Everything the broker and tornado log at any level, through a worker's visit, the page, wrong
    tokens, a token beside an undecodable one, a protocol error and the stop, never holds the token."""
    caplog.set_level(logging.DEBUG)
    broker = BrokerThread(calibrate=False).start()
    token = broker.token
    try:
        peer = Peer(broker)
        with connect(broker.port) as page:
            page.sendall(f"GET /?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert page.recv(65536).startswith(b"HTTP/1.1 200")
        for query in ["token=wrong", "", f"token={token}&token=%ff"]:  # tornado's error log prints the whole URL
            with websocket(broker.port, query) as sock:
                assert close_code(sock) == CLOSE_BAD_TOKEN
        with websocket(broker.port, f"token={token}") as sock:
            sock.sendall(bytes([0x81, 0x82]) + bytes(4) + b"hi")  # a text frame: a protocol error
            assert closing_times([sock]) != [None]
        peer.stop()
    finally:
        broker.stop()
    assert "refused a connection" in caplog.text  # the broker thread's records were captured
    assert token not in caplog.text


# -- without the token: the notebook ----------------------------------------------------------


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    if k.manager.is_alive():
        k.shutdown()


def test_refused_connections_print_nothing_in_a_real_kernel_and_are_counted(kernel: Kernel) -> None:
    """100 WebSockets with a wrong token and 20 plain-HTTP requests to the --lan https port while a cell
    runs: not one line reaches that cell or any other, and the fleet's count of refusals says 100."""
    assert kernel.execute("%load_ext webnet_magic").status == "ok"
    assert kernel.execute("%webnet start --lan 127.0.0.1").status == "ok"
    kernel.execute("from webnet_magic.client.session import current")
    port = kernel.value("current().broker.port")
    https = int(kernel.value("current().url").split(":")[2].split("/")[0])

    def attack() -> None:
        for _ in range(100):
            with websocket(port, "token=wrong") as sock:
                assert close_code(sock) == CLOSE_BAD_TOKEN
        for _ in range(20):
            with connect(https) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # not TLS: the handshake fails
                closing_times([sock])

    wait = "import time\nend = time.monotonic() + 60\nwhile current().broker.fleet().get('refused', 0) < 100 and "
    wait += "time.monotonic() < end:\n    time.sleep(0.05)\ntime.sleep(1)"  # and a second for the TLS failures
    printed = streams(kernel, "print('ready', flush=True)\n" + wait, when_ready=attack)
    printed += streams(kernel, "pass")  # anything flushed late
    assert printed == ["ready\n"]
    assert kernel.value("current().broker.fleet()['refused']") == 100


def streams(kernel: Kernel, code: str, when_ready: object = None) -> list[str]:
    """Run ``code``; every stream text on iopub meanwhile, whichever cell it is addressed to.

    ``when_ready`` runs once the cell prints ``ready``.
    """
    msg_id = kernel.client.execute(code)
    texts: list[str] = []
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            msg = kernel.client.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
        except queue.Empty:
            break
        content, mine = msg["content"], msg["parent_header"].get("msg_id") == msg_id
        if msg["msg_type"] == "stream":
            texts.append(content["text"])
            if mine and content["text"] == "ready\n" and callable(when_ready):
                when_ready()
        elif mine and msg["msg_type"] == "status" and content["execution_state"] == "idle":
            return texts
    raise AssertionError(f"no idle status for: {code}")


# -- bad luck: a shard that fails for good ------------------------------------------------------


def test_a_job_whose_shard_fails_for_good_reports_that_error_at_once(
    broker: BrokerThread, workers: Workers, peers: list[Peer]
) -> None:
    """One task waits for a device that left; another cannot fit the buffers of the only device (a real
    worker reporting 1 MiB): the job fails with that error straight away and cancels the waiting task, and
    so does `await` on it.  (Both waited out their whole timeout: a plain future cancelled with
    ``Future.cancel()`` never wakes ``concurrent.futures.wait``.)"""
    gone = Peer(broker)
    peers.append(gone)
    gone.stop()
    wait_until(lambda: broker.devices() == [], 10, "the peer to leave")
    workers.start(broker.url, "--max-buffer-mb", "1")
    (worker,) = wait_until(broker.devices, 60, "the native worker")
    big = ops.plan("matmul", np.ones((1024, 512), np.float32), np.ones((512, 4), np.float32)).program  # 2 MiB in

    def job() -> Job:
        waiting = broker.submit(small_program(), devices=frozenset({gone.welcome.fields["device"]}))
        return Job(broker, "j", [waiting, broker.submit(big)], lambda results: [a for r in results for a in r])

    first = job()
    error = first.exception(timeout=120)  # JobTimeout-sized: a hang shows as TimeoutError here
    assert isinstance(error, DeviceLimitError) and f"above device {worker['id']}'s" in str(error)
    assert first.tasks[0].future.cancelled()

    async def awaited() -> object:
        return await asyncio.wait_for(job(), 120)

    with pytest.raises(DeviceLimitError, match="above device"), concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, awaited()).result()  # a loop of its own: Playwright's may own this thread's
    assert broker.call(lambda: list(broker.broker.scheduler.tasks)) == []


# -- with the token, from another site -----------------------------------------------------------


def test_a_websocket_from_another_site_is_refused_even_with_the_token(broker: BrokerThread) -> None:
    """What a browser sends for another site's script (Sec-Fetch-Site, or an Origin that is not the Host)
    is refused with 403 and counted; the page's own origin, and clients that send no Origin, are let in."""
    port, query = broker.port, f"token={broker.token}"
    foreign = [
        "Origin: https://elsewhere.example\r\nSec-Fetch-Site: cross-site\r\n",
        "Origin: http://localhost:{port}\r\nSec-Fetch-Site: same-site\r\n",
        "Origin: https://elsewhere.example\r\n",  # an older browser: no Sec-Fetch-Site
    ]
    for headers in foreign:
        sock, head = upgrade(port, query, headers.format(port=port))
        sock.close()
        assert head.startswith(b"HTTP/1.1 403"), (headers, head)
    assert broker.fleet()["refused"] == len(foreign)
    own = [
        f"Origin: http://127.0.0.1:{port}\r\nSec-Fetch-Site: same-origin\r\n",
        f"Origin: http://127.0.0.1:{port}\r\n",
        "",
    ]
    for headers in own:
        sock, head = upgrade(port, query, headers)
        sock.close()
        assert head.startswith(b"HTTP/1.1 101"), (headers, head)


def test_chromium_refuses_another_origins_socket_with_the_token(page, broker: BrokerThread) -> None:
    """In a real browser: a script on another origin (here http://localhost:PORT, not 127.0.0.1) that knows
    the token cannot open the worker socket; the broker counts the refusal."""
    page.goto(f"http://localhost:{broker.port}/worker.css")  # any page of that other origin
    code = page.evaluate(
        """url => new Promise(done => {
            const socket = new WebSocket(url);
            socket.onopen = () => done("open");
            socket.onclose = event => done(event.code);
        })""",
        f"ws://127.0.0.1:{broker.port}/ws?token={broker.token}",
    )
    assert code == 1006  # the handshake was refused (403): the browser says only that it closed
    assert broker.fleet()["refused"] == 1
    assert broker.devices() == []


# -- with the token: what jobs and devices leave behind -------------------------------------------

RIGHT = np.full((4, 2), 3, np.float32)  # small_program's answer


def failing(kind: str):
    """A peer's reply that reports a ``kind`` error for every job."""

    async def reply(conn, job: Message) -> None:
        await send(conn, Message("error", {"job": job.fields["job"], "kind": kind, "message": "no"}))

    return reply


async def hang_up(conn, job: Message) -> None:
    conn.close()


def test_every_ended_job_leaves_the_scheduler_and_the_panel(hasty_broker: BrokerThread, peers: list[Peer]) -> None:
    """Jobs that succeed (on a device whose timings are absurd), fail, are cancelled, or lose three devices,
    and a job whose first shard fails before it submits the others (as a model's first stage may): once
    all have ended, the scheduler holds no task, queue entry, attempt or job, and the panel lists none
    (the holder, which never acknowledges the cancel, is dropped after the short grace)."""
    broker = hasty_broker
    absurd = {"kernel": 1e300, "upload": 86_400_000, "download": -1, "throttle": 86_400_000, "held": 1e9}
    big = ops.plan("matmul", np.ones((128, 128), np.float32), np.ones((128, 128), np.float32)).program

    async def liar_about_time(conn, job: Message) -> None:
        shape = tuple(job.fields["outputs"][0]["shape"])
        answer = RIGHT if shape == RIGHT.shape else np.full(shape, 128, np.float32)
        await send(conn, result(job, answer, timings=absurd))

    ids = {}

    def join(name: str, reply) -> None:
        peers.append(Peer(broker, reply))
        ids[name] = peers[-1].welcome.fields["device"]

    join("ok", answering(RIGHT))
    join("timings", liar_about_time)
    for _ in range(3):  # measured work: the absurd timings make the device's speed
        broker.submit(big, devices=frozenset({ids["timings"]})).future.result(10)
    for _ in range(4):  # placed by those figures
        np.testing.assert_array_equal(broker.submit(small_program()).future.result(10)[0], RIGHT)
    for name, reply in [("broken", failing("compile")), ("holder", None)] + [(f"gone{i}", hang_up) for i in range(3)]:
        join(name, reply)
    on = {name: frozenset({device}) for name, device in ids.items()}

    with pytest.raises(WorkerError, match="reported a compile error"):
        broker.submit(small_program(), devices=on["broken"]).future.result(10)
    with pytest.raises(WorkerLost, match="failed 3 times"):
        broker.submit(small_program(), devices=on["gone0"] | on["gone1"] | on["gone2"]).future.result(10)
    first = broker.submit(small_program(), devices=on["broken"], group="j900", shards=3, task_id="j900.1")
    with pytest.raises(WorkerError):
        first.future.result(10)

    staged = broker.submit(small_program(), devices=on["ok"], group="j901", shards=2, task_id="j901.1")
    staged.future.result(10)
    later = broker.submit(small_program(), devices=on["holder"], group="j901", shards=2, task_id="j901.2")
    wait_until(lambda: broker.fleet()["jobs"], 5, "the second stage to be listed")
    assert [(j["id"], j["done"], j["total"]) for j in broker.fleet()["jobs"]] == [("j901", 1, 2)]
    broker.cancel(later.id)
    wait_until(later.future.cancelled, 5, "the cancel")

    wait_until(lambda: nothing_held(broker), 10, f"the scheduler to hold nothing (it holds {held(broker)})")


def test_devices_lost_mid_calibration_leave_nothing_behind(peers: list[Peer], caplog: pytest.LogCaptureFixture) -> None:
    """Forty devices leave mid-calibration (before answering, or between its two runs) while a steady one
    runs the notebook's jobs: every job ends right, no calibration run is left waiting for a device that
    left, and nothing reaches the log as an unread error ("Future exception was never retrieved")."""
    caplog.set_level(logging.DEBUG)
    thread = BrokerThread(heartbeat=0.2, silence_limit=1.5).start()
    try:
        steady = Peer(thread, calibrated(lambda job: RIGHT))
        peers.append(steady)
        jobs = [thread.submit(small_program(), devices=frozenset({steady.welcome.fields["device"]}))
                for _ in range(10)]  # fmt: skip
        for i in range(40):
            answered = [0]

            async def second_run_hangs_up(conn, job: Message, answered: list[int] = answered) -> None:
                answered[0] += 1
                await (calibrated()(conn, job) if answered[0] == 1 else hang_up(conn, job))

            victim = Peer(thread, hang_up if i % 2 else second_run_hangs_up)
            peers.append(victim)
            victim.thread.join(30)  # it hangs up on the calibration run it is given
            assert not victim.thread.is_alive()
            gone = victim.welcome.fields["device"]
            wait_until(lambda gone=gone: gone not in {d["id"] for d in thread.devices()}, 10, f"{gone} to leave")
        for job in jobs:
            np.testing.assert_array_equal(job.future.result(30)[0], RIGHT)
        wait_until(lambda: nothing_held(thread), 10, f"the scheduler to hold nothing (it holds {held(thread)})")
        assert thread.devices()[0]["gflops"]  # the steady one calibrated
    finally:
        thread.stop()
    gc.collect()  # an unread future's error is logged as it is collected
    assert "never retrieved" not in caplog.text


# -- with the token: bans that outlive a reconnect, and slots --------------------------------------

WRONG = np.full((4, 2), 7, np.float32)
PHONE = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 26_0 like Mac OS X) Safari/605.1.15"}


def right_or_not(outputs: list[np.ndarray]) -> str | None:
    return None if np.array_equal(outputs[0], RIGHT) else "not all threes"


def test_a_banned_device_that_reconnects_without_its_secret_is_banned_again(
    broker: BrokerThread, peers: list[Peer]
) -> None:
    """A phone banned by --verify reloads its page (a new connection, no resume secret): it is known by its
    address, user agent, runtime and adapter, banned as it joins and given no work; a device that differs
    (here its adapter) is not."""
    peers.append(Peer(broker, answering(RIGHT)))
    liar = Peer(broker, answering(WRONG), headers=PHONE)
    peers.append(liar)
    banned = liar.welcome.fields["device"]
    with pytest.raises(VerificationFailed, match="not all threes"):
        broker.submit(small_program(), check=right_or_not, devices=frozenset({banned})).future.result(10)
    liar.stop()
    wait_until(lambda: banned not in {d["id"] for d in broker.devices()}, 10, "the liar to leave")

    again = Peer(broker, answering(WRONG), headers=PHONE)
    peers.append(again)
    device = {d["id"]: d for d in broker.devices()}[again.welcome.fields["device"]]
    assert device["id"] != banned and device["state"] == "banned"
    assert f"same address, browser and adapter as banned device {banned} (failed verification" in device["reason"]
    for _ in range(3):
        np.testing.assert_array_equal(broker.submit(small_program(), check=right_or_not).future.result(10)[0], RIGHT)
    assert again.jobs == []

    other = Peer(broker, answering(RIGHT), headers=PHONE, adapter={"description": "another GPU"})
    peers.append(other)
    assert not {d["id"]: d for d in broker.devices()}[other.welcome.fields["device"]]["banned"]


def test_liars_with_a_new_identity_each_fail_no_verified_job(broker: BrokerThread, peers: list[Peer]) -> None:
    """Three liars that cannot be told apart from strangers (each its own user agent), each measured far faster
    than the one honest device: each takes a verified job first and is banned, and the job's retry waits for
    the device whose results have passed verification before, so every job ends right.  (Retries went to
    the next fresh device: the three liars used up the first job's three attempts.)"""
    big = ops.plan("matmul", np.ones((128, 128), np.float32), np.ones((128, 128), np.float32)).program
    right, wrong = np.full((128, 128), 128, np.float32), np.zeros((128, 128), np.float32)

    def all_128(outputs: list[np.ndarray]) -> str | None:
        return None if np.array_equal(outputs[0], right) else "not all 128"

    def timed(ms: float, lies_after: int | None = None):
        answered = [0]

        async def reply(conn, job: Message) -> None:
            answered[0] += 1
            lie = lies_after is not None and answered[0] > lies_after
            await send(conn, result(job, wrong if lie else right, timings={"kernel": ms}))

        return reply

    honest = Peer(broker, timed(400.0))
    peers.append(honest)
    on_honest = frozenset({honest.welcome.fields["device"]})
    broker.submit(big, devices=on_honest, check=all_128).future.result(10)  # its speed, and a verified record
    liars = [Peer(broker, timed(0.5, lies_after=1), headers={"User-Agent": f"stranger {i}"}) for i in range(3)]
    peers += liars
    for liar in liars:  # right the first time: its speed, 800 times the honest device's
        broker.submit(big, devices=frozenset({liar.welcome.fields["device"]})).future.result(10)
    for _ in liars:
        np.testing.assert_array_equal(broker.submit(big, check=all_128).future.result(10)[0], right)
    assert [len(liar.jobs) for liar in liars] == [2, 2, 2]  # its speed job and one verified job each
    assert all(d["banned"] for d in broker.devices() if d["id"] not in on_honest)


def test_a_device_that_does_not_calibrate_in_time_is_dropped(peers: list[Peer]) -> None:
    """A device that answers heartbeats but never its calibration gives its slot back once the calibration's
    lease runs out (it held it for good: the lease of a task only it may run was extended forever)."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=1.5, lease=0.5).start()
    try:
        idler = Peer(thread)
        peers.append(idler)
        wait_until(lambda: thread.devices() == [], 30, "the idler to be dropped")
        idler.thread.join(10)
        assert idler.jobs and idler.close_code == CLOSE_SILENT
    finally:
        thread.stop()


def test_one_address_holds_at_most_its_share_of_worker_slots(peers: list[Peer]) -> None:
    """Sixteen worker connections from one address through the tunnel (the agent's X-Forwarded-For) are held; a
    seventeenth is told to try later (1013).  Other addresses, and loopback connections that did not come by the
    tunnel (whose X-Forwarded-For is not believed), still join; one of the sixteen gone, the address joins again."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=60, calibrate=False).start()
    try:
        thread.expose_through("tunnel.webnet.test")
        query = f"token={thread.token}"

        def through_tunnel(address: str) -> str:
            return f"X-Forwarded-For: 10.1.2.3, {address}\r\n"  # the agent appends what it saw

        held = []
        for _ in range(16):
            sock, head = upgrade(thread.port, query, through_tunnel("203.0.113.9"), host="tunnel.webnet.test")
            assert head.startswith(b"HTTP/1.1 101"), head
            held.append(sock)
        sock, head = upgrade(thread.port, query, through_tunnel("203.0.113.9"), host="tunnel.webnet.test")
        with sock:
            assert head.startswith(b"HTTP/1.1 101") and close_code(sock) == CLOSE_TRY_LATER
        tunnel = {"Host": "tunnel.webnet.test", "X-Forwarded-For": "198.51.100.4"}
        peers.append(Peer(thread, headers=tunnel))  # another address
        peers.append(Peer(thread, headers={"X-Forwarded-For": "203.0.113.9"}))  # not by the tunnel: loopback
        held.pop().close()
        wait_until(lambda: len(thread.broker.sockets) == 17, 10, "the closed connection to be forgotten")
        peers.append(Peer(thread, headers={"Host": "tunnel.webnet.test", "X-Forwarded-For": "203.0.113.9"}))
        assert len(thread.devices()) == 3
        for sock in held:
            sock.close()
    finally:
        thread.stop()


# -- with the token: limits -------------------------------------------------------------------------


def test_limits_below_what_webgpu_guarantees_are_refused_with_the_reason(
    broker: BrokerThread, peers: list[Peer]
) -> None:
    """A device reporting 64 invocations per workgroup (WebGPU guarantees 256, and the kernels use 256) joins
    refused, saying which limit and why, and is given no work; a device that only caps its buffers is kept."""
    small = Peer(broker, limits={"maxComputeInvocationsPerWorkgroup": 64, "maxComputeWorkgroupSizeX": 64})
    capped = Peer(broker, answering(RIGHT), limits={"maxStorageBufferBindingSize": 4096, "maxBufferSize": 4096})
    peers += [small, capped]
    devices = {d["id"]: d for d in broker.devices()}
    refused = devices[small.welcome.fields["device"]]
    assert refused["state"] == "no WebGPU"
    assert refused["reason"] == (
        "it reports maxComputeInvocationsPerWorkgroup of 64, maxComputeWorkgroupSizeX of 64, below what every "
        "WebGPU device supports (256, 256)"
    )
    assert devices[capped.welcome.fields["device"]]["state"] == "idle"
    for _ in range(3):
        np.testing.assert_array_equal(broker.submit(small_program()).future.result(10)[0], RIGHT)
    assert small.jobs == [] and len(capped.jobs) == 3


def test_a_device_with_tiny_buffers_or_still_calibrating_shrinks_no_one_elses_work(
    workers: Workers, peers: list[Peer]
) -> None:
    """Beside a real worker, a device reporting 4 KiB buffers and one still calibrating with 512 KiB ones: a
    64 x 64 matmul is one job on the real worker (it was cut into 16 blocks for the smallest device of all)."""
    from webnet_magic.client.session import Session

    session = Session(heartbeat=0.2, silence_limit=5.0)
    try:
        workers.start(session.url)
        (real,) = session.wait_for_devices(1, 120)
        tiny = Peer(session.broker, limits={"maxStorageBufferBindingSize": 4096, "maxBufferSize": 4096})
        slow = Peer(session.broker, limits={"maxStorageBufferBindingSize": 512 << 10, "maxBufferSize": 512 << 10})
        peers += [tiny, slow]
        states = {d["id"]: d["state"] for d in session.devices()}
        assert states[tiny.welcome.fields["device"]] == "idle"  # its calibration cannot fit it: no speed
        assert states[slow.welcome.fields["device"]] == "calibrating"  # and stays so: it never answers
        a, b = np.random.default_rng(6).standard_normal((2, 64, 64), np.float32)
        np.testing.assert_allclose(session.matmul(a, b, timeout=60), a @ b, rtol=1e-4, atol=1e-4)
        done = {d["id"]: d["jobs_done"] for d in session.devices()}
        assert done[real["id"]] == 1 and tiny.jobs == []
    finally:
        session.stop()


def test_with_every_slot_taken_a_device_that_cannot_work_gives_its_slot_to_one_that_can(
    peers: list[Peer],
) -> None:
    """64 worker connections from four addresses (through the tunnel), one of them without WebGPU and one
    banned by --verify: a 65th device takes the slot of the one without WebGPU (the longest connected of
    the two), a 66th the banned one's, and a 67th is told to try later (1013)."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=60, calibrate=False).start()
    try:
        thread.expose_through("tunnel.webnet.test")

        def through(i: int) -> dict[str, str]:  # each its own browser: no ban reaches another
            return {"Host": "tunnel.webnet.test", "X-Forwarded-For": f"203.0.113.{i % 4 + 1}", "User-Agent": str(i)}

        useless = Peer(thread, headers=through(0), webgpu=False, reason="no GPU here")
        liar = Peer(thread, answering(WRONG), headers=through(1))
        peers += [useless, liar]
        with pytest.raises(VerificationFailed):
            thread.submit(small_program(), check=right_or_not).future.result(10)
        peers += [Peer(thread, headers=through(i)) for i in range(2, 64)]
        assert len(thread.devices()) == 64
        newcomers = [Peer(thread, headers={"User-Agent": f"newcomer {i}"}) for i in range(2)]
        peers += newcomers
        for gone in (useless, liar):
            gone.thread.join(10)
            assert gone.close_code == CLOSE_TRY_LATER
        sock, head = upgrade(thread.port, f"token={thread.token}")
        with sock:
            assert head.startswith(b"HTTP/1.1 101") and close_code(sock) == CLOSE_TRY_LATER
        devices = thread.devices()
        assert len(devices) == 64 and not any(d["banned"] or d["state"] == "no WebGPU" for d in devices)
    finally:
        thread.stop()
