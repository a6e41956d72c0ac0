"""Reductions over one axis or all: ``sum mean max min argmax`` (numpy's ``axis`` and ``keepdims``).

``sum`` and ``mean`` compute in float32 (integers are cast), ``max min argmax`` keep the
input's dtype and are exact; ``argmax`` returns int32 indices, the first of equal
maxima as numpy does.  The kernel is ``reduce.wgsl``, filled in per op and dtype.
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

TEMPLATE = files(__package__).joinpath("reduce.wgsl").read_text()
#: Per op: (fold a value v at index r into acc/at, merge a partial v found at v_at, finish).
RECIPES = {
    "sum": ("acc = acc + v;", "acc = acc + v;", "acc"),
    "mean": ("acc = acc + v;", "acc = acc + v;", "acc * p.scale"),
    "max": ("acc = max(acc, v);", "acc = max(acc, v);", "acc"),
    "min": ("acc = min(acc, v);", "acc = min(acc, v);", "acc"),
    "argmax": (
        "if (v > acc) { acc = v; at = r; }",
        "if (v > acc || (v == acc && v_at < at)) { acc = v; at = v_at; }",
        "i32(at)",
    ),
}


def _view(shape: Shape, axis: int | None) -> tuple[int, int, int]:
    """(outer, length, inner): the input seen as three dimensions, the middle one reduced."""
    if axis is None:
        return 1, math.prod(shape), 1
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _result_shape(shape: Shape, axis: int | None, keepdims: bool) -> Shape:
    if axis is None:
        return (1,) * len(shape) if keepdims else ()
    return shape[:axis] + ((1,) if keepdims else ()) + shape[axis + 1 :]


def _axis(node: Node, attrs: Mapping[str, Any]) -> int | None:
    axis = attrs["axis"]
    return None if axis is None else normalize_axis(axis, len(node.shape))


def _infer(op: str) -> Any:
    def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        (x,) = args
        axis = _axis(x, attrs)
        if not isinstance(attrs["keepdims"], bool):
            raise ShapeError(f"keepdims must be True or False, not {attrs['keepdims']!r}")
        if op in ("max", "min", "argmax") and _view(x.shape, axis)[1] == 0:
            raise ShapeError(f"{op} of an empty axis has no answer (shape {x.shape}, axis {attrs['axis']})")
        shape = _result_shape(x.shape, axis, bool(attrs["keepdims"]))
        arg = "float32" if op in ("sum", "mean") else x.dtype
        out = {"sum": "float32", "mean": "float32", "argmax": "int32"}.get(op, x.dtype)
        return Typed(shape, out, (arg,))

    return infer


def _emit(op: str) -> Any:
    def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        (x,) = args
        axis = None if attrs["axis"] is None else normalize_axis(attrs["axis"], len(x.shape))
        outer, length, inner = _view(x.shape, axis)
        fold, merge, finish = RECIPES[op]
        source = (
            TEMPLATE.replace("{{T}}", WGSL_TYPES[x.dtype])
            .replace("{{OUT_T}}", WGSL_TYPES[out.dtype])
            .replace("{{FOLD}}", fold)
            .replace("{{MERGE}}", merge)
            .replace("{{FINISH}}", finish)
        )
        count = outer * inner
        params = builder.uniform(length, max(inner, 1), count, 1.0 / length if length else math.inf)
        builder.dispatch(Kernel(source), [x.buffer, out.buffer, params], grid(count))

    return emit


def _reference(op: str) -> Any:
    numpy_op: Callable[..., Any] = getattr(np, op)  # np.sum, np.max, np.min, np.argmax (mean: below)

    def reference(x: np.ndarray, axis: int | None, keepdims: bool) -> np.ndarray:
        if op == "mean":  # numpy's, without its warning for an empty axis (the answer is nan)
            total = np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
            length = x.size if axis is None else x.shape[axis]
            return np.asarray(total / length if length else np.full(np.shape(total), np.nan))
        data = x.astype(np.float64) if op == "sum" else x
        return np.asarray(numpy_op(data, axis=axis, keepdims=keepdims))

    return reference


def _tolerance(op: str) -> Any:
    def tolerance(result: np.ndarray, x: np.ndarray, axis: int | None, keepdims: bool) -> np.ndarray | float:
        if op not in ("sum", "mean"):
            return 0.0
        length = x.size if axis is None else x.shape[axis]
        magnitude = np.sum(np.abs(x.astype(np.float64)), axis=axis, keepdims=keepdims)
        if op == "mean":
            magnitude = magnitude / max(length, 1)
        return (length + 4) * EPS32 * magnitude + 1e-37

    return tolerance


SUMMARIES = {
    "sum": "sum along axis (all when axis=None)",
    "mean": "mean along axis",
    "max": "largest element along axis",
    "min": "smallest element along axis",
    "argmax": "index of the largest element along axis (int32)",
}
for _op, _summary in SUMMARIES.items():
    register(
        OpSpec(
            _op, (1, 1), "kernel", _infer(_op), _reference(_op), _tolerance(_op), _summary,
            defaults={"axis": None, "keepdims": False}, emit=_emit(_op),
        )
    )  # fmt: skip
