"""``matmul``: numpy's ``A @ B`` (1-D, 2-D and batched with broadcasting) on ``matmul.wgsl``.

Float32 only: integer operands are cast to float32 on the device (and said so by the
dtype note when they were converted on the way).  Up to 4 batch dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import MAX_GROUPS, Builder, Value
from .dtypes import EPS32
from .graph import Node, OpSpec, Shape, Typed, broadcast, register


@dataclass(frozen=True)
class MatmulKernel:
    """A matmul kernel in its two forms: the batch is workgroup z (``plain``), or
    ``dims.batch0`` + workgroup z (``offset``, for batches beyond one dispatch).  Reading
    batch0 costs 6% on an H200, so only jobs that need it use that form."""

    plain: Kernel
    offset: Kernel
    tile: int  # rows and columns of C per workgroup

    @classmethod
    def of(cls, source: str, tile: int) -> MatmulKernel:
        return cls(
            Kernel(source.replace("{{BATCH}}", "group.z")),
            Kernel(source.replace("{{BATCH}}", "(dims.batch0 + group.z)")),
            tile,
        )


def _vec4_source() -> str:
    """matmul_vec4.wgsl with its unrolled lines: thread-tile row r, column half h is ``c{2r + h}``."""
    accumulators = "\n".join(f"    var c{i} = vec4<f32>(0.0);" for i in range(16))
    fmas = []
    for r in range(8):
        a = f"{'a_lo' if r < 4 else 'a_hi'}.{'xyzw'[r % 4]}"
        for h, b in enumerate(("b_lo", "b_hi")):
            fmas.append(f"            c{2 * r + h} = fma(vec4<f32>({a}), {b}, c{2 * r + h});")
    stores = []
    for r in range(8):
        stores += [
            f"    if (row0 + {(r // 4) * 64 + r % 4}u + ty * 4u < M) {{",
            f"        let base = c_base + (row0 + {(r // 4) * 64 + r % 4}u + ty * 4u) * N;",
            f"        if (lo_col < N) {{ c[(base + lo_col) / 4u] = c{2 * r}; }}",
            f"        if (hi_col < N) {{ c[(base + hi_col) / 4u] = c{2 * r + 1}; }}",
            "    }",
        ]
    return (
        files(__package__).joinpath("matmul_vec4.wgsl").read_text()
        .replace("{{ACCUMULATORS}}", accumulators)
        .replace("{{FMAS}}", "\n".join(fmas))
        .replace("{{STORES}}", "\n".join(stores))
    )  # fmt: skip


#: Any M, K, N: 64x64 tiles, 4x4 per thread.
GENERAL = MatmulKernel.of(files(__package__).joinpath("matmul.wgsl").read_text(), 64)
#: K and N multiples of 4 (whole vec4 rows): 128x128 tiles, 8x8 per thread.  Both stay within
#: WebGPU's default limits (256 invocations, 16 KiB of workgroup memory), so one program runs
#: on every device, phone or GPU server.
FAST = MatmulKernel.of(_vec4_source(), 128)
MAX_BATCH_DIMS = 4


def shapes(a: Shape, b: Shape) -> tuple[Shape, Shape, int, int, int, Shape]:
    """numpy's matmul shapes: (A's batch, B's batch, M, K, N, result shape), or a ShapeError."""
    if not a or not b:
        raise ShapeError(f"matmul needs arrays, not scalars (shapes {a} and {b}); use * for scaling")
    m, k = (1, a[0]) if len(a) == 1 else a[-2:]
    k2, n = (b[0], 1) if len(b) == 1 else b[-2:]
    if k != k2:
        raise ShapeError(f"matmul of shapes {a} and {b}: the inner dimensions {k} and {k2} must be equal")
    a_batch, b_batch = a[:-2], b[:-2]
    batch = broadcast([a_batch, b_batch], f" (the batch dimensions of matmul shapes {a} and {b})")
    if len(batch) > MAX_BATCH_DIMS:
        raise ShapeError(f"matmul supports up to {MAX_BATCH_DIMS} batch dimensions, not {len(batch)}")
    shape = batch + (m,) * (len(a) > 1) + (n,) * (len(b) > 1)
    return a_batch, b_batch, m, k, n, shape


def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    *_, shape = shapes(args[0].shape, args[1].shape)
    return Typed(shape, "float32", ("float32", "float32"))


def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    a, b = args
    _, _, m, k, n, _ = shapes(a.shape, b.shape)
    emit_with(builder, a, b, out, choose_kernel(m, k, n))


def emit_with(builder: Builder, a: Value, b: Value, out: Value, kernel: MatmulKernel) -> None:
    """The dispatches of ``kernel`` for ``out = a @ b``.

    The batch is workgroup z, at most 65535 a dispatch: a larger batch takes several, with the
    kernel's offset form.
    """
    a_batch, b_batch, m, k, n, _ = shapes(a.shape, b.shape)
    batch = broadcast([a_batch, b_batch])
    batch_shape = (1,) * (MAX_BATCH_DIMS - len(batch)) + batch
    strides = (*_batch_strides(a_batch, batch_shape, m * k), *_batch_strides(b_batch, batch_shape, k * n))
    total = math.prod(batch)
    code = kernel.plain if total <= MAX_GROUPS else kernel.offset
    tile = kernel.tile
    for first in range(0, max(total, 1), MAX_GROUPS):
        params = builder.uniform(m, k, n, first, *batch_shape, *strides)
        groups = (max(1, math.ceil(n / tile)), max(1, math.ceil(m / tile)), max(1, min(MAX_GROUPS, total - first)))
        builder.dispatch(code, [a.buffer, b.buffer, out.buffer, params], groups)


def choose_kernel(m: int, k: int, n: int) -> MatmulKernel:
    """The fast kernel where rows are whole vec4s and the matrices fill its tiles, else the general one."""
    return FAST if k % 4 == 0 and n % 4 == 0 and min(m, n) >= 64 else GENERAL


def _batch_strides(own: Shape, batch_shape: Shape, matrix: int) -> list[int]:
    """Elements between consecutive matrices along each batch dimension; 0 where ``own`` broadcasts."""
    padded = (1,) * (len(batch_shape) - len(own)) + own
    strides, step = [], matrix
    for size, target in zip(reversed(padded), reversed(batch_shape), strict=True):
        strides.append(0 if size == 1 and target != 1 else step)
        step *= size
    return list(reversed(strides))


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the device must match: matmul of the float32 operands, computed in float64."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def tolerance(result: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float32 dot product of length K is off by at most about K·eps·(|a|·|b|)."""
    k = a.shape[-1] if a.ndim else 1
    return 2 * k * EPS32 * np.matmul(np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64))) + 1e-30


register(OpSpec("matmul", (2, 2), "kernel", infer, reference, tolerance, "a @ b (batched, float32)", emit=emit))
