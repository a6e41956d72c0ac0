"""Tensor ops: device memory with buffer reuse, and the bandwidth of the moving kernels, in one run.

Memory: each graph is compiled twice, as the compiler does it and once more with buffer
reuse switched off (``Builder.release`` made a no-op for that compile only), and the
scratch buffers (those a program computes into: not inputs, not uniforms) are counted.
The graphs: an MLP of 100 layers (``relu(h @ W + b)`` with a reshape round trip) and a
stack of transformer decoder blocks (embedding gather, layernorm, fused QKV split by
slices, heads by reshape and transpose, a causal mask through ``where``, softmax, GELU
through ``erf``, residuals).

Bandwidth: each moving kernel (a strided view copy, concat of ten arrays, reflect pad,
an embedding gather, softmax over a middle axis, a sum over two axes) through the native
worker's own executor, checked against numpy, timed per run from many runs in one
submission; GB/s counts the bytes read plus the bytes written once each.

    python benchmarks/tensor_ops.py             # on a GPU (see DESIGN.md for the H200)
    python benchmarks/tensor_ops.py --quick     # small sizes, seconds on lavapipe
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from webnet_magic import ops
from webnet_magic.ops import compiler
from webnet_magic.worker.gpu import WgpuExecutor

rng = np.random.default_rng(0)


def f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def mlp(layers: int, batch: int, width: int) -> list[ops.Node]:
    g = ops.Graph()
    h = x = g.input("x", f32(batch, width))
    for k in range(layers):
        w, b = g.input(f"w{k}", f32(width, width, scale=width**-0.5)), g.input(f"b{k}", f32(width))
        h = g.apply("relu", [g.apply("add", [g.apply("matmul", [h, w], {}, "mm"), b], {}, "+")], {}, "relu")
        h = g.apply("reshape", [h], {"shape": (batch, 4, width // 4)}, "split")
        h = g.apply("reshape", [h], {"shape": (batch, width)}, "merge")
    return [g.apply("add", [h, x], {}, "out")]


def decoders(blocks: int, batch: int, tokens: int, width: int, heads: int) -> list[ops.Node]:
    g = ops.Graph()

    def op(name: str, *args: ops.Node, **attrs: object) -> ops.Node:
        return g.apply(name, args, attrs, name)

    ids = g.input("ids", rng.integers(0, 1000, (batch, tokens)).astype(np.int32))
    steps = np.arange(tokens, dtype=np.int32)
    allowed = op("less_equal", g.input("cols", steps), g.input("rows", steps.reshape(tokens, 1)))
    x = op("add", op("gather", g.input("table", f32(1000, width)), ids, axis=0), g.input("pos", f32(tokens, width)))
    size = width // heads
    for k in range(blocks):
        gamma, beta = g.input(f"g{k}", f32(width)), g.input(f"b{k}", f32(width))
        qkv = op("matmul", op("layernorm", x, gamma, beta), g.input(f"qkv{k}", f32(width, 3 * width, scale=0.05)))
        parts = (
            op("slice", qkv, starts=(0, 0, j * width), ends=(batch, tokens, (j + 1) * width), steps=(1, 1, 1))
            for j in range(3)
        )
        q, key, v = (
            op("transpose", op("reshape", part, shape=(batch, tokens, heads, size)), axes=(0, 2, 1, 3))
            for part in parts
        )
        scores = op("mul", op("matmul", q, op("transpose", key, axes=(0, 1, 3, 2))), g.const(size**-0.5, "scale"))
        attended = op("matmul", op("softmax", op("where", allowed, scores, g.const(-math.inf, "-inf"))), v)
        merged = op("reshape", op("transpose", attended, axes=(0, 2, 1, 3)), shape=(batch, tokens, width))
        x = op("add", x, op("matmul", merged, g.input(f"o{k}", f32(width, width, scale=0.05))))
        up = op("matmul", op("layernorm", x, gamma, beta), g.input(f"up{k}", f32(width, 4 * width, scale=0.05)))
        erf = op("erf", op("mul", up, g.const(0.5**0.5, "r2")))
        gelu = op("mul", op("mul", up, g.const(0.5, "half")), op("add", erf, g.const(1.0, "one")))
        x = op("add", x, op("matmul", gelu, g.input(f"down{k}", f32(4 * width, width, scale=0.05))))
    return [x]


def scratch(outputs: list[ops.Node], reuse: bool) -> tuple[int, int, int]:
    """(dispatches, scratch buffers, scratch bytes) of the compiled program."""
    release = compiler.Builder.release
    if not reuse:
        compiler.Builder.release = lambda self, buffer: None  # type: ignore[method-assign]
    try:
        program = ops.compile_graph(outputs).program
    finally:
        compiler.Builder.release = release  # type: ignore[method-assign]
    sizes = [b.size for b in program.buffers if b.input is None and not b.uniform]
    return len(program.steps), len(sizes), sum(sizes)


def memory(quick: bool) -> None:
    mlp_shape = (32, 256) if quick else (256, 1024)
    block = (2, 32, 128) if quick else (8, 128, 512)
    graphs = {
        f"MLP, 100 layers, {mlp_shape[0]} x {mlp_shape[1]}": lambda: mlp(100, *mlp_shape),
        f"decoder, 12 blocks, {block[0]} x {block[1]} tokens x {block[2]}": lambda: decoders(12, *block, 8),
    }
    print("| graph | nodes | dispatches | scratch buffers (MiB), reused | without reuse |")
    print("|---|---|---|---|---|")
    for name, build in graphs.items():
        outputs = build()
        nodes = len(ops.graph.topological(outputs))
        steps, count, size = scratch(outputs, True)
        _, count0, size0 = scratch(outputs, False)
        print(f"| {name} | {nodes} | {steps} | {count} ({size / 2**20:.1f}) | {count0} ({size0 / 2**20:.1f}) |")


def view_copy(side: int) -> ops.Plan:
    g = ops.Graph()
    flipped = g.apply("transpose", [g.input("x", f32(side, side))], {"axes": (1, 0)}, "x.T")
    attrs = {"starts": (side - 1, 0), "ends": (-1, side), "steps": (-2, 1)}
    return ops.compile_graph([g.apply("slice", [flipped], attrs, "x.T[::-2]")])


def bandwidth(executor: WgpuExecutor, quick: bool) -> None:
    n = 1 << (18 if quick else 24)  # elements per operand
    side = math.isqrt(n)
    cases: dict[str, Callable[[], ops.Plan]] = {
        "slice of a transpose, step -2 (view copy)": lambda: view_copy(side),
        "concat of 10 arrays, axis 1": lambda: ops.plan("concat", *[f32(side, side // 10)] * 10, axis=1),
        "pad reflect, 8 each side": lambda: ops.plan("pad", f32(side, side), pads=(8, 8, 8, 8), mode="reflect"),
        "gather rows (embedding)": lambda: ops.plan("gather", f32(32000, 64),
                                                    rng.integers(0, 32000, n // 64).astype(np.int32), axis=0),
        "softmax over axis 1 of 3": lambda: ops.plan("softmax", f32(64, 128, n // 8192), axis=1),
        "sum over axes (0, 2)": lambda: ops.plan("sum", f32(64, n // 8192, 128), axis=(0, 2)),
    }  # fmt: skip
    print("\n| kernel | MB moved | ms | GB/s |")
    print("|---|---|---|---|")
    for name, make in cases.items():
        plan = make()
        prepared = executor.prepare(plan.program)
        try:
            executor.dispatch(prepared)
            (got,) = plan.finish(executor.read(prepared))
            np.testing.assert_allclose(got, plan.reference()[0], rtol=1e-4, atol=1e-5)
            times = []
            for _ in range(5):
                executor.dispatch(prepared, repeat=5 if quick else 50)
                times.append(prepared.timings["kernel"])
            ms = statistics.median(times)
        finally:
            executor.release(prepared)
        moved = plan.program.input_bytes + plan.program.output_bytes
        print(f"| {name} | {moved / 1e6:.0f} | {ms:.3f} | {moved / ms / 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (lavapipe, CI)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    memory(args.quick)
    executor = WgpuExecutor()
    print(f"\nadapter: {executor.describe()['adapter']}")
    bandwidth(executor, args.quick)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
