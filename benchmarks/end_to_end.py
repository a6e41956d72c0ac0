"""End-to-end ``%webnet matmul`` against its parts and references, all measured in one run.

1. Matmul, n x n float32, for each size: the magic end to end (notebook -> broker ->
   worker -> back, result bound), the kernel alone as timed by the same worker, and
   numpy on this CPU.
2. Transport alone: a 64 MB array to the worker and back through the broker (a ping
   carrying the array; no GPU), beside a plain tornado WebSocket echo of the same bytes
   on loopback, in the same frame size and as one message.
3. ``--wire f16`` against float32: the chain ``relu(X @ W1 + b1) @ W2`` (n x n, fresh
   inputs each call, so every byte travels and is converted), both ways in one run.

    python benchmarks/end_to_end.py [--worker native|browser] [--sizes 256 1024 2048] [--chain 2048]

Figures vary with the machine; ratios to the references measured here are what carry over.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import platform
import threading
import time
from collections.abc import Callable

import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from IPython.core.interactiveshell import InteractiveShell

from webnet_magic.client import session as sessions
from webnet_magic.protocol import DEFAULT_CHUNK


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Fastest of ``repeat`` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_figures(shell: InteractiveShell, session: sessions.Session, sizes: list[int], repeat: int) -> None:
    """Per size: the magic with fresh inputs (sent), again with the same inputs (kept on the worker),
    the worker's own kernel time, and numpy here."""
    print(f"\nmatmul n x n float32 on {session.devices()[0]['adapter']}  (best of runs, ms)")
    columns = ("n", "e2e, sent", "e2e, kept", "kernel", "numpy", "sent/numpy", "kernel/numpy", "max err")
    widths = (6, 11, 11, 10, 9, 11, 13, 9)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    rng = np.random.default_rng(0)
    for n in sizes:
        runs = repeat if n <= 1024 else 1  # a 2048^3 matmul takes seconds on a CPU Vulkan driver

        def fresh(n: int = n) -> None:
            shell.user_ns["A"] = rng.standard_normal((n, n)).astype(np.float32)
            shell.user_ns["B"] = rng.standard_normal((n, n)).astype(np.float32)

        def magic() -> float:
            t0 = time.perf_counter()
            shell.run_cell("%webnet matmul A B -> C", store_history=False).raise_error()
            return time.perf_counter() - t0

        fresh()
        magic()  # compiles the kernel on the worker
        sent, kept, kernel_ms = [], [], []
        for _ in range(runs):
            fresh()  # new arrays: new content keys, so both are sent
            sent.append(magic())
            kernel_ms.append(session.devices()[0]["last_job_ms"])
            kept.append(magic())  # the same arrays: the worker kept them, only the job travels
        a, b = shell.user_ns["A"], shell.user_ns["B"]
        cpu = best_of(max(runs, 3), functools.partial(np.matmul, a, b))
        error = float(np.abs(shell.user_ns["C"] - a @ b).max())
        best_sent, best_kept, kernel = min(sent), min(kept), min(kernel_ms) / 1e3
        values = (n, *(f"{t * 1e3:.1f}" for t in (best_sent, best_kept, kernel)), f"{cpu * 1e3:.2f}")
        values += (f"{best_sent / cpu:.1f}", f"{kernel / cpu:.1f}", f"{error:.1e}")
        print(" ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True)))


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=True)


def plain_echo_server() -> tuple[int, Callable[[], None]]:
    """A bare tornado WebSocket echo server on loopback, in a thread; returns its port and a stopper."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        app = tornado.web.Application([(r"/", Echo)], websocket_max_message_size=2**31)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        box["port"] = sockets[0].getsockname()[1]
        box["server"] = server
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait()

    def stop() -> None:
        loop.call_soon_threadsafe(box["server"].stop)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return int(box["port"]), stop  # type: ignore[arg-type]


def plain_echo_seconds(port: int, payload: bytes, frame: int, repeat: int) -> float:
    """Seconds for ``payload`` to go out and back in frames of ``frame`` bytes (best of ``repeat``)."""

    async def measure() -> float:
        conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/", max_message_size=2**31)
        view = memoryview(payload)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for start in range(0, len(view), frame):
                await conn.write_message(bytes(view[start : start + frame]), binary=True)
            received = 0
            while received < len(view):
                received += len(await conn.read_message())  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
        conn.close()
        return min(times)

    return asyncio.run(measure())


def transport_figures(session: sessions.Session, megabytes: int, repeat: int) -> None:
    array = np.random.default_rng(1).standard_normal(megabytes * 2**20 // 4).astype(np.float32)
    moved = 2 * array.nbytes / 1e9  # out and back

    def through_broker() -> None:
        (back,) = session.broker.echo([array])
        assert back.nbytes == array.nbytes

    broker_s = best_of(repeat, through_broker)
    (back,) = session.broker.echo([array])
    assert np.array_equal(back, array)
    port, stop = plain_echo_server()
    try:
        chunked_s = plain_echo_seconds(port, array.tobytes(), DEFAULT_CHUNK, repeat)
        single_s = plain_echo_seconds(port, array.tobytes(), array.nbytes, repeat)
    finally:
        stop()
    print(f"\ntransport: {megabytes} MB to the worker and back on loopback (best of {repeat})")
    print(f"{'path':<52} {'ms':>8} {'GB/s':>7} {'vs plain':>9}")
    rows = [
        (f"broker -> worker -> broker, {DEFAULT_CHUNK >> 20} MiB frames", broker_s),
        (f"plain tornado WebSocket echo, {DEFAULT_CHUNK >> 20} MiB frames", chunked_s),
        (f"plain tornado WebSocket echo, one {megabytes} MB message", single_s),
    ]
    for label, seconds in rows:
        print(f"{label:<52} {seconds * 1e3:>8.1f} {moved / seconds:>7.2f} {seconds / chunked_s:>8.2f}x")


def wire_figures(shell: InteractiveShell, n: int, repeat: int) -> None:
    """The chain with fresh float32 inputs, sent as float32 and as float16 (best of ``repeat`` each)."""
    rng = np.random.default_rng(2)
    cell = "%webnet relu(X @ W1 + b1) @ W2 -> Y"

    def call(wire: str) -> float:
        shell.user_ns.update(
            X=rng.standard_normal((n, n)).astype(np.float32),
            W1=(rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32),
            b1=rng.standard_normal(n).astype(np.float32),
            W2=(rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32),
        )
        t0 = time.perf_counter()
        shell.run_cell(f"{cell} --wire {wire}", store_history=False).raise_error()
        return time.perf_counter() - t0

    for wire in ("f32", "f16"):
        call(wire)  # compiles the kernels
    times: dict[str, list[float]] = {"f32": [], "f16": []}
    for _ in range(repeat):  # alternated, so both see the same machine
        for wire in times:
            times[wire].append(call(wire))
    f32, f16 = min(times["f32"]), min(times["f16"])
    megabytes = (3 * n * n + n) * 4 / 1e6
    print(f"\n--wire f16 against float32: {cell[8:]}, n = {n}, {megabytes:.0f} MB of fresh inputs")
    print(f"(best of {repeat}, ms)")
    print(f"{'float32':>10} {'float16':>10} {'f16/f32':>8}")
    print(f"{f32 * 1e3:>10.1f} {f16 * 1e3:>10.1f} {f16 / f32:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["native", "browser"], default="native")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transport-mb", type=int, default=64)
    parser.add_argument("--chain", type=int, default=2048, help="n of the --wire f16 comparison (0: skip it)")
    args = parser.parse_args()

    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext webnet_magic\n%config WebnetMagics.timeout = 600", store_history=False)
    session = sessions.start()
    session.local_worker(args.worker)
    (device,) = session.wait_for_devices(1, 120)
    print(f"webnet_magic end-to-end benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    python, host = platform.python_version(), f"{platform.node()} {platform.machine()}"
    print(f"host: {host}, python {python}, numpy {np.__version__}")
    print(f"worker: {args.worker}, {device['name']} / {device['adapter']}")
    try:
        matmul_figures(shell, session, args.sizes, args.repeat)
        transport_figures(session, args.transport_mb, args.repeat)
        if args.chain:
            wire_figures(shell, args.chain, args.repeat)
    finally:
        sessions.stop()


if __name__ == "__main__":
    main()
