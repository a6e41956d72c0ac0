"""Jobs and streams over links like a phone's, each against the bound its link and GPU set.

A native worker reaches the broker through :class:`~webnet_magic.testing.linkrelay.LinkRelay`
(a rate and a one-way delay each way), as a phone on 4G through a tunnel (5 MB/s, 60 ms),
on Wi-Fi (40 MB/s, 20 ms), or straight over loopback.  The work is issue 9's:
``relu(X @ W)`` with W kept on the device (``put``) and a fresh X each job.  For each link:

- **one job**, end to end (best of ``--repeat``), against its bound: X's bytes down and
  the result's up at the link's rate, one round trip, and the worker's own GPU time;
- **a stream** of ``--items`` jobs through ``session.map``, against its bound: the busier
  of the link's two directions (bytes the relay carried / rate) or the GPU (items x one
  job's GPU time), whichever is longer, plus one lone job (filling and draining the pipe);
- the same stream on a worker that holds one job at a time (``--depth 1``): what
  pipelining saves.

On loopback the rate is a plain tornado WebSocket echo's, measured in the same run, and the
round trip is taken as nothing.  Goal: at most 1.1x each bound.

    python benchmarks/link.py [--quick] [--n 1024] [--items 16] [--links 4g wifi loopback]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from end_to_end import plain_echo_seconds, plain_echo_server

from webnet_magic.client.session import Session
from webnet_magic.errors import NoDeviceError
from webnet_magic.protocol import DEFAULT_CHUNK
from webnet_magic.testing.linkrelay import PHONE_4G, WIFI, Link, LinkRelay
from webnet_magic.worker.native import TOKEN_ENV, split_token

LINKS = {"4g": PHONE_4G, "wifi": WIFI, "loopback": None}
EXPRESSION = "relu(X @ W)"


@dataclass
class Figures:
    """One link's measurements and bounds, in seconds."""

    one: float
    one_bound: float
    stream: float
    stream_bound: float
    serial: float | None
    items: int
    item_bytes: int


def start_worker(url: str, *extra: str) -> subprocess.Popen[bytes]:
    page, token = split_token(url)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker); read if it cannot join
    command = [sys.executable, "-m", "webnet_magic.worker", page, *extra]
    process = subprocess.Popen(command, env={**os.environ, TOKEN_ENV: token}, stderr=log)
    process.log = log  # type: ignore[attr-defined]
    return process


def joined(session: Session, process: subprocess.Popen[bytes]) -> None:
    try:
        session.wait_for_devices(1, timeout=180)
    except NoDeviceError:
        process.kill()
        process.log.seek(0)  # type: ignore[attr-defined]
        raise NoDeviceError(f"the worker did not join: {process.log.read().decode()[-2000:]}") from None  # type: ignore[attr-defined]


def leave(session: Session, process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(10)
    deadline = time.monotonic() + 30
    while session.devices() and time.monotonic() < deadline:
        time.sleep(0.05)


class Meter:
    """Bytes each way over the link: the relay's counts, or the broker's own on loopback."""

    def __init__(self, session: Session, relay: LinkRelay | None) -> None:
        self.session, self.relay = session, relay

    def read(self) -> tuple[int, int]:
        if self.relay is not None:
            return self.relay.moved["down"], self.relay.moved["up"]
        fleet = self.session.broker.fleet()
        return fleet["sent"], fleet["received"]


def measure(link: Link | None, n: int, items: int, repeat: int, serial: bool, loopback_rate: float) -> Figures:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    xs = [rng.standard_normal((n, n), dtype=np.float32) for _ in range(items + repeat + 1)]
    session = Session(calibrate=True)
    relay = None if link is None else LinkRelay(session.broker.port, link).start()
    url = session.local_url if relay is None else relay.url(session.local_url)
    rate = loopback_rate if link is None else link.down.rate
    round_trip = 0.0 if link is None else link.round_trip
    meter = Meter(session, relay)
    try:
        worker = start_worker(url)
        joined(session, worker)
        session.put("W", w)

        def lone(x: np.ndarray) -> tuple[float, float, float]:
            """One job end to end, its bound (bytes both ways at the rate, a round trip, its GPU time) and
            that GPU time."""
            before = meter.read()
            started = time.perf_counter()
            job = session.submit(EXPRESSION, {"X": x, "W": w}, shard="off")
            job.result(600)
            took = time.perf_counter() - started
            down, up = (b - a for a, b in zip(before, meter.read(), strict=True))
            gpu = sum(job.tasks[0].progress.timings.get(k, 0.0) for k in ("upload", "kernel", "download")) / 1e3
            return took, (down + up) / rate + round_trip + gpu, gpu

        lone(xs[-1])  # compiles the kernels
        one, one_bound, gpu = min(lone(x) for x in xs[items : items + repeat])

        def stream() -> tuple[float, float]:
            before = meter.read()
            started = time.perf_counter()
            results = list(session.map(EXPRESSION, xs[:items], namespace={"W": w}, timeout=600))
            took = time.perf_counter() - started
            assert len(results) == items
            down, up = (b - a for a, b in zip(before, meter.read(), strict=True))
            return took, max(down / rate, up / rate, items * gpu) + one_bound

        streamed, stream_bound = stream()
        one_at_a_time = None
        if serial:
            leave(session, worker)
            worker = start_worker(url, "--depth", "1")
            joined(session, worker)
            one_at_a_time, _ = stream()
        leave(session, worker)
    finally:
        session.stop()
        if relay is not None:
            relay.stop()
    return Figures(one, one_bound, streamed, stream_bound, one_at_a_time, items, xs[0].nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", nargs="+", choices=list(LINKS), default=list(LINKS))
    parser.add_argument("--n", type=int, default=1024, help="X and W are n x n float32 (1024: 4 MB each)")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-serial", action="store_true", help="skip the one-job-at-a-time stream")
    parser.add_argument("--quick", action="store_true", help="a toy size for CI: n=256, 6 items, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.n, args.items, args.repeat = 256, 6, 1

    port, stop = plain_echo_server()
    try:
        payload = np.zeros(16 << 20, np.uint8).tobytes()
        loopback_rate = 2 * len(payload) / plain_echo_seconds(port, payload, DEFAULT_CHUNK, 3)
    finally:
        stop()
    print(f"webnet_magic link benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()} ({os.cpu_count()} cores)")
    print(f"work: {EXPRESSION}, X and W {args.n}x{args.n} float32 ({args.n * args.n * 4 / 1e6:.1f} MB each), "
          f"W kept on the device; a stream of {args.items} items")  # fmt: skip
    print(f"loopback: a plain tornado WebSocket echo moves {loopback_rate / 1e9:.2f} GB/s (its bound's rate)\n")
    header = ("link", "one job ms", "bound", "ratio", "stream s", "bound", "ratio", "items/s", "1-at-a-time s")
    widths = (44, 10, 8, 6, 9, 8, 6, 8, 14)
    print(" ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for name in args.links:
        link = LINKS[name]
        f = measure(link, args.n, args.items, args.repeat, not args.no_serial, loopback_rate)
        serial = "-" if f.serial is None else f"{f.serial:.2f} ({f.serial / f.stream_bound:.2f}x)"
        row = (
            str(link) if link else "loopback (no relay)",
            f"{f.one * 1e3:.0f}",
            f"{f.one_bound * 1e3:.0f}",
            f"{f.one / f.one_bound:.2f}",
            f"{f.stream:.2f}",
            f"{f.stream_bound:.2f}",
            f"{f.stream / f.stream_bound:.2f}",
            f"{f.items / f.stream:.1f}",
            serial,
        )
        print(" ".join(f"{v:>{w}}" if i else f"{v:<{w}}" for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    print("\nbound: bytes over the link at its rate, the round trip(s) and the worker's GPU time (see the docstring);")
    print("goal: ratio <= 1.1")


if __name__ == "__main__":
    main()
