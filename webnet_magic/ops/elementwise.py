"""Elementwise ops with numpy broadcasting, and the fused kernel that runs them.

``add sub mul div maximum minimum pow`` and ``neg abs exp log sqrt tanh sigmoid relu
gelu`` (plus ``cast`` and the ``transpose`` view; more in :mod:`.functions` and
:mod:`.logic`, views in :mod:`.tensor`) never get a kernel of their own: :func:`fuse`
writes one WGSL kernel (from ``elementwise.wgsl``) for a whole tree of them, reading
each materialized input at an affine offset (:mod:`.indexing`) that encodes
broadcasting (stride 0), transposition (permuted strides) and slicing (an offset,
strides that may be negative).

Dtypes: the result of ``add sub mul maximum minimum`` is float32 if either side is,
uint32 if both are, else int32 (integer arithmetic wraps, as numpy's int32 does).
``div pow exp log sqrt tanh sigmoid gelu`` compute in float32.  ``neg abs relu``
keep their dtype.  Tolerances follow WGSL's stated accuracy for each builtin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import DtypeError, ShapeError
from ..program import Kernel
from .compiler import Builder, Value, grid
from .dtypes import EPS32, WGSL_TYPES
from .graph import OPS, Node, OpSpec, Shape, Typed, broadcast, register
from .indexing import Mapping as IndexMapping
from .indexing import broadcast as broadcast_mapping
from .indexing import contiguous, identity, offsets, permute

TEMPLATE = files(__package__).joinpath("elementwise.wgsl").read_text()

# -- typing -----------------------------------------------------------------------------------


def promote(args: Sequence[Node]) -> str:
    """float32 if any side is float, else the arrays' integer type; constants defer to arrays.

    int32 with uint32 is refused: numpy widens that to int64, which WGSL does not have.
    """
    arrays = [a for a in args if a.op != "const"] or list(args)
    dtypes = {a.dtype for a in arrays} | {a.dtype for a in args if a.op == "const" and a.dtype == "float32"}
    if "float32" in dtypes:
        return "float32"
    if dtypes == {"int32", "uint32"}:
        raise DtypeError(
            "int32 with uint32: numpy would widen to int64, which WGSL lacks; cast one, e.g. cast(x, dtype='int32')"
        )
    return dtypes.pop()


def same_type(float_only: bool) -> Callable[[Sequence[Node], Mapping[str, Any]], Typed]:
    """Typing of arithmetic: the broadcast shape, at the arguments' common dtype (or float32)."""

    def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        shape = broadcast([a.shape for a in args])
        dtype = "float32" if float_only else promote(args)
        return Typed(shape, dtype, (dtype,) * len(args))

    return infer


def rounding(result: np.ndarray, *args: np.ndarray, **attrs: Any) -> np.ndarray:
    """One rounding of the result (and of any product the device fuses into an FMA)."""
    return 2 * EPS32 * np.abs(result.astype(np.float64))


def exact(result: np.ndarray, *args: np.ndarray, **attrs: Any) -> float:
    return 0.0


def ulps(count: Callable[..., np.ndarray | float]) -> Callable[..., np.ndarray]:
    """A bound of ``count(*args)`` units in the last place of the result."""

    def bound(result: np.ndarray, *args: np.ndarray, **attrs: Any) -> np.ndarray:
        x = [np.asarray(a, np.float64) for a in args]
        return np.asarray(count(*x)) * EPS32 * np.abs(result.astype(np.float64)) + 1e-37

    return bound


def f64(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """numpy's answer computed in float64 (the true value the float32 device is compared with)."""
    return lambda *a, **attrs: fn(*(np.asarray(x, np.float64) for x in a), **attrs)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def _relu_wgsl(a: str, dtype: str) -> str:
    return {"float32": f"max({a}, 0.0)", "int32": f"max({a}, 0i)", "uint32": a}[dtype]


def _pow_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """WGSL's pow is exp2(b * log2(a)): its error grows with the size of that product."""
    return 8 + 4 * np.abs(b * np.log2(np.maximum(np.abs(a), 1e-30)))


def _log_bound(result: np.ndarray, a: np.ndarray) -> np.ndarray:
    """WGSL: 3 ULP, but an absolute 2**-21 for arguments in [0.5, 2] (where log is near 0)."""
    return np.maximum(3 * EPS32 * np.abs(result), 2.0**-21)


def _tanh_bound(result: np.ndarray, a: np.ndarray) -> np.ndarray:
    return 4e-6 + 8 * EPS32 * np.abs(result)


def _sigmoid_bound(result: np.ndarray, a: np.ndarray) -> np.ndarray:
    """exp's (3 + 2|x|)-ULP error, carried through 1 / (1 + e)."""
    return 1e-7 + (4 + 2 * np.abs(a.astype(np.float64))) * EPS32 * np.abs(result)


def _gelu_bound(result: np.ndarray, a: np.ndarray) -> np.ndarray:
    """tanh's absolute error, scaled by the 0.5 x in front of it."""
    return 1e-7 + 4e-6 * np.abs(a.astype(np.float64)) + 8 * EPS32 * np.abs(result)


_exp_bound = ulps(lambda x: 3 + 2 * np.abs(x))
three_ulps = ulps(lambda *x: 3.0)

#: (name, arity, WGSL expression, numpy reference, float only?, tolerance, summary)
TABLE: list[tuple[str, int, Callable[..., str], Callable[..., Any], bool, Callable[..., Any], str]] = [
    ("add", 2, lambda a, b, dtype: f"({a} + {b})", np.add, False, rounding, "a + b"),
    ("sub", 2, lambda a, b, dtype: f"({a} - {b})", np.subtract, False, rounding, "a - b"),
    ("mul", 2, lambda a, b, dtype: f"({a} * {b})", np.multiply, False, rounding, "a * b"),
    ("div", 2, lambda a, b, dtype: f"({a} / {b})", f64(np.divide), True, three_ulps, "a / b (float32)"),
    ("pow", 2, lambda a, b, dtype: f"wn_pow({a}, {b})", f64(np.power), True, ulps(_pow_ulps), "a ** b (float32)"),
    ("maximum", 2, lambda a, b, dtype: f"max({a}, {b})", np.maximum, False, exact, "the larger of a and b"),
    ("minimum", 2, lambda a, b, dtype: f"min({a}, {b})", np.minimum, False, exact, "the smaller of a and b"),
    ("neg", 1, lambda a, dtype: f"(0u - {a})" if dtype == "uint32" else f"(-{a})", np.negative, False, exact, "-a"),
    ("abs", 1, lambda a, dtype: f"abs({a})", np.abs, False, exact, "|a|"),
    ("relu", 1, _relu_wgsl, lambda a: np.maximum(a, 0), False, exact, "max(a, 0)"),
    ("exp", 1, lambda a, dtype: f"exp({a})", f64(np.exp), True, _exp_bound, "e ** a"),
    ("log", 1, lambda a, dtype: f"log({a})", f64(np.log), True, _log_bound, "natural logarithm"),
    ("sqrt", 1, lambda a, dtype: f"sqrt({a})", f64(np.sqrt), True, three_ulps, "square root"),
    ("tanh", 1, lambda a, dtype: f"wn_tanh({a})", f64(np.tanh), True, _tanh_bound, "hyperbolic tangent"),
    ("sigmoid", 1, lambda a, dtype: f"wn_sigmoid({a})", f64(_sigmoid), True, _sigmoid_bound, "1 / (1 + e ** -a)"),
    ("gelu", 1, lambda a, dtype: f"wn_gelu({a})", f64(_gelu), True, _gelu_bound, "GELU (tanh approximation)"),
]
for _name, _arity, _wgsl, _reference, _float_only, _bound, _summary in TABLE:
    register(
        OpSpec(_name, (_arity, _arity), "elementwise", same_type(_float_only), _reference, _bound, _summary, wgsl=_wgsl)
    )


def _cast_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    return Typed(args[0].shape, attrs["dtype"], (args[0].dtype,))


register(
    OpSpec(
        "cast", (1, 1), "elementwise", _cast_infer, lambda a, dtype: a.astype(dtype), exact,
        "a as another dtype (float32, int32, uint32)", defaults={"dtype": "float32"},
        wgsl=lambda a, dtype: f"{WGSL_TYPES[dtype]}({a})",
    )
)  # fmt: skip


def _transpose_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    shape = args[0].shape
    axes = _axes(attrs["axes"], len(shape))
    return Typed(tuple(shape[a] for a in axes), args[0].dtype, (args[0].dtype,))


def _axes(axes: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(reversed(range(ndim)))
    valid = isinstance(axes, Sequence) and all(type(a) is int and -ndim <= a < ndim for a in axes)
    if not valid or sorted(a % ndim for a in axes) != list(range(ndim)):
        raise ShapeError(f"axes {axes!r} are not a permutation of {ndim} dimensions")
    return tuple(a % ndim for a in axes)


register(
    OpSpec(
        "transpose", (1, 1), "view", _transpose_infer,
        lambda a, axes: np.transpose(a, axes), exact,
        "a with its axes reversed, or permuted by axes=(...)", defaults={"axes": None},
        view=lambda node, mapping: permute(mapping, _axes(node.options["axes"], len(node.shape))),
    )
)  # fmt: skip

# -- the fused kernel -------------------------------------------------------------------------


def literal(value: float | int, dtype: str) -> str:
    """A WGSL expression for the constant: exact, and safe wherever an operand may stand."""
    if dtype == "float32":  # the float32's own bits: no rounding or range surprises in the compiler
        return f"bitcast<f32>({int(np.float32(value).view(np.uint32)):#010x}u)"
    if dtype == "uint32":
        return f"{int(value)}u"
    if value == -(2**31):  # 2147483648i alone is out of range, so -2147483648i is too
        return "(-2147483647i - 1i)"
    return f"({int(value)}i)" if value < 0 else f"{int(value)}i"


class _Kernel:
    """The pieces of one fused kernel while its expression is generated."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.bindings: dict[int, int] = {}  # buffer -> k: one binding per buffer, however it is read
        self.values: list[Value] = []
        self.loads: dict[tuple[int, tuple[int, ...], int], str] = {}  # (buffer, coefficients, base) -> expression
        self.strided: list[tuple[tuple[int, ...], int]] = []  # per offset variable: (coefficients, base)
        self.infinities: list[float] = []  # constants no WGSL literal can hold: read from the uniform words

    def infinity(self, value: float) -> str:
        """An infinite constant, as the variable ``k{j}`` (compilers refuse infinite literals, even as bits)."""
        self.infinities.append(value)
        return f"k{len(self.infinities) - 1}"

    def load(self, value: Value, mapping: IndexMapping) -> str:
        """An expression reading ``value`` at the element the result's index ``i`` maps to."""
        coefs, base = offsets(value.shape, mapping, len(self.shape))
        key = (value.buffer, coefs, base)
        if key not in self.loads:
            if value.buffer not in self.bindings:
                self.bindings[value.buffer] = len(self.values)
                self.values.append(value)
            k = self.bindings[value.buffer]
            if base == 0 and (value.size == 1 or not any(coefs)):
                offset = "0u"
            elif base == 0 and value.size == math.prod(self.shape) and coefs == contiguous(self.shape):
                offset = "i"
            else:
                offset = f"o{len(self.strided)}"
                self.strided.append((coefs, base))
            self.loads[key] = f"in{k}[{offset}]"
        return self.loads[key]

    def dispatch(self, builder: Builder, expr: str, out: Value) -> None:
        """The kernel writing ``expr`` at every element of ``out``."""
        ndim = len(self.shape)
        # Uniform words: the element count, the result's shape, each strided load's coefficients
        # and base (two's complement: the kernel's u32 arithmetic wraps), then infinite constants.
        words: list[int | float] = [out.size, *self.shape]
        index: list[str] = []
        if self.strided:
            index.append("    var rem = i;")
            first = 1 + ndim
            for k, (coefs, base) in enumerate(self.strided):
                index.append(f"    var o{k} = u({first + k * (ndim + 1) + ndim}u);")
                words += [c & 0xFFFFFFFF for c in coefs] + [base & 0xFFFFFFFF]
            for dim in reversed(range(ndim)):
                index.append(f"    let c{dim} = rem % u({1 + dim}u);")
                index.append(f"    rem = rem / u({1 + dim}u);")
                for k in range(len(self.strided)):
                    index.append(f"    o{k} = o{k} + c{dim} * u({first + k * (ndim + 1) + dim}u);")
        for j, value in enumerate(self.infinities):
            index.append(f"    let k{j} = bitcast<f32>(u({len(words)}u));")
            words.append(value)
        bindings = [
            f"@group(0) @binding({k}) var<storage, read> in{k}: array<{WGSL_TYPES[v.dtype]}>;"
            for k, v in enumerate(self.values)
        ]
        n = len(self.values)
        source = (
            TEMPLATE.replace("{{BINDINGS}}", "\n".join(bindings))
            .replace("{{OUT}}", str(n))
            .replace("{{OUT_TYPE}}", WGSL_TYPES[out.dtype])
            .replace("{{PARAMS}}", str(n + 1))
            .replace("{{WORDS}}", str(max(1, -(-len(words) // 4))))
            .replace("{{INDEX}}", "\n".join(index))
            .replace("{{EXPR}}", expr)
        )
        params = builder.uniform(*words)
        builder.dispatch(
            Kernel(source), [v.buffer for v in self.values] + [out.buffer, params], grid(-(-out.size // 256))
        )


def fuse(builder: Builder, root: Node, values: Mapping[int, Value], out: Value) -> None:
    """Emit one kernel computing ``root`` from the materialized ``values`` below it."""
    kernel = _Kernel(root.shape)
    expr = _expression(kernel, root, identity(len(root.shape)), values, top=True)
    kernel.dispatch(builder, expr, out)


def copy(builder: Builder, value: Value, shape: Shape | None = None, mapping: IndexMapping | None = None) -> Value:
    """A new buffer of ``shape`` holding ``value`` read through ``mapping`` (a view made real);
    by default an exact copy."""
    shape = value.shape if shape is None else shape
    out = builder.scratch(shape, value.dtype)
    kernel = _Kernel(shape)
    kernel.dispatch(builder, kernel.load(value, identity(len(shape)) if mapping is None else mapping), out)
    return out


def _expression(
    kernel: _Kernel,
    node: Node,
    mapping: IndexMapping,
    values: Mapping[int, Value],
    top: bool = False,
) -> str:
    if not top and id(node) in values:
        return kernel.load(values[id(node)], mapping)
    if node.op == "const":
        if node.dtype == "float32" and math.isinf(node.value):  # type: ignore[arg-type]
            return kernel.infinity(node.value)  # type: ignore[arg-type]
        return literal(node.value, node.dtype)  # type: ignore[arg-type]
    spec = OPS[node.op]
    if spec.view is not None:
        inner = spec.view(node, mapping)
        assert inner is not None, f"{node.op} cannot be folded here; the compiler gives its argument a buffer"
        return _expression(kernel, node.args[0], inner, values)
    parts = [_expression(kernel, arg, broadcast_mapping(node.shape, arg.shape, mapping), values) for arg in node.args]
    assert spec.wgsl is not None, node.op
    options = {k: v for k, v in node.options.items() if k != "dtype"}
    return spec.wgsl(*parts, dtype=node.dtype, **options)


# -- float16 on the wire ------------------------------------------------------------------------

WIDEN = Kernel(files(__package__).joinpath("widen.wgsl").read_text())


def widen(builder: Builder, value: Value) -> Value:
    """A float16 input (half the bytes on the wire) as float32 on the device."""
    out = builder.scratch(value.shape, "float32")
    pairs = -(-value.size // 2)
    params = builder.uniform(value.size)
    builder.dispatch(WIDEN, [value.buffer, out.buffer, params], grid(-(-pairs // 256)))
    return out


NARROW = Kernel(files(__package__).joinpath("narrow.wgsl").read_text())


def narrow(builder: Builder, value: Value) -> Value:
    """A float32 result as float16 for the trip back (``--wire f16``)."""
    out = builder.scratch(value.shape, "float16")
    pairs = -(-value.size // 2)
    params = builder.uniform(value.size)
    builder.dispatch(NARROW, [value.buffer, out.buffer, params], grid(-(-pairs // 256)))
    return out
