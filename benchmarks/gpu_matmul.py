"""The WGSL matmul kernels on a real GPU (wgpu-native on Vulkan) beside cuBLAS FP32, in one run.

For each size: cuBLAS through PyTorch with TF32 off (true FP32), then each WGSL kernel
through the native worker's own executor (the same code path a job takes, minus the
network), each checked element by element against numpy's float64 answer within the
op's stated tolerance.  Kernel time is per dispatch, from many dispatches in one
submission (so the final read-back that waits for the GPU is spread thin).

    python benchmarks/gpu_matmul.py [--sizes 1024 2048 4096]

Runs without PyTorch too (no cuBLAS column), e.g. on lavapipe for a quick check.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from webnet_magic import ops
from webnet_magic.ops import matmul
from webnet_magic.ops.compiler import Builder, ContentKeys, Value
from webnet_magic.worker.gpu import WgpuExecutor


#: The two kernels ops.matmul chooses between, and the fast one with half as deep a K step.
def _depth(k: int) -> matmul.MatmulKernel:
    return matmul.MatmulKernel.of(matmul._vec4_source().replace("const TK: u32 = 16u;", f"const TK: u32 = {k}u;"), 128)


KERNELS = {
    "scalar 64x64": matmul.GENERAL,
    "vec4 128 k16": matmul.FAST,
    "vec4 128 k8": _depth(8),
    "vec4 128 k32": _depth(32),  # 32 KiB of workgroup memory: above WebGPU's default 16 KiB
}


def program(a: np.ndarray, b: np.ndarray, kernel: matmul.MatmulKernel):
    """The matmul program ops.plan would build, with the kernel choice forced."""
    builder = Builder(ContentKeys())
    va = Value(builder.input(a), a.shape, "float32")
    vb = Value(builder.input(b), b.shape, "float32")
    node = ops.call("matmul", a, b)
    out = builder.scratch(node.shape, "float32")
    matmul.emit_with(builder, va, vb, out, kernel)
    builder.output(out)
    return builder.program(), node


def time_wgsl(executor: WgpuExecutor, a: np.ndarray, b: np.ndarray, kernel: matmul.MatmulKernel, budget_s: float):
    prog, node = program(a, b, kernel)
    prepared = executor.prepare(prog)
    try:
        executor.dispatch(prepared)  # warm up (and compile)
        executor.dispatch(prepared)
        single = prepared.timings["kernel"] / 1e3
        repeat = max(1, min(200, int(budget_s / max(single, 1e-6))))
        times = []
        for _ in range(3):
            executor.dispatch(prepared, repeat=repeat)
            times.append(prepared.timings["kernel"] / 1e3)
        (out,) = executor.read(prepared)
    finally:
        executor.release(prepared)
    return statistics.median(times), ops.error_ratio(node, out.reshape(node.shape))


def time_cublas(a: np.ndarray, b: np.ndarray) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    for _ in range(3):
        torch.matmul(ta, tb)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        torch.matmul(ta, tb)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of GPU time per timed submission")
    args = parser.parse_args()
    executor = WgpuExecutor()
    info = executor.describe()["adapter"]
    print(f"adapter: {info['device']} ({info['backend']}, {info['description']}), {time.strftime('%Y-%m-%d %H:%M')}")
    header = f"{'n':>6} {'cuBLAS FP32':>12}" + "".join(
        f" {name:>14} {'vs cuBLAS':>9} {'err/tol':>8}" for name in KERNELS
    )
    print(header)
    rng = np.random.default_rng(0)
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        flops = 2 * n**3
        cublas = time_cublas(a, b)
        row = f"{n:>6} {flops / cublas / 1e9 if cublas else float('nan'):>9.0f} GF/s"
        for kernel in KERNELS.values():
            if kernel is not matmul.GENERAL and n % 4:  # the vec4 kernels need rows of whole vec4s
                row += f" {'-':>16} {'-':>9} {'-':>8}"
                continue
            seconds, ratio = time_wgsl(executor, a, b, kernel, args.budget)
            versus = f"{cublas / seconds:.0%}" if cublas else "-"
            row += f" {flops / seconds / 1e9:>11.1f} GF/s {versus:>9} {ratio:>8.3f}"
        print(row, flush=True)
    print("GF/s = GFLOP/s; err/tol: the largest |error| / the op's float32 bound, over all elements (<= 1 passes)")


if __name__ == "__main__":
    main()
