"""A lone job's kernel time against the same kernel in a tight loop, with and without warming, in one run.

A GPU idles at a low clock and raises it only after a while of back-to-back work, so a
lone job can run its kernel several times slower than a benchmark loop does.  The native
worker keeps the GPU busy while a job's data arrives (``webnet_magic/worker/warm.py``).
This runs an n x n matmul as a lone job (after ``--idle`` seconds of nothing, so the clock
has dropped) on a worker started with ``--no-warm`` and on one with warming, in three
situations: fresh inputs over loopback, fresh inputs over a Wi-Fi-like link (a relay of
40 MB/s and 20 ms each way), and inputs the worker already holds (nothing arrives: warming
has no time to act).  The reference is the same kernel dispatched back to back in this
process.  Where ``nvidia-smi`` exists, the SM clock it reports during each job is shown.

    python benchmarks/gpu_clock.py [--n 4096] [--idle 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.testing.linkrelay import Link, LinkRelay
from webnet_magic.worker.gpu import WgpuExecutor
from webnet_magic.worker.native import TOKEN_ENV, split_token


class Clocks:
    """The SM clock as NVML reports it (``nvidia-smi -lms``), sampled in the background."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        tool = shutil.which("nvidia-smi")
        self._process = None
        if tool:
            command = [tool, "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-lms", "50"]
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line)))

    def peak(self, start: float, end: float) -> str:
        """The highest clock seen between ``start`` and ``end`` (and the sample after: NVML lags)."""
        seen = [mhz for t, mhz in self.samples if start <= t <= end + 0.3]
        return f"{max(seen)}" if seen else "-"

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()


def tight_loop_ms(a: np.ndarray, b: np.ndarray, runs: int) -> float:
    """The kernel's median time per dispatch, dispatched back to back (the clock up)."""
    executor = WgpuExecutor()
    prepared = executor.prepare(ops.plan("matmul", a, b).program)
    try:
        times = []
        for _ in range(runs):
            executor.dispatch(prepared)
            times.append(prepared.timings["kernel"])
    finally:
        executor.release(prepared)
    return statistics.median(times[runs // 2 :])


def start_worker(url: str, *extra: str) -> subprocess.Popen[bytes]:
    page, token = split_token(url)
    return subprocess.Popen(
        [sys.executable, "-m", "webnet_magic.worker", page, *extra],
        env={**os.environ, TOKEN_ENV: token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of nothing before each lone job")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    n, rng = args.n, np.random.default_rng(0)
    fresh = lambda: [rng.standard_normal((n, n)).astype(np.float32) for _ in range(2)]  # noqa: E731
    kept = fresh()
    clocks = Clocks()
    tight = tight_loop_ms(*kept, runs=40)
    broker = BrokerThread(calibrate=False).start()
    relay = LinkRelay(broker.port, Link.symmetric("Wi-Fi-like", 40e6, 0.02)).start()
    print(f"lone {n}x{n} float32 matmul jobs on the native worker, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"tight loop (same kernel back to back, this process): {tight:.2f} ms a dispatch")
    print(f"{'situation':<34} {'warming':>8} {'kernel in job':>14} {'tight/job':>10} {'warm disp.':>11} {'SM MHz':>7}")
    situations = [("loopback, fresh inputs", broker.url, True), ("Wi-Fi-like link, fresh inputs", None, True),
                  ("loopback, inputs kept on device", broker.url, False)]  # fmt: skip
    try:
        for warm in (False, True):
            for label, url, new in situations:
                process = start_worker(url or relay.url(broker.url), *(() if warm else ("--no-warm",)))
                while not broker.devices():
                    time.sleep(0.05)
                broker.submit(ops.plan("matmul", *kept).program).future.result(600)  # compiles; keeps `kept`
                for _ in range(args.repeat):
                    time.sleep(args.idle)
                    plan = ops.plan("matmul", *(fresh() if new else kept))
                    started = time.perf_counter()
                    handle = broker.submit(plan.program)
                    handle.future.result(600)
                    timings = handle.progress.timings
                    ratio = tight / timings["kernel"]
                    mhz = clocks.peak(started, time.perf_counter())
                    print(f"{label:<34} {'on' if warm else 'off':>8} {timings['kernel']:>11.2f} ms {ratio:>10.2f} "
                          f"{timings.get('warmed', 0):>11.0f} {mhz:>7}", flush=True)  # fmt: skip
                process.kill()
                process.wait()
                while broker.devices():
                    time.sleep(0.05)
    finally:
        relay.stop()
        broker.stop()
        clocks.stop()
    print("tight/job: the tight loop's time over the job's (1.00: the lone job ran as fast as the loop)")


if __name__ == "__main__":
    main()
