"""Reductions: ``sum mean prod max min`` over an axis, a tuple of axes or all (``axis=None``), and
``argmax argmin`` over one axis or the flattened array; numpy's ``keepdims``.

``sum mean prod`` compute in float32 (integers are cast), ``max min argmax argmin``
keep the input's dtype and are exact; ``argmax``/``argmin`` return int32 indices, the
first of equal extremes as numpy does.  The kernel is ``reduce.wgsl``, filled in per
op, dtype and layout: the input's dimensions merge into runs of kept and of reduced
ones, so any set of axes costs one dispatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import Builder, Value, grid
from .dtypes import EPS32, WGSL_TYPES
from .graph import Node, OpSpec, Shape, Typed, normalize_axis, register
from .indexing import contiguous

TEMPLATE = files(__package__).joinpath("reduce.wgsl").read_text()
#: Per op: (fold a value v at index r into acc/at, merge a partial v found at v_at, finish).
RECIPES = {
    "sum": ("acc = acc + v;", "acc = acc + v;", "acc"),
    "mean": ("acc = acc + v;", "acc = acc + v;", "acc * bitcast<f32>(u(2u))"),
    "prod": ("acc = acc * v;", "acc = acc * v;", "select(acc, 1.0, at == NONE)"),
    "max": ("acc = max(acc, v);", "acc = max(acc, v);", "acc"),
    "min": ("acc = min(acc, v);", "acc = min(acc, v);", "acc"),
    "argmax": (
        "if (v > acc) { acc = v; at = r; }",
        "if (v > acc || (v == acc && v_at < at)) { acc = v; at = v_at; }",
        "i32(at)",
    ),
    "argmin": (
        "if (v < acc) { acc = v; at = r; }",
        "if (v < acc || (v == acc && v_at < at)) { acc = v; at = v_at; }",
        "i32(at)",
    ),
}
FLOAT = ("sum", "mean", "prod")  # computed in float32
INDEX = ("argmax", "argmin")  # one axis (or the flattened array), int32 result


def _axes(shape: Shape, axis: Any, op: str) -> tuple[int, ...]:
    """The reduced axes, normalized and sorted; all of them for None."""
    if axis is None:
        return tuple(range(len(shape)))
    if isinstance(axis, tuple | list) and op not in INDEX:
        axes = tuple(sorted(normalize_axis(a, len(shape)) for a in axis))
        if len(set(axes)) != len(axes):
            raise ShapeError(f"{op}: axis {tuple(axis)} names an axis twice")
        return axes
    if isinstance(axis, tuple | list):
        raise ShapeError(f"{op} takes one axis (or None for the flattened array), not {tuple(axis)}")
    return (normalize_axis(axis, len(shape)),)


def _runs(shape: Shape, axes: tuple[int, ...]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(kept runs, reduced runs), each (size, stride) outermost first: consecutive dimensions of one
    kind merged, dimensions of size 1 dropped."""
    kept: list[tuple[int, int]] = []
    reduced: list[tuple[int, int]] = []
    previous = None
    for d, (size, stride) in enumerate(zip(shape, contiguous(shape), strict=True)):
        if size == 1:
            continue
        runs, kind = (reduced, "r") if d in axes else (kept, "k")
        if previous == kind:
            runs[-1] = (runs[-1][0] * size, stride)
        else:
            runs.append((size, stride))
        previous = kind
    return kept, reduced


def _decompose(runs: list[tuple[int, int]], first_word: int) -> str:
    """WGSL adding to ``at`` the offset of index ``rem`` over ``runs`` (sizes and strides in the words)."""
    lines = []
    for k in reversed(range(len(runs))):
        size, stride = f"u({first_word + 2 * k}u)", f"u({first_word + 2 * k + 1}u)"
        if k:
            lines += [f"    at = at + (rem % {size}) * {stride};", f"    rem = rem / {size};"]
        else:
            lines.append(f"    at = at + rem * {stride};")
    return "\n".join(lines)


def _result_shape(shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Shape:
    return tuple(1 if d in axes else s for d, s in enumerate(shape) if keepdims or d not in axes)


def _infer(op: str) -> Any:
    def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        (x,) = args
        axes = _axes(x.shape, attrs["axis"], op)
        if not isinstance(attrs["keepdims"], bool):
            raise ShapeError(f"keepdims must be True or False, not {attrs['keepdims']!r}")
        if op not in FLOAT and not math.prod(x.shape[a] for a in axes):
            raise ShapeError(f"{op} of an empty axis has no answer (shape {x.shape}, axis {attrs['axis']})")
        shape = _result_shape(x.shape, axes, attrs["keepdims"])
        if op in FLOAT:
            return Typed(shape, "float32", ("float32",))
        return Typed(shape, "int32" if op in INDEX else x.dtype, (x.dtype,))

    return infer


def _emit(op: str) -> Any:
    def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        (x,) = args
        axes = _axes(x.shape, attrs["axis"], op)
        kept, reduced = _runs(x.shape, axes)
        length = math.prod(x.shape[a] for a in axes)
        fold, merge, finish = RECIPES[op]
        words: list[int | float] = [length, out.size, 1.0 / length if length else math.inf, 0]
        for run in kept + reduced:
            words += run
        source = (
            TEMPLATE.replace("{{T}}", WGSL_TYPES[x.dtype])
            .replace("{{OUT_T}}", WGSL_TYPES[out.dtype])
            .replace("{{FOLD}}", fold)
            .replace("{{MERGE}}", merge)
            .replace("{{FINISH}}", finish)
            .replace("{{ORIGIN}}", _decompose(kept, 4))
            .replace("{{OFFSET}}", _decompose(reduced, 4 + 2 * len(kept)))
            .replace("{{WORDS}}", str(-(-len(words) // 4)))
        )
        params = builder.uniform(*words)
        builder.dispatch(Kernel(source), [x.buffer, out.buffer, params], grid(out.size))

    return emit


def _reference(op: str) -> Any:
    numpy_op: Callable[..., Any] = getattr(np, op)  # np.sum, np.prod, np.max, ... (mean: below)

    def reference(x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
        axes = _axes(x.shape, axis, op)
        if op in INDEX:
            return np.asarray(numpy_op(x, axis=axis, keepdims=keepdims))
        if op == "mean":  # numpy's, without its warning for an empty axis (the answer is nan)
            total = np.sum(x.astype(np.float64), axis=axes, keepdims=keepdims)
            length = math.prod(x.shape[a] for a in axes)
            return np.asarray(total / length if length else np.full(np.shape(total), np.nan))
        data = x.astype(np.float64) if op in FLOAT else x
        return np.asarray(numpy_op(data, axis=axes, keepdims=keepdims))

    return reference


def _tolerance(op: str) -> Any:
    def tolerance(result: np.ndarray, x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray | float:
        if op not in FLOAT:
            return 0.0
        axes = _axes(x.shape, axis, op)
        length = math.prod(x.shape[a] for a in axes)
        if op == "prod":
            return (length + 2) * EPS32 * np.abs(result) + 1e-37
        magnitude = np.sum(np.abs(x.astype(np.float64)), axis=axes, keepdims=keepdims)
        if op == "mean":
            magnitude = magnitude / max(length, 1)
        return (length + 4) * EPS32 * magnitude + 1e-37

    return tolerance


SUMMARIES = {
    "sum": "sum along axis (an int, a tuple, or None for all)",
    "mean": "mean along axis",
    "prod": "product along axis",
    "max": "largest element along axis",
    "min": "smallest element along axis",
    "argmax": "index of the largest element along axis (int32)",
    "argmin": "index of the smallest element along axis (int32)",
}
for _op, _summary in SUMMARIES.items():
    register(
        OpSpec(
            _op, (1, 1), "kernel", _infer(_op), _reference(_op), _tolerance(_op), _summary,
            defaults={"axis": None, "keepdims": False}, emit=_emit(_op),
        )
    )  # fmt: skip
