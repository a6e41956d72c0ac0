"""Conv throughput on the native worker's GPU beside onnxruntime and numpy on this host's CPUs, in one run.

The layers are ResNet-50's 53 convs (v1.5: the stride on the 3x3), as 22 distinct shapes
with how often each occurs, plus a depthwise and a grouped (ResNeXt) layer that ResNet-50
lacks.  For each layer: the WGSL kernel the conv op plans, through the native worker's own
executor (the path a job takes, minus the network), checked element by element against
numpy's float64 answer within the op's tolerance and timed per dispatch from many
dispatches in one submission; onnxruntime (CPU, all cores unless --threads) on a
one-node Conv model; numpy as im2col + one BLAS matmul in float32.  The last line weighs
each layer by its count: all of ResNet-50's convs at this batch.

    python benchmarks/conv.py [--batch 32] [--tilings]     # on a GPU (see DESIGN.md for the H200)
    python benchmarks/conv.py --quick                      # toy sizes, seconds on lavapipe (CI)

``--tilings`` also times every tiling of the implicit-GEMM kernel (each split along K as
``ops.conv.schedule`` would split it) and the direct kernel on each layer, to check the
choice the conv op makes.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from webnet_magic import ops
from webnet_magic.ops import conv
from webnet_magic.ops.compiler import Builder, ContentKeys, Value
from webnet_magic.worker.gpu import WgpuExecutor


@dataclass(frozen=True)
class Layer:
    name: str
    channels: int
    filters: int
    kernel: int
    stride: int
    size: int  # input height and width
    count: int  # how often ResNet-50 has it (0: not in ResNet-50)
    groups: int = 1

    def scaled(self, by: int) -> Layer:
        """Channels (but not the image's 3) and spatial size divided by ``by``, for a quick run."""
        c = self.channels if self.channels == 3 else max(self.groups, self.channels // by)
        groups = min(self.groups, c)
        return Layer(self.name, c, max(groups, self.filters // by), self.kernel, self.stride,
                     max(self.kernel, self.size // by), self.count, groups)  # fmt: skip

    def attrs(self) -> dict:
        return {"strides": self.stride, "pads": self.kernel // 2, "groups": self.groups}


LAYERS = [
    Layer("stem 7x7/2", 3, 64, 7, 2, 224, 1),
    Layer("1.1x1 64>64", 64, 64, 1, 1, 56, 1),
    Layer("1.3x3 64", 64, 64, 3, 1, 56, 3),
    Layer("1.1x1 64>256", 64, 256, 1, 1, 56, 4),
    Layer("1.1x1 256>64", 256, 64, 1, 1, 56, 2),
    Layer("2.1x1 256>128", 256, 128, 1, 1, 56, 1),
    Layer("2.3x3/2 128", 128, 128, 3, 2, 56, 1),
    Layer("2.1x1 128>512", 128, 512, 1, 1, 28, 4),
    Layer("2.1x1/2 256>512", 256, 512, 1, 2, 56, 1),
    Layer("2.1x1 512>128", 512, 128, 1, 1, 28, 3),
    Layer("2.3x3 128", 128, 128, 3, 1, 28, 3),
    Layer("3.1x1 512>256", 512, 256, 1, 1, 28, 1),
    Layer("3.3x3/2 256", 256, 256, 3, 2, 28, 1),
    Layer("3.1x1 256>1024", 256, 1024, 1, 1, 14, 6),
    Layer("3.1x1/2 512>1024", 512, 1024, 1, 2, 28, 1),
    Layer("3.1x1 1024>256", 1024, 256, 1, 1, 14, 5),
    Layer("3.3x3 256", 256, 256, 3, 1, 14, 5),
    Layer("4.1x1 1024>512", 1024, 512, 1, 1, 14, 1),
    Layer("4.3x3/2 512", 512, 512, 3, 2, 14, 1),
    Layer("4.1x1 512>2048", 512, 2048, 1, 1, 7, 3),
    Layer("4.1x1/2 1024>2048", 1024, 2048, 1, 2, 14, 1),
    Layer("4.1x1 2048>512", 2048, 512, 1, 1, 7, 2),
    Layer("4.3x3 512", 512, 512, 3, 1, 7, 2),
    Layer("depthwise 3x3 256", 256, 256, 3, 1, 28, 0, groups=256),
    Layer("resnext 3x3 g32", 256, 256, 3, 1, 28, 0, groups=32),
]


def best_of(run: Callable[[], object], budget_s: float) -> float:
    """Median seconds of ``run`` over about ``budget_s`` (at least 3 runs, after one warm-up)."""
    run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_program(executor: WgpuExecutor, program, budget_s: float) -> tuple[float, np.ndarray]:
    """Seconds per run of ``program``'s dispatches (many in one submission) and its output."""
    prepared = executor.prepare(program)
    try:
        executor.dispatch(prepared)  # compile, warm up
        executor.dispatch(prepared)
        single = prepared.timings["kernel"] / 1e3
        repeat = max(1, min(200, int(budget_s / max(single, 1e-6))))
        executor.dispatch(prepared, repeat=repeat)  # a GPU idle since the last layer needs time to raise its clock
        times = []
        for _ in range(3):
            executor.dispatch(prepared, repeat=repeat)
            times.append(prepared.timings["kernel"] / 1e3)
        (out,) = executor.read(prepared)
    finally:
        executor.release(prepared)
    return statistics.median(times), out


def forced(x: np.ndarray, w: np.ndarray, attrs: dict, tiling: conv.Tiling | None):
    """The conv program with its tiling chosen by the caller (None: the direct kernel)."""
    node = ops.call("conv", x, w, **attrs)
    builder = Builder(ContentKeys())
    args = [Value(builder.input(a), a.shape, "float32") for a in (x, w)]
    out = builder.scratch(node.shape, "float32")
    geometry = conv.geometry("conv", x.shape, w.shape, node.options)
    conv.emit_conv(builder, args, out, geometry, conv.schedule(geometry, tiling))
    builder.output(out)
    return builder.program()


def describe(schedule: conv.Schedule) -> str:
    """A schedule in a few characters: filters x pixels per workgroup, /splits along K; or direct."""
    if schedule.tiling is None:
        return "direct"
    tm, tn = schedule.tiling.tile
    return f"{tm}x{tn}" + (f"/{schedule.splits}" if schedule.splits > 1 else "")


def numpy_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """im2col (one copy of every window) and one float32 matmul per group, through numpy's BLAS."""
    n, k = x.shape[0], w.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    oh, ow = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, groups, -1)
    filters = w.reshape(groups, w.shape[0] // groups, -1)
    y = np.stack([cols[:, g] @ filters[g].T for g in range(groups)], axis=1)
    return y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)


def onnxruntime_session(x: np.ndarray, w: np.ndarray, layer: Layer, threads: int | None):
    """A one-node Conv model on onnxruntime's CPU provider, or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    pad = layer.kernel // 2
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[layer.stride] * 2, pads=[pad] * 4, group=layer.groups)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def gflops(flops: float, seconds: float | None) -> str:
    return f"{flops / seconds / 1e9:9.0f}" if seconds else f"{'-':>9}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="batch 1, channels and sizes / 4: seconds on lavapipe")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime's threads (default: all cores)")
    parser.add_argument("--budget", type=float, help="seconds of timing per engine and layer (0.3; --quick 0.02)")
    parser.add_argument("--tilings", action="store_true", help="also time every conv kernel on each layer")
    parser.add_argument("--no-numpy", action="store_true", help="skip numpy (slow at large batches)")
    args = parser.parse_args()
    batch, layers = (1, [layer.scaled(4) for layer in LAYERS]) if args.quick else (args.batch, LAYERS)
    budget = args.budget or (0.02 if args.quick else 0.3)

    executor = WgpuExecutor()
    info = executor.describe()["adapter"]
    print(
        f"adapter: {info['device']} ({info['backend']}, {info['description']}); {os.cpu_count()} CPU cores; "
        f"onnxruntime threads: {args.threads or 'all'}; batch {batch}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    kernels = [*conv.TILINGS, None] if args.tilings else []
    names = [f"{t.tile[0]}x{t.tile[1]}" if t else "direct" for t in kernels]
    print(f"{'layer':<20} {'x':>20} {'GFLOP':>7} {'kernel':>8} {'WGSL':>9} {'ORT':>9} {'numpy':>9} {'err/tol':>8}"
          + "".join(f" {n:>9}" for n in names))  # fmt: skip
    totals = {"WGSL": 0.0, "ORT": 0.0, "numpy": 0.0}
    rng = np.random.default_rng(0)
    for layer in layers:
        x = rng.standard_normal((batch, layer.channels, layer.size, layer.size)).astype(np.float32)
        fan_in = layer.channels // layer.groups * layer.kernel**2
        w = (rng.standard_normal((layer.filters, layer.channels // layer.groups, layer.kernel, layer.kernel))
             * math.sqrt(2 / fan_in)).astype(np.float32)  # fmt: skip
        plan = ops.plan("conv", x, w, **layer.attrs())
        node = plan.nodes[0]
        flops = plan.program.work
        chosen = describe(conv.schedule(conv.geometry("conv", x.shape, w.shape, node.options)))
        seconds, out = time_program(executor, plan.program, budget)
        ratio = ops.error_ratio(node, out.reshape(node.shape))
        session = onnxruntime_session(x, w, layer, args.threads)
        ort_s = best_of(partial(session.run, None, {"x": x}), budget) if session else None
        numpy_run = partial(numpy_conv, x, w, layer.stride, layer.kernel // 2, layer.groups)
        np_s = None if args.no_numpy else best_of(numpy_run, budget)
        for engine, value in (("WGSL", seconds), ("ORT", ort_s), ("numpy", np_s)):
            totals[engine] += layer.count * (value or math.nan)
        row = (f"{layer.name:<20} {x.shape!s:>20} {flops / 1e9:7.3f} {chosen:>8} {gflops(flops, seconds)} "
               f"{gflops(flops, ort_s)} {gflops(flops, np_s)} {ratio:8.3f}")  # fmt: skip
        for tiling in kernels:
            forced_s, forced_out = time_program(executor, forced(x, w, layer.attrs(), tiling), budget)
            assert ops.error_ratio(node, forced_out.reshape(node.shape)) <= 1
            row += f" {gflops(flops, forced_s)}"
        print(row, flush=True)
    print(f"ResNet-50's 53 convs at batch {batch}: "
          + ", ".join(f"{engine} {1e3 * s:.1f} ms" for engine, s in totals.items()))  # fmt: skip
    print(
        "WGSL/ORT/numpy columns in GFLOP/s; kernel: the conv op's choice (filters x pixels per workgroup, /splits "
        "along K; or direct); err/tol: the largest |error| / the op's float32 bound (<= 1 passes)"
    )


if __name__ == "__main__":
    main()
