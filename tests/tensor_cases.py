"""Hypothesis strategies for the tensor ops, the extra elementwise functions and logic, and the
reductions and row ops over any axes: merged into :data:`tests.op_cases.CASES`, so both workers'
op tests draw from them (negative steps, empty parts, broadcasting, negative indices, ...)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from .op_cases import Case, _values, binary, seeds, unary

DTYPES = st.sampled_from(["float32", "int32", "uint32"])
small_shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7)


def _array(draw: st.DrawFn, shape: tuple[int, ...], dtype: str | None = None, low: float = -20, high: float = 20):
    dtype = dtype or draw(DTYPES)
    return _values(shape, draw(seeds), 0 if dtype == "uint32" else low, high, dtype)


@st.composite
def reshapes(draw: st.DrawFn) -> Case:
    """Targets that split, merge, reorder the factors of, or add and drop 1s in the shape."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=1, max_side=8))
    factors = [p for size in shape for p in _primes(size)]
    factors = draw(st.permutations(factors)) if draw(st.booleans()) else factors
    cuts = sorted(draw(st.lists(st.integers(0, len(factors)), max_size=4)))
    bounds = [0, *cuts, len(factors)]
    target = [math.prod(factors[a:b]) for a, b in itertools.pairwise(bounds)]
    target = [t for t in target if t != 1 or draw(st.booleans())]
    return [_array(draw, shape)], {"shape": tuple(target)}


def _primes(n: int) -> list[int]:
    out, k = [], 2
    while n > 1:
        while n % k == 0:
            out.append(k)
            n //= k
        k += 1
    return out


@st.composite
def slices(draw: st.DrawFn) -> Case:
    """Python slices of every kind (negative steps, empty results), in the op's range() convention."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9))
    starts, ends, steps = [], [], []
    for size in shape:
        step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
        picked = slice(draw(st.integers(-size - 2, size + 2)), draw(st.integers(-size - 2, size + 2)), step)
        start, end, step = picked.indices(size)
        starts.append(start)
        ends.append(end)
        steps.append(step)
    return [_array(draw, shape)], {"starts": tuple(starts), "ends": tuple(ends), "steps": tuple(steps)}


@st.composite
def expands(draw: st.DrawFn) -> Case:
    pair = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=6))
    return [_array(draw, pair.input_shapes[0])], {"shape": pair.input_shapes[1]}


@st.composite
def concats(draw: st.DrawFn) -> Case:
    """1 to 10 arrays (more than one dispatch's bindings), some empty along the axis."""
    shape = draw(small_shapes)
    axis = draw(st.integers(0, len(shape) - 1))
    dtype = draw(DTYPES)
    arrays = []
    for _ in range(draw(st.integers(1, 10))):
        part = list(shape)
        part[axis] = draw(st.integers(0, 4))
        arrays.append(_array(draw, tuple(part), dtype))
    return arrays, {"axis": axis}


@st.composite
def pads(draw: st.DrawFn) -> Case:
    """Every mode; reflect past the edge more than once; int and float constants."""
    shape = draw(small_shapes)
    mode = draw(st.sampled_from(["constant", "reflect", "edge", "wrap"]))
    widths = tuple(draw(st.integers(0, 9)) for _ in range(2 * len(shape)))
    dtype = draw(DTYPES)
    value = draw(st.integers(0, 9)) if dtype != "float32" else draw(st.sampled_from([0.0, -1.5, 3.25]))
    return [_array(draw, shape, dtype)], {"pads": widths, "mode": mode, "value": value}


@st.composite
def gathers(draw: st.DrawFn) -> Case:
    """int32 indices of any rank (a scalar too), negative ones among them."""
    shape = draw(small_shapes)
    axis = draw(st.integers(0, len(shape) - 1))
    size = shape[axis]
    indices = hnp.arrays(np.int32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=5),
                         elements=st.integers(-size, size - 1))  # fmt: skip
    return [_array(draw, shape), draw(indices)], {"axis": axis}


@st.composite
def wheres(draw: st.DrawFn) -> Case:
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=6)).input_shapes
    cond = _values(shapes[0], draw(seeds), -1, 2, draw(st.sampled_from(["int32", "float32"])))
    dtype = draw(st.sampled_from(["float32", "int32"]))
    return [np.round(cond), _array(draw, shapes[1], dtype), _array(draw, shapes[2], dtype)], {}


@st.composite
def comparisons(draw: st.DrawFn) -> Case:
    """Small integers (as floats too), so that equal pairs are common."""
    (a, b), _ = draw(binary(-3, 3))
    return [np.round(a), np.round(b)], {}


@st.composite
def logic(draw: st.DrawFn, arity: int = 2) -> Case:
    (a, b), _ = draw(binary(-2, 3))
    return [np.round(a), np.round(b)][:arity], {}


@st.composite
def mods(draw: st.DrawFn) -> Case:
    (a, b), _ = draw(binary(-50, 50, away_from_zero=True))
    return [a, np.where(b == 0, 3, b).astype(b.dtype)], {}


@st.composite
def clips(draw: st.DrawFn) -> Case:
    (x,), _ = draw(unary(-10, 10, ints=True))
    low = draw(st.none() | st.sampled_from([-5.0, -2.5, 0.0, 3.0]))
    high = draw(st.none() | st.sampled_from([-1.0, 0.5, 4.0, 8.0]))
    return [x], {"min": low, "max": high}


@st.composite
def with_options(draw: st.DrawFn, low: float, high: float, **choices: list[float]) -> Case:
    (x,), _ = draw(unary(low, high))
    return [x], {name: draw(st.sampled_from(values)) for name, values in choices.items()}


@st.composite
def prelus(draw: st.DrawFn) -> Case:
    (x, slope), _ = draw(binary(-5, 5, ints=False))
    return [x, slope], {}


@st.composite
def reductions(
    draw: st.DrawFn, ints: bool = True, one_axis: bool = False, low: float = -100, high: float = 100, side: int = 12
) -> Case:
    """Any axis, any tuple of axes (unsorted, negative), or all; keepdims or not."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=side))
    dtype = draw(st.sampled_from(["float32", "int32"] if ints else ["float32"]))
    axes = st.integers(-len(shape), len(shape) - 1)
    several = st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)).map(
        lambda picked: tuple(a - len(shape) if a % 2 else a for a in picked)
    )
    axis = draw(st.none() | axes if one_axis else st.none() | axes | several)
    return [_values(shape, draw(seeds), low, high, dtype)], {"axis": axis, "keepdims": draw(st.booleans())}


@st.composite
def rows(draw: st.DrawFn, affine: bool = False) -> Case:
    """softmax over any axis; layernorm over the axes from any axis on, gamma and beta broadcast."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=60))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    arrays = [_values(shape, draw(seeds), -20, 20)]
    if affine:
        normalized = shape[axis % len(shape) :]
        for _ in range(draw(st.integers(0, 2))):
            kept = draw(st.integers(0, len(normalized)))
            part = tuple(s if draw(st.booleans()) else 1 for s in normalized[len(normalized) - kept :])
            arrays.append(_values(part, draw(seeds), -2, 2))
    return arrays, {"axis": axis}


UNARY_RANGES = {
    "erf": (-5, 5), "reciprocal": (0.1, 100), "sin": (-10, 10), "cos": (-10, 10), "softplus": (-30, 30),
    "softsign": (-100, 100), "mish": (-20, 20), "hard_swish": (-8, 8),
}  # fmt: skip
TENSOR_CASES: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "reshape": reshapes,
    "slice": slices,
    "expand": expands,
    "concat": concats,
    "pad": pads,
    "gather": gathers,
    "where": wheres,
    **{name: comparisons for name in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal")},
    **{name: logic for name in ("logical_and", "logical_or", "logical_xor")},
    "logical_not": lambda: logic(arity=1),
    **{name: (lambda lo=lo, hi=hi: unary(lo, hi)) for name, (lo, hi) in UNARY_RANGES.items()},
    **{name: (lambda: unary(-100, 100, ints=True)) for name in ("floor", "ceil", "round", "sign")},
    "elu": lambda: with_options(-20, 20, alpha=[1.0, 0.5, 2.0]),
    "celu": lambda: with_options(-20, 20, alpha=[1.0, 0.5, 2.0]),
    "selu": lambda: with_options(-20, 20, alpha=[1.67326319217681884765625, 1.0], gamma=[1.05070102214813232421875]),
    "leaky_relu": lambda: with_options(-50, 50, alpha=[0.01, 0.2, -0.5]),
    "hard_sigmoid": lambda: with_options(-10, 10, alpha=[0.2, 1 / 6], beta=[0.5, 0.1]),
    "clip": clips,
    "mod": mods,
    "prelu": prelus,
    **{name: reductions for name in ("sum", "mean", "max", "min")},
    "prod": lambda: reductions(ints=False, low=0.8, high=1.25, side=6),  # products well inside float32's range
    "argmax": lambda: reductions(one_axis=True),
    "argmin": lambda: reductions(one_axis=True),
    "softmax": rows,
    "log_softmax": rows,
    "layernorm": lambda: rows(affine=True),
}
