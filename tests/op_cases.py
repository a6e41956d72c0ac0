"""Hypothesis strategies for every op: shapes (1-element, odd, off the matmul tile) and values in
each op's domain.  Both workers' op tests draw from here, so they check the same ground."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

Case = tuple[list[np.ndarray], dict[str, Any]]


def _values(shape: tuple[int, ...], seed: int, low: float, high: float, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.uniform(low, high, shape).astype(np.float32)
    return rng.integers(int(low), int(high), shape).astype(dtype)


seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=12)


@st.composite
def binary(
    draw: st.DrawFn, low: float = -10, high: float = 10, ints: bool = True, away_from_zero: bool = False
) -> Case:
    pair = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=9))
    dtype = draw(st.sampled_from(["float32", "int32"] if ints else ["float32"]))
    a = _values(pair.input_shapes[0], draw(seeds), low, high, dtype)
    b = _values(pair.input_shapes[1], draw(seeds), low, high, dtype)
    if away_from_zero:
        b = np.where(np.abs(b) < 0.5, 1, b).astype(b.dtype)
    return [a, b], {}


@st.composite
def unary(draw: st.DrawFn, low: float, high: float, ints: bool = False) -> Case:
    dtype = draw(st.sampled_from(["float32", "int32"] if ints else ["float32"]))
    return [_values(draw(shapes), draw(seeds), low, high, dtype)], {}


@st.composite
def powers(draw: st.DrawFn) -> Case:
    (a, b), _ = draw(binary(0.1, 4, ints=False))
    if draw(st.booleans()):  # negative bases with integral exponents, numpy's real results
        a, b = -a, np.round(b).astype(np.float32)
    return [a, b], {}


@st.composite
def reductions(draw: st.DrawFn, ints: bool = True) -> Case:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    dtype = draw(st.sampled_from(["float32", "int32"] if ints else ["float32"]))
    axis = draw(st.none() | st.integers(-len(shape), len(shape) - 1))
    return [_values(shape, draw(seeds), -100, 100, dtype)], {"axis": axis, "keepdims": draw(st.booleans())}


@st.composite
def rows(draw: st.DrawFn, affine: bool = False) -> Case:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=300))
    x = _values(shape, draw(seeds), -20, 20)
    arrays = [x]
    if affine:
        arrays += [_values(shape[-1:], draw(seeds), -2, 2) for _ in range(draw(st.integers(0, 2)))]
    return arrays, {}


@st.composite
def transposes(draw: st.DrawFn) -> Case:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9))
    axes = draw(st.permutations(range(len(shape))))
    return [_values(shape, draw(seeds), -5, 5)], {"axes": tuple(axes)}


@st.composite
def casts(draw: st.DrawFn) -> Case:
    (x,), _ = draw(unary(-1000, 1000, ints=True))
    target = draw(st.sampled_from(["float32", "int32"]))
    if x.dtype == np.float32 and target == "int32":
        x = np.round(x)  # float -> int truncation is exact only for integral values
    return [x], {"dtype": target}


@st.composite
def matmuls(draw: st.DrawFn) -> Case:
    m, k, n = (draw(st.integers(1, 130)) for _ in range(3))
    a_shape, b_shape = (m, k), (k, n)
    form = draw(st.sampled_from(["2d", "batched", "vector-left", "vector-right"]))
    if form == "batched":
        batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=2, max_side=3))
        a_shape, b_shape = batch.input_shapes[0] + a_shape, batch.input_shapes[1] + b_shape
        m, n = min(m, 40), min(n, 40)
        a_shape, b_shape = (*a_shape[:-2], m, k), (*b_shape[:-2], k, n)
    elif form == "vector-left":
        a_shape = (k,)
    elif form == "vector-right":
        b_shape = (k,)
    return [_values(a_shape, draw(seeds), -1, 1), _values(b_shape, draw(seeds), -1, 1)], {}


@st.composite
def convolutions(draw: st.DrawFn) -> Case:
    n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    kh, kw = draw(st.integers(1, h + 2 * ph)), draw(st.integers(1, w + 2 * pw))
    options = {"stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))), "padding": (ph, pw)}
    arrays = [_values((n, c, h, w), draw(seeds), -1, 1), _values((f, c, kh, kw), draw(seeds), -1, 1)]
    if draw(st.booleans()):
        arrays.append(_values((f,), draw(seeds), -1, 1))
    return arrays, options


@st.composite
def windows(draw: st.DrawFn, rank: int, dilated: bool = True) -> tuple[tuple[int, ...], dict[str, Any]]:
    """Spatial sizes and a window that fits them: kernel, strides (some past the kernel), pads, dilations."""
    axes = []
    for _ in range(rank):
        k, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)) if dilated else 1
        extent = d * (k - 1) + 1
        begin, end = draw(st.integers(0, extent - 1)), draw(st.integers(0, extent - 1))
        size = draw(st.integers(max(1, extent - begin - end), 12))
        axes.append((size, k, draw(st.integers(1, 5)), begin, end, d))
    sizes, kernel, strides, begins, ends, dilations = zip(*axes, strict=True)
    return sizes, {"kernel": kernel, "strides": strides, "pads": begins + ends, "dilations": dilations}


@st.composite
def convs(draw: st.DrawFn) -> Case:
    """1-D to 3-D convs with groups (depthwise among them), dilations, asymmetric pads, strides past the kernel."""
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    sizes, options = draw(windows(rank))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c, f = groups * draw(st.integers(1, 3)), groups * draw(st.sampled_from([1, 2, 5, 16, 20]))
    if draw(st.booleans()):  # depthwise
        groups, c, f = c, c, c * draw(st.integers(1, 2))
    x = _values((draw(st.integers(1, 2)), c, *sizes), draw(seeds), -1, 1)
    arrays = [x, _values((f, c // groups, *options.pop("kernel")), draw(seeds), -1, 1)]
    if draw(st.booleans()):
        arrays.append(_values((f,), draw(seeds), -1, 1))
    return arrays, {**options, "groups": groups}


@st.composite
def pools(draw: st.DrawFn, average: bool = False) -> Case:
    """1-D to 3-D windows, with ceil_mode (and count_include_pad for averages); maxpool of ints too."""
    sizes, options = draw(windows(draw(st.sampled_from([1, 2, 2, 3]))))
    options["ceil_mode"] = draw(st.booleans())
    if average:
        options["count_include_pad"] = draw(st.booleans())
    dtype = "float32" if average else draw(st.sampled_from(["float32", "int32"]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes)
    return [_values(shape, draw(seeds), -100, 100, dtype)], options


@st.composite
def global_pools(draw: st.DrawFn, ints: bool = False) -> Case:
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=5, min_side=1, max_side=9))
    dtype = draw(st.sampled_from(["float32", "int32"] if ints else ["float32"]))
    return [_values(shape, draw(seeds), -100, 100, dtype)], {}


@st.composite
def lrns(draw: st.DrawFn) -> Case:
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9))
    options = {
        "size": draw(st.integers(1, 6)),
        "alpha": draw(st.sampled_from([1e-4, 0.01, 0.5])),
        "beta": draw(st.sampled_from([0.75, 0.5, 1.0, 2.0])),
        "bias": draw(st.sampled_from([1.0, 2.0, 0.5])),
    }
    return [_values(shape, draw(seeds), -3, 3)], options


#: For each op, how to draw an argument list and options it accepts.
CASES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "add": lambda: binary(),
    "sub": lambda: binary(),
    "mul": lambda: binary(),
    "div": lambda: binary(away_from_zero=True),
    "pow": powers,
    "maximum": lambda: binary(),
    "minimum": lambda: binary(),
    "neg": lambda: unary(-100, 100, ints=True),
    "abs": lambda: unary(-100, 100, ints=True),
    "relu": lambda: unary(-100, 100, ints=True),
    "exp": lambda: unary(-80, 80),
    "log": lambda: unary(1e-3, 1e4),
    "sqrt": lambda: unary(0, 1e4),
    "tanh": lambda: unary(-30, 30),
    "sigmoid": lambda: unary(-60, 60),
    "gelu": lambda: unary(-30, 30),
    "cast": casts,
    "transpose": transposes,
    "sum": reductions,
    "mean": reductions,
    "max": reductions,
    "min": reductions,
    "argmax": reductions,
    "softmax": rows,
    "layernorm": lambda: rows(affine=True),
    "matmul": matmuls,
    "conv2d": convolutions,
    "conv": convs,
    "maxpool": pools,
    "avgpool": lambda: pools(average=True),
    "global_avgpool": global_pools,
    "global_maxpool": lambda: global_pools(ints=True),
    "lrn": lrns,
}

from .tensor_cases import TENSOR_CASES  # noqa: E402  (tensor ops, more functions, reductions over any axes)

CASES.update(TENSOR_CASES)
