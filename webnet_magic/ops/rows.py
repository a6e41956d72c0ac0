"""Row-wise ops: ``softmax``, ``log_softmax`` and ``layernorm`` (``rows.wgsl``).

``softmax(x, axis=-1)`` is numpy's ``exp(x - max) / sum(exp(x - max))`` along one axis
(any), ``log_softmax`` its logarithm computed as ``x - max - log(sum)`` (no underflow).
``layernorm(x, gamma=None, beta=None, eps=1e-5, axis=-1)`` is ``(x - mean) /
sqrt(var + eps)`` over the axes from ``axis`` to the last (ONNX's LayerNormalization),
times ``gamma`` plus ``beta`` (each broadcast to those axes).  All compute in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import Builder, Value, grid
from .dtypes import EPS32
from .graph import Node, OpSpec, Typed, normalize_axis, register
from .indexing import broadcast as broadcast_mapping
from .indexing import identity

TEMPLATE = files(__package__).joinpath("rows.wgsl").read_text()


def _softmax_kernel(result: str) -> Kernel:
    """softmax, or its logarithm: ``result`` from ``d = x - max`` and the row's sum ``s`` of exp(d)."""
    return Kernel(
        TEMPLATE.replace(
            "{{BINDINGS}}",
            """@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;""",
        ).replace(
            "{{BODY}}",
            f"""
    var m = x[base];  // (not -inf: some compilers refuse infinities, even as bit patterns)
    for (var i = lane; i < p.length; i += 256u) {{
        m = max(m, x[base + i * p.inner]);
    }}
    m = combine(lane, m, true);
    var s = 0.0;
    for (var i = lane; i < p.length; i += 256u) {{
        s += exp(x[base + i * p.inner] - m);
    }}
    s = combine(lane, s, false);
    for (var i = lane; i < p.length; i += 256u) {{
        let d = x[base + i * p.inner] - m;
        y[base + i * p.inner] = {result};
    }}""",
        )
    )


SOFTMAX = _softmax_kernel("exp(d) / s")
LOG_SOFTMAX = _softmax_kernel("d - log(s)")

LAYERNORM = Kernel(
    TEMPLATE.replace(
        "{{BINDINGS}}",
        """@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;  // x again when there is no gamma
@group(0) @binding(2) var<storage, read> beta: array<f32>;   // x again when there is no beta
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;""",
    ).replace(
        "{{BODY}}",
        """
    var s = 0.0;
    for (var i = lane; i < p.length; i += 256u) {
        s += x[base + i];
    }
    let mean = combine(lane, s, false) / f32(p.length);
    var q = 0.0;
    for (var i = lane; i < p.length; i += 256u) {
        let d = x[base + i] - mean;
        q += d * d;
    }
    let scale = inverseSqrt(combine(lane, q, false) / f32(p.length) + p.eps);
    for (var i = lane; i < p.length; i += 256u) {
        var v = (x[base + i] - mean) * scale;
        if ((p.flags & 1u) != 0u) {
            v = v * gamma[i];
        }
        if ((p.flags & 2u) != 0u) {
            v = v + beta[i];
        }
        y[base + i] = v;
    }""",
    )
)


def _softmax_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    if not args[0].shape:
        raise ShapeError("softmax needs at least one dimension")
    normalize_axis(attrs["axis"], len(args[0].shape))
    return Typed(args[0].shape, "float32", ("float32",))


def _layernorm_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    x = args[0]
    if not x.shape:
        raise ShapeError("layernorm needs at least one dimension")
    normalized = x.shape[normalize_axis(attrs["axis"], len(x.shape)) :]
    for name, arg in zip(("gamma", "beta"), args[1:], strict=False):
        trailing = normalized[len(normalized) - len(arg.shape) :]
        if len(arg.shape) > len(normalized) or any(a not in (1, b) for a, b in zip(arg.shape, trailing, strict=True)):
            raise ShapeError(f"layernorm's {name} must have shape {normalized} (or broadcast to it), not {arg.shape}")
    eps = attrs["eps"]
    if not isinstance(eps, int | float) or not eps >= 0:
        raise ShapeError(f"layernorm's eps must be a non-negative number, not {eps!r}")
    return Typed(x.shape, "float32", ("float32",) * len(args))


def _emit_softmax(kernel: Kernel) -> Any:
    def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        (x,) = args
        axis = normalize_axis(attrs["axis"], len(x.shape))
        inner = math.prod(x.shape[axis + 1 :])
        rows = math.prod(x.shape[:axis]) * inner if x.shape[axis] else 0
        params = builder.uniform(rows, x.shape[axis], 0, 0.0, max(inner, 1))
        builder.dispatch(kernel, [x.buffer, out.buffer, params], grid(rows))

    return emit


def _emit_layernorm(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    from .elementwise import copy  # the fused kernel's generator, to broadcast gamma and beta

    x = args[0]
    axis = normalize_axis(attrs["axis"], len(x.shape))
    normalized = x.shape[axis:]
    length = math.prod(normalized)
    rows = math.prod(x.shape[:axis]) if length else 0
    affine = [
        a
        if a.size == length
        else copy(builder, a, normalized, broadcast_mapping(normalized, a.shape, identity(len(normalized))))
        for a in args[1:]
    ]
    gamma = affine[0] if affine else x
    beta = affine[1] if len(affine) > 1 else x
    flags = (len(args) > 1) | ((len(args) > 2) << 1)
    params = builder.uniform(rows, length, flags, float(attrs["eps"]), 1)
    builder.dispatch(LAYERNORM, [x.buffer, gamma.buffer, beta.buffer, out.buffer, params], grid(rows))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.shape[axis] == 0:
        return x.astype(np.float64)
    e = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if x.shape[axis] == 0:
        return x.astype(np.float64)
    d = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
    return d - np.log(np.exp(d).sum(axis=axis, keepdims=True))


def _normalized(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(range(normalize_axis(axis, x.ndim), x.ndim))


def _layernorm(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
               eps: float = 1e-5, axis: int = -1) -> np.ndarray:  # fmt: skip
    axes = _normalized(x, axis)
    x = x.astype(np.float64)
    if x.size == 0:
        return x
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _spread(x: np.ndarray, axis: int) -> np.ndarray | float:
    """|x - max| along the axis: how far exp's argument strays from 0 (its error grows with it)."""
    return np.abs(x.astype(np.float64) - x.max(axis=axis, keepdims=True)) if x.size else 0.0


def _softmax_bound(result: np.ndarray, x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp's (3 + 2|x - max|) ULPs, plus the rounding of a sum over the row."""
    return (x.shape[axis] + 8 + 2 * _spread(x, axis)) * EPS32 * np.abs(result) + 1e-37


def _log_softmax_bound(result: np.ndarray, x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The sum's relative error (as softmax's) is log(sum)'s absolute one; log's own 2**-21 near 1."""
    spread = np.max(_spread(x, axis), axis=axis, keepdims=True) if x.size else 0.0
    return 2.0**-21 + (x.shape[axis] + 8 + 2 * spread) * EPS32 + 2 * EPS32 * np.abs(result)


def _layernorm_bound(result: np.ndarray, x: np.ndarray, gamma: np.ndarray | None = None,
                     beta: np.ndarray | None = None, eps: float = 1e-5, axis: int = -1) -> np.ndarray:  # fmt: skip
    """Rounding in the mean and variance (about length ULPs), amplified by cancellation.

    x - mean loses the digits x and mean share: a row far from zero relative to its spread
    (|x| / std large) keeps fewer correct digits of the result.
    """
    scale = 1.0 if gamma is None else np.abs(gamma.astype(np.float64))
    shift = 0.0 if beta is None else np.abs(beta.astype(np.float64))
    if x.size == 0:
        return np.zeros(x.shape)
    axes = _normalized(x, axis)
    x64 = x.astype(np.float64)
    std = np.sqrt(x64.var(axis=axes, keepdims=True) + eps)
    amplification = 1 + np.abs(x64).max(axis=axes, keepdims=True) / std
    length = math.prod(x.shape[a] for a in axes)
    return (length + 16) * EPS32 * amplification * (np.abs(result) + scale + shift) + 1e-6 * scale


register(
    OpSpec("softmax", (1, 1), "kernel", _softmax_infer, _softmax, _softmax_bound,
           "softmax along axis (the last by default)", defaults={"axis": -1}, emit=_emit_softmax(SOFTMAX))
)  # fmt: skip
register(
    OpSpec("log_softmax", (1, 1), "kernel", _softmax_infer, _log_softmax, _log_softmax_bound,
           "log of softmax along axis, without its underflow", defaults={"axis": -1}, emit=_emit_softmax(LOG_SOFTMAX))
)  # fmt: skip
register(
    OpSpec("layernorm", (1, 3), "kernel", _layernorm_infer, _layernorm, _layernorm_bound,
           "layernorm(x, gamma, beta) over the axes from axis on (the last by default)",
           defaults={"eps": 1e-5, "axis": -1}, emit=_emit_layernorm)
)  # fmt: skip
