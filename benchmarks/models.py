"""Models end to end: ms per call, the device's own time and bytes per call, beside onnxruntime.

For each model and batch size, in one run:

- webnet: a call through the broker to one worker, after a first call that sent the weights;
  ``device`` is the worker's own kernel time for the call, ``sent`` the bytes that went out.
- onnxruntime on this CPU with 1, 2 and all threads (``--threads``).

    python benchmarks/models.py [--models mlp resnet50 decoder] [--batches 1 8 32] [--worker native]
    python benchmarks/models.py --quick        # toy sizes: what CI runs so this cannot rot

Figures vary with the machine; the ratios to references measured in the same run carry over.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.model_zoo: the torch models

import webnet_magic as wm
from webnet_magic.client.session import PrecisionWarning, Session
from webnet_magic.models.samples import light_model


def model_and_input(name: str, batch: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """The ONNX graph and a batch of input for each benchmarked model."""
    rng = np.random.default_rng(0)
    if name in ("mlp", "decoder"):
        import torch

        from tests import model_zoo

        if name == "mlp":
            x = rng.standard_normal((batch, 40)).astype(np.float32)
            return model_zoo.to_onnx(model_zoo.demo_mlp(), torch.from_numpy(x)), x
        ids = rng.integers(0, 97, (batch, 16)).astype(np.int64)
        return model_zoo.to_onnx(model_zoo.decoder(), torch.from_numpy(ids), {0: "batch", 1: "tokens"}), ids
    model = light_model(name, any_batch=True)
    shape = (batch, *(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]))
    return model, rng.standard_normal(shape).astype(np.float32)


def best_ms(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def webnet_call(session: Session, net: wm.models.Model, x: np.ndarray, repeat: int) -> tuple[float, float, int]:
    """(ms per call, the device's kernel ms, bytes sent) of the fastest of ``repeat`` calls after a first.

    Every call brings a new batch (as a stream of real inputs would), so its bytes travel each time;
    only the weights stay on the device.
    """
    net(x, session=session, timeout=1800)  # the weights travel (and kernels compile) here
    best, device, sent = float("inf"), 0.0, 0
    for k in range(repeat):
        fresh = x + np.asarray(k + 1, x.dtype) if x.dtype.kind == "f" else (x + k + 1) % 97
        before = session.broker.fleet()["sent"]
        start = time.perf_counter()
        job = net.submit(fresh, session=session)
        session.wait(job, 1800)
        elapsed = (time.perf_counter() - start) * 1e3
        if elapsed < best:
            best, sent = elapsed, session.broker.fleet()["sent"] - before
            device = sum(t.progress.timings.get("kernel", 0.0) for t in job.tasks)
    return best, device, sent


def onnxruntime_ms(model: onnx.ModelProto, x: np.ndarray, threads: int, repeat: int) -> tuple[float, np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    run = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {run.get_inputs()[0].name: x}
    out = run.run(None, feed)[0]
    return best_ms(repeat, lambda: run.run(None, feed)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet50", "decoder"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--worker", default="native", choices=("native", "browser"))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, os.cpu_count() or 1])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="toy sizes, one run each (CI)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.repeat, args.threads = ["mlp", "decoder", "squeezenet"], [1, 2], 1, [1]
    warnings.simplefilter("ignore", PrecisionWarning)
    threads = sorted(set(args.threads))
    session = wm.start(tunnel="off")
    try:
        session.local_worker(args.worker)
        (device,) = session.wait_for_devices(1, 180)
        print(f"webnet_magic models on {device['adapter']}; "
              f"onnxruntime {onnxruntime.__version__} on {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores")  # fmt: skip
        ort_columns = [f"ort {t}t" for t in threads]
        header = (
            "model",
            "batch",
            "webnet ms",
            "device ms",
            "sent/call",
            *ort_columns,
            f"vs ort {threads[-1]}t",
            "max err",
        )
        print(" ".join(f"{h:>12}" for h in header))
        for name in args.models:
            for batch in args.batches:
                model, x = model_and_input(name, batch)
                net = wm.load_model(model, name=name)
                ms, device_ms, sent = webnet_call(session, net, x, args.repeat)
                ort = [onnxruntime_ms(model, x, t, args.repeat) for t in threads]
                error = float(np.abs(net(x, session=session, timeout=1800) - ort[0][1]).max())
                row = (name, batch, f"{ms:.1f}", f"{device_ms:.1f}", f"{sent / 1e3:.0f} KB",
                       *(f"{m:.1f}" for m, _ in ort), f"{ms / ort[-1][0]:.2f}x", f"{error:.1e}")  # fmt: skip
                print(" ".join(f"{c!s:>12}" for c in row), flush=True)
    finally:
        wm.stop()


if __name__ == "__main__":
    main()
