"""``python -m webnet_magic.demo``: the whole path on this machine, with figures.

It does what a notebook user does, through the same magics: ``%webnet start``
(a broker in this process), a local worker joins (headless Chromium's WebGPU
where Chromium is installed, else the native wgpu-py worker), then
``%webnet matmul A B -> C`` runs on it and the result is checked against numpy.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from .client import session as sessions
from .ops import call, error_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webnet_magic.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["auto", "browser", "native"], default="auto")
    parser.add_argument("--shape", type=int, nargs=3, default=(1024, 512, 256), metavar=("M", "K", "N"))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the first (at least 1)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    m, k, n = args.shape

    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    warnings.simplefilter("ignore", sessions.PrecisionWarning)  # the demo's inputs are float32 anyway

    def cell(code: str) -> None:
        result = shell.run_cell(code, store_history=False)
        if not result.success:
            raise SystemExit(f"demo failed at: {code}")

    print("webnet_magic demo: a notebook's matmul on a local WebGPU worker\n")
    cell("%load_ext webnet_magic")
    cell("%webnet start")
    session = sessions.current()
    assert session is not None
    started = time.perf_counter()
    worker = session.local_worker(args.worker)
    (device,) = session.wait_for_devices(1, timeout=90)[:1]
    joined = time.perf_counter() - started

    rng = np.random.default_rng(0)
    shell.user_ns["A"] = A = rng.standard_normal((m, k)).astype(np.float32)
    shell.user_ns["B"] = B = rng.standard_normal((k, n)).astype(np.float32)
    cell("%webnet matmul A B -> C")  # the first run compiles the kernel on the device
    times, kernel_ms = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        cell("%webnet matmul A B -> C")
        times.append(time.perf_counter() - t0)
        kernel_ms.append(session.devices()[0]["last_job_ms"])
    C = shell.user_ns["C"]
    numpy_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.matmul(A, B)
        numpy_times.append(time.perf_counter() - t0)
    numpy_s = min(numpy_times)
    error = np.abs(C - A.astype(np.float64) @ B)
    within = error_ratio(call("matmul", A, B), C) <= 1
    device = session.devices()[0]
    flops = 2 * m * k * n
    best = min(times)
    kernel = min(kernel_ms)

    verdict = "ok" if within else "FAIL"
    rows = {
        "worker": f"{worker.kind}: {device['name']} / {device['adapter']} (joined in {joined:.1f} s)",
        "op": f"%webnet matmul A B -> C   A {A.shape} @ B {B.shape} -> C {C.shape} {C.dtype}",
        "accuracy": f"max |C - A@B| = {error.max():.2e}, every element within its float32 bound: {verdict}",
        "time": f"end to end {best * 1e3:.1f} ms (best of {len(times)}; A and B stay cached on the worker), "
        f"GPU kernel {kernel:.1f} ms (best), numpy here {numpy_s * 1e3:.1f} ms",
        "rate": f"{flops / best / 1e9:.2f} GFLOP/s end to end, {flops / kernel / 1e6:.2f} GFLOP/s in the kernel",
    }
    print()
    for label, text in rows.items():
        print(f"  {label:<9} {text}")
    cell("%webnet stop")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
