"""A fleet of unequal devices on one matmul: the makespan against the ideal, measured in one run.

k native workers join one broker, each throttled to a multiple of its real job time
(``--slowdown 1 2 4``: stand-ins for a laptop, a fast phone and a slow one).  For one
n x n float32 matmul it measures

- each device alone on the whole job (T_i), which gives the ideal fleet makespan,
  total work / sum of speeds = 1 / sum(1 / T_i);
- the fleet on the same job, sharded in proportion to the speeds the broker measured
  (``shard="auto"``);
- numpy on this CPU, as the usual reference.

    python benchmarks/fleet.py [--n 1024] [--slowdowns 1 2 4] [--repeat 3] [--threads T] [--shards 6 12]

The target is a makespan within 1.2x of the ideal.  The throttled workers sleep rather
than compute, but the real work of all k still shares this machine's GPU (or CPU, on
lavapipe), which the ideal, made of solo times, does not account for: real phones do not
share a processor.  On lavapipe ``--threads`` caps each worker's threads
(``LP_NUM_THREADS``), so that k workers fit the cores rather than fight over them.  ``--shards N ...`` also times
the job cut into N shards (more than devices: a device that finishes early takes another).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from webnet_magic.client.session import Session
from webnet_magic.errors import NoDeviceError
from webnet_magic.ops import call
from webnet_magic.worker.native import TOKEN_ENV, split_token


def median_time(repeat: int, fn: Callable[[], object]) -> float:
    """Median of ``repeat`` timed runs after one untimed warm-up (kernels compiled, inputs cached)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def start_workers(session: Session, slowdowns: list[float], threads: int | None) -> list[subprocess.Popen[bytes]]:
    """Native workers joined one at a time, so device ids follow the slowdowns' order."""
    page, token = split_token(session.url)
    env = {**os.environ, TOKEN_ENV: token, **({"LP_NUM_THREADS": str(threads)} if threads else {})}
    workers = []
    for i, slowdown in enumerate(slowdowns, 1):
        name = f"worker {i} ({slowdown:g}x slower)"
        command = [sys.executable, "-m", "webnet_magic.worker", page, "--name", name, "--slowdown", str(slowdown)]
        log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker); not a pipe nobody reads
        workers.append(subprocess.Popen(command, env=env, stderr=log))
        try:
            session.wait_for_devices(i, timeout=120)  # joined and calibrated
        except NoDeviceError:
            for worker in workers:
                worker.kill()
            log.seek(0)
            raise NoDeviceError(f"{name} did not join: {log.read().decode()[-2000:]}") from None
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="lavapipe threads per worker (LP_NUM_THREADS)")
    parser.add_argument("--shards", type=int, nargs="*", default=[], help="also time the fleet with N shards")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((args.n, args.n), dtype=np.float32) for _ in range(2))
    node = call("matmul", a, b, names=("A", "B"))
    expected = a.astype(np.float64) @ b.astype(np.float64)
    session = Session()
    workers = start_workers(session, args.slowdowns, args.threads)
    try:
        devices = session.devices()
        threads = f", {args.threads} lavapipe thread(s) each" if args.threads else ""
        print(f"fleet matmul {args.n}^3 float32 on {platform.node()} ({os.cpu_count()} cores): "
              f"{len(devices)} native workers{threads}")  # fmt: skip
        print(f"{'device':<6} {'slowdown':>8} {'calibrated':>12} {'alone (s)':>10}  adapter")
        alone = []
        for device, slowdown in zip(devices, args.slowdowns, strict=True):
            seconds = median_time(
                args.repeat, lambda d=device["id"]: session.run_graph([node], devices=d, shard="off", timeout=600)
            )
            alone.append(seconds)
            calibrated = f"{device['gflops']:.1f} GF/s"
            print(f"{device['id']:<6} {slowdown:>7g}x {calibrated:>12} {seconds:>10.3f}  {device['adapter']}")
        ideal = 1 / sum(1 / t for t in alone)
        speeds = {d["id"]: d["gflops"] for d in session.devices()}
        print(f"speeds now (refined by the solo runs): {', '.join(f'{k} {v:.1f}' for k, v in speeds.items())} GF/s")

        def fleet(shard: str | int) -> np.ndarray:
            return session.run_graph([node], shard=shard, timeout=600)[0]

        got = fleet("auto")
        error = float(np.abs(got - expected).max())
        by_speed = median_time(args.repeat, lambda: fleet("auto"))
        numpy_s = median_time(args.repeat, lambda: a @ b)
        print(f"\n{'':<28} {'seconds':>8} {'/ ideal':>8}")
        print(f"{'ideal (1 / sum 1/T_i)':<28} {ideal:>8.3f} {1:>8.2f}")
        print(f"{'fastest device alone':<28} {min(alone):>8.3f} {min(alone) / ideal:>8.2f}")
        print(f"{'fleet, shards by speed':<28} {by_speed:>8.3f} {by_speed / ideal:>8.2f}")
        for count in args.shards:
            seconds = median_time(args.repeat, lambda count=count: fleet(count))
            print(f"{f'fleet, {count} shards':<28} {seconds:>8.3f} {seconds / ideal:>8.2f}")
        print(f"{'numpy on this CPU':<28} {numpy_s:>8.3f} {numpy_s / ideal:>8.2f}")
        print(f"max |error| of the fleet's result vs float64: {error:.2e}")
        print(f"target: fleet <= 1.2 x ideal -> {'met' if by_speed <= 1.2 * ideal else 'NOT met'}")
    finally:
        session.stop()
        for worker in workers:
            worker.wait(10)


if __name__ == "__main__":
    main()
