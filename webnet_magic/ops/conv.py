"""Convolution: ``conv`` (ONNX Conv: 1-D, 2-D and 3-D, groups, dilations, asymmetric pads) and ``conv2d``.

``conv(x, w[, b], strides=, pads=, dilations=, groups=1)``: x is (N, C, *spatial), w is
(F, C/groups, *kernel), b is (F,); ``pads`` lists the padding before each spatial axis, then
after each (zeros).  Output spatial size: ``(in + begin + end - dilation·(k - 1) - 1) // stride + 1``.
An int for ``strides``, ``dilations`` or ``pads`` stands for every axis (and side).

``conv2d(x, w, bias, stride=1, padding=0)`` is the PyTorch-style 2-D form kept for
expressions (``stride`` and ``padding`` an int or a pair, padding symmetric); it runs the
same kernels.

Two kernels, both float32 and both reading x through a table of the filter's taps (see
``conv_common.wgsl``): an implicit GEMM on the matmul tiling (``conv_gemm.wgsl``, tiles of
64 filters x 64 output pixels) for convs with at least :data:`MIN_TILED_FILTERS` filters per
group, and one invocation per output (``conv_direct.wgsl``) for the rest, such as depthwise
convs.  A conv with too few tiles to fill a GPU (small images, deep filters: ResNet's last
stages at batch 1) has its dot products cut into ranges of taps, run side by side and summed
(``conv_splits.wgsl``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import GPU_PARALLELISM, MAX_GROUPS, Builder, Value, grid
from .dtypes import EPS32
from .graph import Node, OpSpec, Shape, Typed, register
from .window import Window, window

_SOURCES = files(__package__)
COMMON = _SOURCES.joinpath("conv_common.wgsl").read_text()
DIRECT = Kernel(COMMON + _SOURCES.joinpath("conv_direct.wgsl").read_text())
SPLITS = Kernel(_SOURCES.joinpath("conv_splits.wgsl").read_text())
#: Below this many filters per group a tile of filters (64 at least) would be mostly empty: direct kernel.
MIN_TILED_FILTERS = 16
#: Taps per split at least: 8 steps of the tiled kernel, so a split does more than load and store.
MIN_SPLIT_DEPTH = 128
TK = 16  # taps per step of the tiled kernel (conv_gemm.wgsl)


@dataclass(frozen=True)
class Conv:
    """A conv's shapes: x (batch, channels, *window.size), w (filters, channels / groups, *window.kernel)."""

    batch: int
    channels: int
    filters: int
    groups: int
    window: Window

    @property
    def shape(self) -> Shape:
        return (self.batch, self.filters, *self.window.out)

    @property
    def depth(self) -> int:
        """The length of each output's dot product: C / groups · kernel size."""
        return self.channels // self.groups * math.prod(self.window.kernel)


def geometry(op: str, x: Shape, w: Shape, attrs: Mapping[str, Any]) -> Conv:
    """The conv of ``x`` by ``w`` with ``attrs`` (conv's), or a ShapeError naming what does not fit."""
    if len(x) < 3 or len(w) != len(x):
        raise ShapeError(
            f"{op} takes x of shape (N, C, *spatial) and w of shape (F, C/groups, *kernel) with as many "
            f"spatial axes, not {x} and {w}"
        )
    groups = attrs["groups"]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ShapeError(f"{op}'s groups must be an int >= 1, not {groups!r}")
    (n, c), (f, cg) = x[:2], w[:2]
    if cg * groups != c:
        expects = f"{cg}" if groups == 1 else f"{cg} x {groups} groups = {cg * groups}"
        raise ShapeError(f"{op}: x has {c} channels but w expects {expects} (shapes {x} and {w})")
    if f % groups:
        raise ShapeError(f"{op}: {f} filters do not split into {groups} groups (w of shape {w})")
    win = window(op, x[2:], w[2:], attrs["strides"], attrs["pads"], attrs["dilations"])
    return Conv(n, c, f, groups, win)


def _infer(op: str, args: Sequence[Node], conv: Conv) -> Typed:
    if len(args) == 3 and args[2].shape != (conv.filters,):
        raise ShapeError(f"{op}'s bias must have shape ({conv.filters},), not {args[2].shape}")
    return Typed(conv.shape, "float32", ("float32",) * len(args))


def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    return _infer("conv", args, geometry("conv", args[0].shape, args[1].shape, attrs))


# -- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    """The tiled kernel with each invocation computing ``rows`` filters x ``cols`` pixels (4 or 8 each)."""

    rows: int
    cols: int

    @property
    def tile(self) -> tuple[int, int]:
        """(filters, pixels) per workgroup."""
        return 16 * self.rows, 16 * self.cols

    @property
    def kernel(self) -> Kernel:
        return _gemm_kernel(self.rows, self.cols)


TILINGS = (Tiling(8, 8), Tiling(4, 8), Tiling(8, 4), Tiling(4, 4))
#: The tiling convs run: 64 filters x 64 pixels per workgroup.  On an H200 it ran ResNet-50's convs
#: fastest of the four at batch 1 and at batch 32 (``benchmarks/conv.py --tilings``): bigger tiles per
#: invocation hold more registers, so fewer workgroups share a multiprocessor to hide the gather.
TILING = Tiling(4, 4)


@dataclass(frozen=True)
class Schedule:
    """How a conv runs: the tiled kernel with ``tiling`` (None: the direct kernel), its taps cut into
    ``splits`` ranges of ``split_depth`` (a multiple of the kernel's step)."""

    tiling: Tiling | None
    splits: int = 1
    split_depth: int = 0


@cache
def _gemm_kernel(rows: int, cols: int) -> Kernel:
    """conv_gemm.wgsl for ``rows`` x ``cols`` per invocation, its lines written out (named accumulators:
    GPU compilers may put a dynamically indexed local array in slow memory)."""
    xyzw = "xyzw"
    halves = range(cols // 4)
    accumulators = [f"    var c{r}_{h} = vec4<f32>(0.0);" for r in range(rows) for h in halves]
    fmas = [f"            let a{q} = w_tile[kk * WS + {16 * q}u + ty];" for q in range(rows // 4)]
    fmas += [f"            let b{h} = x_tile[kk * (TN / 4u) + {16 * h}u + tx];" for h in halves]
    fmas += [
        f"            c{r}_{h} = fma(vec4<f32>(a{r // 4}.{xyzw[r % 4]}), b{h}, c{r}_{h});"
        for r in range(rows)
        for h in halves
    ]
    stores = []
    for h in halves:
        for e in range(4):
            stores += [
                f"    let j{h}{e} = col0 + {64 * h + e}u + tx * 4u;",
                f"    let out{h}{e} = select(NONE, (j{h}{e} / p.pixels) * p.filters * p.pixels + j{h}{e} % p.pixels,"
                f" j{h}{e} < p.cols);",
            ]
    for r in range(rows):
        stores += [
            "    {",
            f"        let f = f0 + {64 * (r // 4) + r % 4}u + ty * 4u;",
            "        if (f < p.group_filters) {",
            "            let fg = g * p.group_filters + f;",
            "            var add = 0.0;",
            "            if (p.has_bias != 0u && group.z == 0u) {",
            "                add = bias[fg];",
            "            }",
            "            let row = fg * p.pixels + group.z * p.count;  // split z writes the z-th copy",
        ]
        stores += [
            f"            if (out{h}{e} != NONE) {{ y[out{h}{e} + row] = c{r}_{h}.{xyzw[e]} + add; }}"
            for h in halves
            for e in range(4)
        ]
        stores += ["        }", "    }"]
    source = (
        _SOURCES.joinpath("conv_gemm.wgsl").read_text()
        .replace("{{TM}}", str(16 * rows))
        .replace("{{TN}}", str(16 * cols))
        .replace("{{W_PAD}}", str(int(rows + cols < 16)))  # 128x128 tiles fill the 16 KiB already
        .replace("{{ACCUMULATORS}}", "\n".join(accumulators))
        .replace("{{FMAS}}", "\n".join(fmas))
        .replace("{{STORES}}", "\n".join(stores))
    )  # fmt: skip
    return Kernel(COMMON + source)


def _tiles(conv: Conv, tiling: Tiling) -> tuple[int, int]:
    """Workgroups along y (groups x filter tiles) and x (pixel tiles) for ``tiling``."""
    tm, tn = tiling.tile
    cols = conv.batch * math.prod(conv.window.out)
    return conv.groups * -(-conv.filters // conv.groups // tm), -(-cols // tn)


def schedule(conv: Conv, tiling: Tiling | None = TILING, parallelism: int = GPU_PARALLELISM) -> Schedule:
    """The direct kernel for few filters per group, else ``tiling``, split along K when its tiles are
    fewer than the workgroups the device runs at once (``parallelism``: see
    :func:`~webnet_magic.ops.compiler.parallelism`) and each split keeps :data:`MIN_SPLIT_DEPTH` taps."""
    if tiling is None or conv.filters // conv.groups < MIN_TILED_FILTERS:
        return Schedule(None)
    rows, cols = _tiles(conv, tiling)
    wanted = -(-parallelism // (rows * cols))
    splits = max(1, min(wanted, conv.depth // MIN_SPLIT_DEPTH))
    step = -(-conv.depth // splits // TK) * TK
    return Schedule(tiling, -(-conv.depth // step), step)


def taps(conv: Conv) -> np.ndarray:
    """The taps table (K, 4) int32: per element of a filter, its x offset and its offset along each axis."""
    win = conv.window.as_3d()
    _, h, w = win.size
    kd, kh, kw = (np.arange(k) * d for k, d in zip(win.kernel, win.dilations, strict=True))
    c = np.arange(conv.channels // conv.groups) * math.prod(win.size)
    grid_ = np.meshgrid(c, kd, kh, kw, indexing="ij")
    offset = grid_[0] + (grid_[1] * h + grid_[2]) * w + grid_[3]
    return np.stack([offset, *grid_[1:]], axis=-1).reshape(-1, 4).astype(np.int32)


def emit_conv(
    builder: Builder, args: Sequence[Value], out: Value, conv: Conv, plan: Schedule | None = None,
    limit: int = MAX_GROUPS,
) -> None:  # fmt: skip
    """The dispatches computing ``out`` = conv of ``args`` (x, w[, b]).

    ``plan`` is :func:`schedule`'s unless given (benchmarks and tests force each kernel);
    ``limit`` is the most workgroups per dispatch dimension: larger outputs take several
    dispatches of the tiled kernel (the direct one spreads over x and y).
    """
    plan = plan or schedule(conv, parallelism=builder.parallelism)
    x, w = args[0], args[1]
    bias = args[2] if len(args) == 3 else x
    win = conv.window.as_3d()
    pixels, count = math.prod(win.out), math.prod(conv.shape)
    table = builder.input(taps(conv))
    words = [
        conv.batch * pixels, pixels, win.out[1] * win.out[2], win.out[2], *win.size, math.prod(win.size),
        *win.strides, *win.begin, conv.channels, conv.channels // conv.groups, conv.depth,
        conv.filters, conv.filters // conv.groups,
    ]  # fmt: skip
    has_bias = int(len(args) == 3)
    if plan.tiling is None:
        params = builder.uniform(*words, 0, 0, 0, has_bias, count, 0)
        builder.dispatch(DIRECT, [x.buffer, w.buffer, bias.buffer, table, out.buffer, params], grid(-(-count // 256)))
        return
    target = out if plan.splits == 1 else builder.scratch((plan.splits, *conv.shape), "float32")
    rows, cols = _tiles(conv, plan.tiling)
    bindings = [x.buffer, w.buffer, bias.buffer, table, target.buffer]
    for row0 in range(0, rows, limit):
        for col0 in range(0, cols, limit):
            params = builder.uniform(*words, rows // conv.groups, col0, row0, has_bias, count, plan.split_depth)
            groups = (min(limit, cols - col0), min(limit, rows - row0), plan.splits)
            builder.dispatch(plan.tiling.kernel, [*bindings, params], groups)
    if plan.splits > 1:
        params = builder.uniform(count, plan.splits)
        builder.dispatch(SPLITS, [target.buffer, out.buffer, params], grid(-(-count // 256)))


def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    emit_conv(builder, args, out, geometry("conv", args[0].shape, args[1].shape, attrs))


# -- numpy --------------------------------------------------------------------------------------


def convolve(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, conv: Conv) -> np.ndarray:
    """The conv in float64: per kernel position, one strided slice of the padded input times that
    position's weights (a matmul per group, so numpy's BLAS does the work)."""
    win = conv.window
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *zip(win.begin, win.end, strict=True)])
    g, n, pixels = conv.groups, conv.batch, math.prod(win.out)
    grouped = padded.reshape(n, g, conv.channels // g, *padded.shape[2:])
    filters = w.astype(np.float64).reshape(g, conv.filters // g, conv.channels // g, *win.kernel)
    y = np.zeros((g, conv.filters // g, n * pixels))
    for index, slices in win.offsets():
        patch = grouped[(..., *slices)].reshape(n, g, -1, pixels).transpose(1, 2, 0, 3).reshape(g, -1, n * pixels)
        y += np.matmul(filters[(..., *index)], patch)
    y = y.reshape(conv.filters, n, *win.out).swapaxes(0, 1)
    if b is not None:
        y = y + b.astype(np.float64).reshape(-1, *(1,) * len(win.out))
    return y


def bound(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, conv: Conv) -> np.ndarray:
    """Like a float32 dot product of length K (+1 for the bias): that many ULPs of the sum of |products|."""
    magnitude = convolve(np.abs(x), np.abs(w), None if b is None else np.abs(b), conv)
    return 2 * (conv.depth + 1) * EPS32 * magnitude + 1e-30


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    return convolve(x, w, b, geometry("conv", x.shape, w.shape, attrs))


def tolerance(
    result: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **attrs: Any
) -> np.ndarray:
    return bound(x, w, b, geometry("conv", x.shape, w.shape, attrs))


register(
    OpSpec("conv", (2, 3), "kernel", infer, reference, tolerance,
           "conv(x, w, b, strides=, pads=(begins, ends), dilations=, groups=1): N-D convolution (ONNX Conv)",
           defaults={"strides": None, "pads": None, "dilations": None, "groups": 1}, emit=emit)
)  # fmt: skip


# -- conv2d: the PyTorch-style form ---------------------------------------------------------------


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    pair = tuple(value) if isinstance(value, tuple | list) else ()
    if len(pair) != 2 or not all(type(v) is int and v >= minimum for v in pair):
        raise ShapeError(f"conv2d's {name} must be an int >= {minimum} or a pair of them, not {value!r}")
    return pair  # type: ignore[return-value]


def _conv2d(x: Shape, w: Shape, stride: Any, padding: Any) -> Conv:
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"conv2d takes x of shape (N, C, H, W) and w of shape (F, C, KH, KW), not {x} and {w}")
    ph, pw = _pair(padding, "padding", 0)
    attrs = {"strides": _pair(stride, "stride", 1), "pads": (ph, pw, ph, pw), "dilations": None, "groups": 1}
    return geometry("conv2d", x, w, attrs)


def _conv2d_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    return _infer("conv2d", args, _conv2d(args[0].shape, args[1].shape, attrs["stride"], attrs["padding"]))


def _conv2d_emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    emit_conv(builder, args, out, _conv2d(args[0].shape, args[1].shape, attrs["stride"], attrs["padding"]))


def _conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
                      padding: Any = 0) -> np.ndarray:  # fmt: skip
    return convolve(x, w, bias, _conv2d(x.shape, w.shape, stride, padding))


def _conv2d_tolerance(result: np.ndarray, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                      stride: Any = 1, padding: Any = 0) -> np.ndarray:  # fmt: skip
    return bound(x, w, bias, _conv2d(x.shape, w.shape, stride, padding))


register(
    OpSpec("conv2d", (2, 3), "kernel", _conv2d_infer, _conv2d_reference, _conv2d_tolerance,
           "conv2d(x, w, bias, stride=1, padding=0), NCHW", defaults={"stride": 1, "padding": 0}, emit=_conv2d_emit)
)  # fmt: skip
