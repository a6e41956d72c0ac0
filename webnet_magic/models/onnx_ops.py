"""Each supported ONNX op as ops of the graph (see :mod:`webnet_magic.ops`).

ONNX's conveniences are resolved here, on the host, so device ops get explicit
attributes: negative axes made positive, ``-1`` and ``0`` in reshape targets
filled in, ``auto_pad`` turned into pads, optional inputs given their defaults,
attributes that moved to inputs across opsets (``axes``, ``split``, ``pads``, Clip's
bounds) read from wherever this opset keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..ops import Node
from .lowering import Host, Lowering, Value, handles, shape_of
from .source import ModelError, OnnxNode

Args = list[Value | None]

# -- elementwise ---------------------------------------------------------------------------------

BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
    "Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or",
}  # fmt: skip
UNARY = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Neg": "neg", "Abs": "abs", "Erf": "erf", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Reciprocal": "reciprocal", "Sign": "sign", "Sin": "sin", "Cos": "cos", "Softplus": "softplus",
    "Softsign": "softsign", "Not": "logical_not", "HardSwish": "hard_swish",
}  # fmt: skip
#: Unary ops with float attributes: ONNX attribute -> op option, with ONNX's default.
UNARY_WITH = {
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Elu": ("elu", {"alpha": 1.0}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "Selu": ("selu", {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}),
    "Celu": ("celu", {"alpha": 1.0}),
}
VARIADIC = {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}


@handles(*BINARY)
def _binary(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    return cx.elementwise(BINARY[n.op], n, xs[:2])


@handles(*UNARY)
def _unary(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    return cx.apply(UNARY[n.op], [cx.device(xs[0], n.inputs[0])], n)  # type: ignore[arg-type]


@handles(*UNARY_WITH)
def _unary_with(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    op, defaults = UNARY_WITH[n.op]
    options = {k: float(n.attrs.get(k, v)) for k, v in defaults.items()}
    return cx.apply(op, [cx.device(xs[0], n.inputs[0])], n, **options)  # type: ignore[arg-type]


@handles(*VARIADIC)
def _variadic(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    present = [x for x in xs if x is not None]
    result: Value = present[0]
    for x in present[1:]:
        result = cx.elementwise(VARIADIC[n.op], n, [result, x])
    if n.op == "Mean" and len(present) > 1:
        result = cx.elementwise("div", n, [result, Host(np.asarray(float(len(present)), np.float32))])
    return cx.device(result, n.inputs[0])


@handles("PRelu")
def _prelu(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """A slope of one value per channel, as exporters write it for (N, C, ...) inputs, broadcasts along axis 1."""
    x, slope = xs[0], xs[1]
    rank, shape = len(shape_of(x)), shape_of(slope)  # type: ignore[arg-type]
    if rank > 2 and len(shape) == 1 and shape[0] == shape_of(x)[1] != 1:  # type: ignore[arg-type]
        slope = cx.apply("reshape", [cx.device(slope, n.inputs[1])], n, shape=(shape[0],) + (1,) * (rank - 2))  # type: ignore[arg-type]
    return cx.elementwise("prelu", n, [x, slope])


@handles("Xor")
def _xor(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """Booleans travel as int32 0/1, so exclusive or is inequality."""
    return cx.elementwise("not_equal", n, xs[:2])


@handles("Mod")
def _mod(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """``fmod=1``: the remainder takes the dividend's sign (C's fmod); ``fmod=0``: the divisor's (Python's).

    The ``mod`` op is C's fmod for floats and Python's % for integers; the other convention is that
    remainder moved by one divisor where it is nonzero and its sign is not the wanted one.
    """
    a, b = (cx.device(x, name) for x, name in zip(xs[:2], n.inputs[:2], strict=True))  # type: ignore[arg-type]
    r = cx.apply("mod", [a, b], n)
    floats = r.dtype == "float32"
    if bool(n.attrs.get("fmod", 0)) != floats:  # float with fmod=0, or integer with fmod=1
        zero = Host(np.asarray(0, r.dtype))
        wanted = b if floats else a  # whose sign the remainder must have
        moved = cx.elementwise("add" if floats else "sub", n, [r, b])
        wrong = cx.apply(
            "logical_and",
            [
                cx.elementwise("not_equal", n, [r, zero]),
                cx.elementwise(
                    "not_equal", n, [cx.elementwise("less", n, [r, zero]), cx.elementwise("less", n, [wanted, zero])]
                ),
            ],
            n,
        )
        r = cx.apply("where", [wrong, moved, r], n)
    return r


@handles("Where")
def _where(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    return cx.elementwise("where", n, xs[:3])


@handles("Identity", "Dropout")
def _identity(cx: Lowering, n: OnnxNode, xs: Args) -> Value | list[Value]:
    """Inference: Dropout passes its input through, and its mask (if asked for) keeps everything."""
    if n.op == "Dropout" and len(xs) > 2 and xs[2] is not None and bool(cx.host(xs[2], n, "training mode")):
        raise ModelError(f"{n.describe()} is in training mode; only inference runs here")
    if n.op == "Dropout" and len(n.outputs) > 1 and n.outputs[1]:
        return [xs[0], Host(np.ones(shape_of(xs[0]), bool))]  # type: ignore[list-item, arg-type]
    return xs[0]  # type: ignore[return-value]


@handles("Cast")
def _cast(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    from .source import ELEM_TYPES

    target = ELEM_TYPES.get(n.attrs["to"])
    x = cx.device(xs[0], n.inputs[0])
    if target == "bool":
        return cx.elementwise("not_equal", n, [x, Host(np.asarray(0, x.dtype))])
    if target in ("float32", "float64", "float16"):
        return cx.apply("cast", [x], n, dtype="float32")
    if target in ("int8", "int16", "int32", "int64", "uint8", "uint16"):
        return cx.apply("cast", [x], n, dtype="int32")
    if target in ("uint32", "uint64"):
        return cx.apply("cast", [x], n, dtype="uint32")
    raise ModelError(f"{n.describe()} casts to ONNX type {n.attrs['to']}, which cannot run here")


@handles("Clip")
def _clip(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    if cx.opset < 11:
        low, high = n.attrs.get("min"), n.attrs.get("max")
    else:
        low = None if len(xs) < 2 or xs[1] is None else float(cx.host(xs[1], n, "minimum"))
        high = None if len(xs) < 3 or xs[2] is None else float(cx.host(xs[2], n, "maximum"))
    return cx.apply("clip", [cx.device(xs[0], n.inputs[0])], n, min=low, max=high)


@handles("Gelu")
def _gelu(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    x = cx.device(xs[0], n.inputs[0])
    if n.attrs.get("approximate", "none") == "tanh":
        return cx.apply("gelu", [x], n)
    inner = cx.apply("erf", [cx.elementwise("mul", n, [x, _f(1 / math.sqrt(2))])], n)
    return cx.elementwise("mul", n, [cx.elementwise("mul", n, [x, _f(0.5)]), cx.elementwise("add", n, [inner, _f(1)])])


def _f(value: float) -> Host:
    return Host(np.asarray(value, np.float32))


# -- shapes and indexing ---------------------------------------------------------------------------


def _axes(cx: Lowering, n: OnnxNode, xs: Args, rank: int, position: int = 1) -> tuple[int, ...] | None:
    """The ``axes`` of a node, from its attribute (older opsets) or its input; None if not given."""
    if "axes" in n.attrs:
        raw = list(n.attrs["axes"])
    elif len(xs) > position and xs[position] is not None:
        raw = [int(a) for a in cx.host(xs[position], n, "axes").reshape(-1)]
    else:
        return None
    for a in raw:
        if not -rank <= a < rank:
            raise ModelError(f"{n.describe()}: axis {a} is out of range for rank {rank}")
    return tuple(a % rank for a in raw)


def _reshape(cx: Lowering, n: OnnxNode, x: Value, shape: Sequence[int]) -> Value:
    return cx.apply("reshape", [cx.device(x, n.inputs[0])], n, shape=tuple(int(s) for s in shape))


@handles("Reshape")
def _reshape_node(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    source = shape_of(xs[0])  # type: ignore[arg-type]
    target = [int(s) for s in cx.host(xs[1], n, "shape").reshape(-1)]
    if not n.attrs.get("allowzero", 0):
        target = [source[i] if s == 0 else s for i, s in enumerate(target)]
    if target.count(-1) > 1:
        raise ModelError(f"{n.describe()}: a shape may have one -1, not {target}")
    if -1 in target:
        known = math.prod(s for s in target if s != -1)
        target[target.index(-1)] = math.prod(source) // known if known else 0
    if math.prod(target) != math.prod(source):
        raise ModelError(f"{n.describe()}: cannot reshape {source} into {tuple(target)}")
    return _reshape(cx, n, xs[0], target)  # type: ignore[arg-type]


@handles("Flatten")
def _flatten(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    shape = shape_of(xs[0])  # type: ignore[arg-type]
    axis = n.attrs.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    return _reshape(cx, n, xs[0], (math.prod(shape[:axis]), math.prod(shape[axis:])))  # type: ignore[arg-type]


@handles("Squeeze")
def _squeeze(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    shape = shape_of(xs[0])  # type: ignore[arg-type]
    axes = _axes(cx, n, xs, len(shape))
    axes = tuple(i for i, s in enumerate(shape) if s == 1) if axes is None else axes
    if any(shape[a] != 1 for a in axes):
        raise ModelError(f"{n.describe()}: cannot squeeze axes {axes} of shape {shape}")
    return _reshape(cx, n, xs[0], [s for i, s in enumerate(shape) if i not in axes])  # type: ignore[arg-type]


@handles("Unsqueeze")
def _unsqueeze(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    shape = list(shape_of(xs[0]))  # type: ignore[arg-type]
    count = len(n.attrs["axes"]) if "axes" in n.attrs else cx.host(xs[1] if len(xs) > 1 else None, n, "axes").size
    for a in sorted(_axes(cx, n, xs, len(shape) + count) or ()):
        shape.insert(a, 1)
    return _reshape(cx, n, xs[0], shape)  # type: ignore[arg-type]


@handles("Transpose")
def _transpose(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    rank = len(shape_of(xs[0]))  # type: ignore[arg-type]
    perm = tuple(n.attrs.get("perm", range(rank - 1, -1, -1)))
    return cx.apply("transpose", [cx.device(xs[0], n.inputs[0])], n, axes=perm)


@handles("Concat")
def _concat(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    present = [x for x in xs if x is not None and math.prod(shape_of(x)) > 0] or [xs[0]]
    rank = len(shape_of(present[0]))  # type: ignore[arg-type]
    axis = n.attrs["axis"] % rank
    args = [cx.device(x, f"{n.outputs[0]}:{i}") for i, x in enumerate(present)]  # type: ignore[arg-type]
    return args[0] if len(args) == 1 else cx.apply("concat", args, n, axis=axis)


@handles("Split")
def _split(cx: Lowering, n: OnnxNode, xs: Args) -> list[Value]:
    shape = shape_of(xs[0])  # type: ignore[arg-type]
    axis = n.attrs.get("axis", 0) % len(shape)
    if "split" in n.attrs:
        sizes = list(n.attrs["split"])
    elif len(xs) > 1 and xs[1] is not None:
        sizes = [int(s) for s in cx.host(xs[1], n, "split sizes")]
    else:
        parts = n.attrs.get("num_outputs", len(n.outputs))
        step = -(-shape[axis] // parts)
        sizes = [min(step, shape[axis] - i * step) for i in range(parts)]
    if sum(sizes) != shape[axis]:
        raise ModelError(f"{n.describe()}: split sizes {sizes} do not add up to {shape[axis]}")
    x, start, outs = cx.device(xs[0], n.inputs[0]), 0, []  # type: ignore[arg-type]
    for size in sizes:
        outs.append(_slice(cx, n, x, {axis: (start, start + size, 1)}))
        start += size
    return outs


def _slice(cx: Lowering, n: OnnxNode, x: Node, ranges: dict[int, tuple[int, int, int]]) -> Node:
    """``x`` sliced along some axes, each (start, stop, step) as Python's ``slice.indices`` gives them."""
    full = [ranges.get(a, (0, s, 1)) for a, s in enumerate(x.shape)]
    if all(r == (0, s, 1) for r, s in zip(full, x.shape, strict=True)):
        return x
    return cx.apply("slice", [x], n, starts=tuple(r[0] for r in full), ends=tuple(r[1] for r in full),
                    steps=tuple(r[2] for r in full))  # fmt: skip


@handles("Slice")
def _slice_node(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    shape = shape_of(xs[0])  # type: ignore[arg-type]
    if cx.opset < 10:
        starts, ends = list(n.attrs["starts"]), list(n.attrs["ends"])
        axes = list(n.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in cx.host(xs[1], n, "starts")]
        ends = [int(v) for v in cx.host(xs[2], n, "ends")]
        given = _axes(cx, n, xs, len(shape), position=3)
        axes = list(given) if given is not None else list(range(len(starts)))
        steps = [int(v) for v in cx.host(xs[4], n, "steps")] if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    ranges = {}
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step == 0:
            raise ModelError(f"{n.describe()}: a slice step cannot be 0")
        ranges[axis % len(shape)] = slice(start, end, step).indices(shape[axis % len(shape)])
    return _slice(cx, n, cx.device(xs[0], n.inputs[0]), ranges)  # type: ignore[arg-type]


@handles("Gather")
def _gather(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    rank = len(shape_of(xs[0]))  # type: ignore[arg-type]
    axis = n.attrs.get("axis", 0) % rank
    data = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    indices = xs[1]
    if isinstance(indices, Host):
        limit = data.shape[axis]
        if indices.array.size and not (-limit <= indices.array.min() and indices.array.max() < limit):
            raise ModelError(f"{n.describe()}: indices out of range for axis {axis} of length {limit}")
        indices = Host(indices.array.astype(np.int32))
    return cx.apply("gather", [data, cx.device(indices, n.inputs[1])], n, axis=axis)  # type: ignore[arg-type]


@handles("Expand")
def _expand(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    shape = tuple(int(s) for s in cx.host(xs[1], n, "shape"))
    target = tuple(np.broadcast_shapes(shape_of(xs[0]), shape))  # type: ignore[arg-type]
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    return x if target == x.shape else cx.apply("expand", [x], n, shape=target)


@handles("Tile")
def _tile(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """As a broadcast: (a, b) tiled (r, s) is (1, a, 1, b) expanded to (r, a, s, b), then reshaped."""
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    repeats = [int(r) for r in cx.host(xs[1], n, "repeats")]
    spread = [d for s in x.shape for d in (1, s)]
    wide = [d for r, s in zip(repeats, x.shape, strict=True) for d in (r, s)]
    grown = cx.apply("expand", [cx.apply("reshape", [x], n, shape=tuple(spread))], n, shape=tuple(wide))
    return cx.apply("reshape", [grown], n, shape=tuple(r * s for r, s in zip(repeats, x.shape, strict=True)))


@handles("Pad")
def _pad(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    rank = len(shape_of(xs[0]))  # type: ignore[arg-type]
    if cx.opset < 11:
        pads, value = list(n.attrs["pads"]), float(n.attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in cx.host(xs[1], n, "pads")]
        value = float(cx.host(xs[2], n, "constant value").reshape(())) if len(xs) > 2 and xs[2] is not None else 0.0
        axes = _axes(cx, n, xs, rank, position=3)
        if axes is not None:
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                full[a], full[rank + a] = pads[k], pads[len(axes) + k]
            pads = full
    mode = n.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ModelError(f"{n.describe()}: pad mode {mode!r} is not supported (constant, reflect, edge, wrap)")
    if any(p < 0 for p in pads):
        raise ModelError(f"{n.describe()}: negative pads (cropping) are not supported; use Slice")
    return cx.apply("pad", [cx.device(xs[0], n.inputs[0])], n, pads=tuple(pads), mode=mode, value=value)  # type: ignore[arg-type]
