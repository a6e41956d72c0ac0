"""Row-wise ops over the last axis: ``softmax`` and ``layernorm`` (``rows.wgsl``).

``softmax(x)`` is numpy's ``exp(x - max) / sum(exp(x - max))`` along the last axis.
``layernorm(x, gamma=None, beta=None, eps=1e-5)`` is ``(x - mean) / sqrt(var + eps)``
along the last axis, times ``gamma`` plus ``beta`` (each 1-D, as long as that axis).
Both compute in float32.
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
from .graph import Node, OpSpec, Typed, register

TEMPLATE = files(__package__).joinpath("rows.wgsl").read_text()

SOFTMAX = Kernel(
    TEMPLATE.replace(
        "{{BINDINGS}}",
        """@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;""",
    ).replace(
        "{{BODY}}",
        """
    var m = x[base];  // (not -inf: some compilers refuse infinities, even as bit patterns)
    for (var i = lane; i < p.length; i += 256u) {
        m = max(m, x[base + i]);
    }
    m = combine(lane, m, true);
    var s = 0.0;
    for (var i = lane; i < p.length; i += 256u) {
        s += exp(x[base + i] - m);
    }
    s = combine(lane, s, false);
    for (var i = lane; i < p.length; i += 256u) {
        y[base + i] = exp(x[base + i] - m) / s;
    }""",
    )
)

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
    return Typed(args[0].shape, "float32", ("float32",))


def _layernorm_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    x = args[0]
    if not x.shape:
        raise ShapeError("layernorm needs at least one dimension")
    for name, arg in zip(("gamma", "beta"), args[1:], strict=False):
        if arg.shape != x.shape[-1:]:
            raise ShapeError(f"layernorm's {name} must have shape {x.shape[-1:]}, not {arg.shape}")
    eps = attrs["eps"]
    if not isinstance(eps, int | float) or not eps >= 0:
        raise ShapeError(f"layernorm's eps must be a non-negative number, not {eps!r}")
    return Typed(x.shape, "float32", ("float32",) * len(args))


def _emit_softmax(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    (x,) = args
    rows = math.prod(x.shape[:-1]) if x.shape[-1] else 0
    params = builder.uniform(rows, x.shape[-1], 0, 0.0)
    builder.dispatch(SOFTMAX, [x.buffer, out.buffer, params], grid(rows))


def _emit_layernorm(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    x = args[0]
    rows = math.prod(x.shape[:-1]) if x.shape[-1] else 0
    gamma = args[1] if len(args) > 1 else x
    beta = args[2] if len(args) > 2 else x
    flags = (len(args) > 1) | ((len(args) > 2) << 1)
    params = builder.uniform(rows, x.shape[-1], flags, float(attrs["eps"]))
    builder.dispatch(LAYERNORM, [x.buffer, gamma.buffer, beta.buffer, out.buffer, params], grid(rows))


def _softmax(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 0:
        return x.astype(np.float64)
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layernorm(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
               eps: float = 1e-5) -> np.ndarray:  # fmt: skip
    if x.shape[-1] == 0:
        return x.astype(np.float64)
    x = x.astype(np.float64)
    y = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _softmax_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    """exp's (3 + 2|x - max|) ULPs, plus the rounding of a sum over the row."""
    spread = np.abs(x.astype(np.float64) - x.max(axis=-1, keepdims=True)) if x.size else 0
    return (x.shape[-1] + 8 + 2 * spread) * EPS32 * np.abs(result) + 1e-37


def _layernorm_bound(result: np.ndarray, x: np.ndarray, gamma: np.ndarray | None = None,
                     beta: np.ndarray | None = None, eps: float = 1e-5) -> np.ndarray:  # fmt: skip
    """Rounding in the mean and variance (about length ULPs), amplified by cancellation.

    x - mean loses the digits x and mean share: a row far from zero relative to its spread
    (|x| / std large) keeps fewer correct digits of the result.
    """
    scale = 1.0 if gamma is None else np.abs(gamma.astype(np.float64))
    shift = 0.0 if beta is None else np.abs(beta.astype(np.float64))
    if x.size == 0:
        return np.zeros(x.shape)
    x64 = x.astype(np.float64)
    std = np.sqrt(x64.var(axis=-1, keepdims=True) + eps)
    amplification = 1 + np.abs(x64).max(axis=-1, keepdims=True) / std
    return (x.shape[-1] + 16) * EPS32 * amplification * (np.abs(result) + scale + shift) + 1e-6 * scale


register(
    OpSpec("softmax", (1, 1), "kernel", _softmax_infer, _softmax, _softmax_bound,
           "softmax along the last axis", emit=_emit_softmax)
)  # fmt: skip
register(
    OpSpec("layernorm", (1, 3), "kernel", _layernorm_infer, _layernorm, _layernorm_bound,
           "layernorm(x, gamma, beta) along the last axis", defaults={"eps": 1e-5}, emit=_emit_layernorm)
)  # fmt: skip
