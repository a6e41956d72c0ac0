"""Pooling over the spatial axes of (N, C, *spatial), as ONNX defines it.

``maxpool(x, kernel=, strides=, pads=, dilations=, ceil_mode=False)`` and
``avgpool(x, kernel=, strides=, pads=, dilations=, ceil_mode=False, count_include_pad=False)``
slide a 1-D, 2-D or 3-D window (``pool.wgsl``, one invocation per output); attributes as
for ``conv`` (:mod:`~webnet_magic.ops.window`).  Padding never wins a max; avgpool divides
by the taps inside x, or with ``count_include_pad`` by those inside the padded input (a
``ceil_mode`` window reaching past the end padding does not count the overhang, as in
ONNX and PyTorch).  A window with no tap inside x (possible with dilations) gives the
lowest value of the dtype for maxpool and 0 for avgpool.

``global_avgpool(x)`` and ``global_maxpool(x)`` reduce all spatial axes: (N, C, *spatial) ->
(N, C, 1, ...), with the ``mean`` and ``max`` reductions' kernel.

maxpool keeps x's dtype (float32, int32, uint32) and is exact; avgpool computes in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import Builder, Value, grid
from .dtypes import EPS32, WGSL_TYPES
from .graph import OPS, Node, OpSpec, Shape, Typed, register
from .window import Window, window

TEMPLATE = files(__package__).joinpath("pool.wgsl").read_text()
#: The result of a window with no tap inside x: what ONNX Runtime starts its max from.
LOWEST = {"float32": "bitcast<f32>(0xff7fffffu)", "int32": "i32(-2147483647 - 1)", "uint32": "0u"}
#: Per op: (fold a value v into acc, finish).
RECIPES = {
    "maxpool": ("if (!seen || v > acc) { acc = v; }", "select({{LOWEST}}, acc, seen)"),
    "avgpool": (
        "acc += v;",
        "select(0.0, acc / f32(select(inside, padded, p.include_pad != 0u)), seen)",
    ),
}


def _window(op: str, x: Shape, attrs: Mapping[str, Any]) -> Window:
    if len(x) < 3:
        raise ShapeError(f"{op} takes x of shape (N, C, *spatial) with 1 to 3 spatial axes, not {x}")
    if attrs["kernel"] is None:
        raise ShapeError(f"{op} needs kernel=(k, ...): the window's size along each spatial axis")
    if op == "avgpool" and not isinstance(attrs["count_include_pad"], bool):
        raise ShapeError(f"avgpool's count_include_pad must be True or False, not {attrs['count_include_pad']!r}")
    return window(op, x[2:], attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"], attrs["ceil_mode"])


def _infer(op: str) -> Any:
    def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        (x,) = args
        win = _window(op, x.shape, attrs)
        dtype = x.dtype if op == "maxpool" else "float32"
        return Typed((*x.shape[:2], *win.out), dtype, (dtype,))

    return infer


def _emit(op: str) -> Any:
    fold, finish = RECIPES[op]

    def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        (x,) = args
        win = _window(op, x.shape, attrs).as_3d()
        source = (
            TEMPLATE.replace("{{FOLD}}", fold)
            .replace("{{FINISH}}", finish)
            .replace("{{LOWEST}}", LOWEST[x.dtype])
            .replace("{{T}}", WGSL_TYPES[x.dtype])
            .replace("{{OUT_T}}", WGSL_TYPES[out.dtype])
        )
        count = out.size
        edges = [n + e for n, e in zip(win.size, win.end, strict=True)]
        params = builder.uniform(
            count, math.prod(win.out), win.out[1] * win.out[2], win.out[2], *win.size, *win.kernel,
            *win.strides, *win.begin, *win.dilations, *edges, int(bool(attrs.get("count_include_pad"))),
        )  # fmt: skip
        builder.dispatch(Kernel(source), [x.buffer, out.buffer, params], grid(-(-count // 256)))

    return emit


def _taps(x: np.ndarray, win: Window, fill: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each kernel position, the tap of every window: its values (``fill`` outside x), whether
    it is inside x, and whether it is inside the padded input (folded one position at a time, so
    memory stays at a few copies of x)."""
    ends = [e + o for e, o in zip(win.end, win.overhang(), strict=True)]
    spatial = list(zip(win.begin, ends, strict=True))
    values = np.pad(x, [(0, 0), (0, 0), *spatial], constant_values=fill)
    inside = np.pad(np.ones(win.size, bool), spatial)
    padded = np.pad(np.ones([n + b + e for n, b, e in zip(win.size, win.begin, win.end, strict=True)], bool),
                    [(0, o) for o in win.overhang()])  # fmt: skip
    for _, s in win.offsets():
        yield values[(..., *s)], inside[s], padded[s]


def _maxpool(x: np.ndarray, **attrs: Any) -> np.ndarray:
    win = _window("maxpool", x.shape, attrs)
    wide = x.astype(np.float64 if x.dtype == np.float32 else np.int64)
    low = -np.inf if x.dtype == np.float32 else np.iinfo(np.int64).min
    best, seen = np.full(x.shape[:2] + win.out, low, wide.dtype), np.zeros(win.out, bool)
    for values, inside, _ in _taps(wide, win, low):
        best, seen = np.maximum(best, values), seen | inside
    lowest = np.finfo(np.float32).min if x.dtype == np.float32 else np.iinfo(x.dtype).min
    return np.where(seen, best, lowest)


def _avgpool(x: np.ndarray, **attrs: Any) -> np.ndarray:
    win = _window("avgpool", x.shape, attrs)
    total, taps, padded_taps = np.zeros(x.shape[:2] + win.out), np.zeros(win.out), np.zeros(win.out)
    for values, inside, padded in _taps(x.astype(np.float64), win, 0.0):
        total, taps, padded_taps = total + values, taps + inside, padded_taps + padded
    count = padded_taps if attrs["count_include_pad"] else taps
    return np.where(taps > 0, total / np.maximum(count, 1), 0.0)


def _avgpool_bound(result: np.ndarray, x: np.ndarray, **attrs: Any) -> np.ndarray:
    """A float32 sum of the taps, then a division: about taps + 2 ULPs of the mean of |x|."""
    taps = math.prod(_window("avgpool", x.shape, attrs).kernel)
    return (taps + 2) * EPS32 * _avgpool(np.abs(x), **attrs) + 1e-37


def _exact(result: np.ndarray, *args: np.ndarray, **attrs: Any) -> float:
    """Maxima are values of x: the device must find exactly numpy's."""
    return 0.0


_POOL_DEFAULTS = {"kernel": None, "strides": None, "pads": None, "dilations": None, "ceil_mode": False}
register(
    OpSpec("maxpool", (1, 1), "kernel", _infer("maxpool"), _maxpool, _exact,
           "maxpool(x, kernel=, strides=, pads=, dilations=, ceil_mode=False): ONNX MaxPool",
           defaults=_POOL_DEFAULTS, emit=_emit("maxpool"))
)  # fmt: skip
register(
    OpSpec("avgpool", (1, 1), "kernel", _infer("avgpool"), _avgpool, _avgpool_bound,
           "avgpool(x, kernel=, strides=, pads=, ceil_mode=False, count_include_pad=False): ONNX AveragePool",
           defaults={**_POOL_DEFAULTS, "count_include_pad": False}, emit=_emit("avgpool"))
)  # fmt: skip


# -- global pooling: a reduction over all spatial axes ---------------------------------------------

REDUCTIONS = {"global_avgpool": "mean", "global_maxpool": "max"}


def _global_infer(op: str) -> Any:
    def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        (x,) = args
        if len(x.shape) < 2 or math.prod(x.shape[2:]) == 0:
            raise ShapeError(f"{op} takes x of shape (N, C, *spatial) with a non-empty spatial part, not {x.shape}")
        dtype = "float32" if op == "global_avgpool" else x.dtype
        return Typed((*x.shape[:2], *(1,) * (len(x.shape) - 2)), dtype, (dtype,))

    return infer


def _global_emit(op: str) -> Any:
    def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        (x,) = args
        planes = math.prod(x.shape[:2])
        rows = Value(x.buffer, (planes, x.size // max(planes, 1)), x.dtype)
        OPS[REDUCTIONS[op]].emit(
            builder, [rows], Value(out.buffer, (planes,), out.dtype), {"axis": 1, "keepdims": False}
        )  # type: ignore[misc]

    return emit


def _global_reference(op: str) -> Any:
    def reference(x: np.ndarray) -> np.ndarray:
        axes = tuple(range(2, x.ndim))
        return (
            x.astype(np.float64).mean(axis=axes, keepdims=True)
            if op == "global_avgpool"
            else x.max(axis=axes, keepdims=True)
        )

    return reference


def _global_avgpool_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    length = math.prod(x.shape[2:])
    return (length + 4) * EPS32 * np.abs(x.astype(np.float64)).mean(axis=tuple(range(2, x.ndim)), keepdims=True) + 1e-37


register(
    OpSpec("global_avgpool", (1, 1), "kernel", _global_infer("global_avgpool"), _global_reference("global_avgpool"),
           _global_avgpool_bound, "global_avgpool(x): the mean over all spatial axes, (N, C, 1, ...)",
           emit=_global_emit("global_avgpool"))
)  # fmt: skip
register(
    OpSpec("global_maxpool", (1, 1), "kernel", _global_infer("global_maxpool"), _global_reference("global_maxpool"),
           _exact, "global_maxpool(x): the max over all spatial axes, (N, C, 1, ...)",
           emit=_global_emit("global_maxpool"))
)  # fmt: skip
