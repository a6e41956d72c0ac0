"""More elementwise functions, fused like the rest (see :mod:`.elementwise`).

float32 (integers are cast): ``erf reciprocal sin cos softplus softsign elu selu celu
mish leaky_relu hard_sigmoid hard_swish``.  Keeping their dtype: ``floor ceil round``
(round: half to even; integers unchanged), ``sign``, ``clip(x, min=None, max=None)``
(None: unbounded), and the binary ``mod`` (C's fmod for floats, exact, as ONNX's
``fmod=1``; Python's modulo for integers, the divisor's sign) and ``prelu(x, slope)``
(slope broadcast).  Parameters take ONNX's defaults.  Tolerances follow WGSL's stated
accuracy for the builtins each one uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ShapeError
from .dtypes import EPS32, WGSL_TYPES
from .elementwise import exact, f64, literal, rounding, same_type, three_ulps, ulps
from .graph import LIMITS, Node, OpSpec, Typed, register

SELU = {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}


def _f(value: float) -> str:
    return literal(value, "float32")


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, 0.0)


def _elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _celu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


def _expm1_bound(result: np.ndarray, x: np.ndarray, scale: float = 1.0, **attrs: Any) -> np.ndarray:
    """exp(x) - 1 for x <= 0: exp's (3 + 2|x|) ULPs of exp(x), then one subtraction and a product."""
    x = np.asarray(x, np.float64)
    return np.abs(scale) * (5 + 2 * np.abs(x)) * EPS32 * np.exp(np.minimum(x, 0)) + 4 * EPS32 * np.abs(result) + 1e-37


def _trig_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    """WGSL: 2**-11 absolute in [-pi, pi]; beyond, reducing x costs about |x| ULPs of it."""
    return 2.0**-11 + 2 * EPS32 * np.abs(np.asarray(x, np.float64))


def _softplus_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log's absolute 2**-21 near 1, exp's (3 + 2|x|) ULPs, and the final sum's rounding."""
    return 2.0**-21 + (5 + 2 * np.abs(np.asarray(x, np.float64))) * EPS32 * np.abs(result)


def _mish_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    """tanh's absolute error (and softplus's, through it) scaled by the x in front."""
    return (4e-6 + 2.0**-21) * np.abs(np.asarray(x, np.float64)) + 8 * EPS32 * np.abs(result) + 1e-37


def _clip_bounds(dtype: str, low: float | None, high: float | None) -> tuple[float | None, float | None]:
    """The bounds as values of ``dtype``: integers clip at the integers inside [low, high]."""
    if dtype == "float32":  # an infinite bound bounds nothing (and no WGSL literal holds it)
        return (None if low is None or low == -math.inf else low), (None if high is None or high == math.inf else high)
    lo, hi = LIMITS[dtype]
    return (
        None if low is None else min(max(math.ceil(low), lo), hi),
        None if high is None else max(min(math.floor(high), hi), lo),
    )


def _clip_wgsl(a: str, dtype: str, min: float | None, max: float | None) -> str:
    low, high = _clip_bounds(dtype, min, max)
    if low is not None:
        a = f"max({a}, {literal(low, dtype)})"
    if high is not None:
        a = f"min({a}, {literal(high, dtype)})"
    return a


def _clip(x: np.ndarray, min: float | None = None, max: float | None = None) -> np.ndarray:
    low, high = _clip_bounds(x.dtype.name, min, max)
    y = x if low is None else np.maximum(x, np.asarray(low, x.dtype))
    return y if high is None else np.minimum(y, np.asarray(high, x.dtype))


def _clip_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    for name in ("min", "max"):
        value = attrs[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ShapeError(f"clip's {name} must be a number or None, not {value!r}")
    return same_type(False)(args, attrs)


def _mod_wgsl(a: str, b: str, dtype: str) -> str:
    return {"float32": f"wn_fmod({a}, {b})", "int32": f"wn_imod({a}, {b})", "uint32": f"({a} % {b})"}[dtype]


def _mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.fmod(a, b) if a.dtype.kind == "f" else np.mod(a, b)


def _sign_wgsl(a: str, dtype: str) -> str:
    return f"select(0u, 1u, {a} > 0u)" if dtype == "uint32" else f"sign({a})"


def _rounded(fn: str) -> Callable[..., str]:
    return lambda a, dtype: f"{fn}({a})" if dtype == "float32" else a


def _hard_sigmoid_bound(result: np.ndarray, x: np.ndarray, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    return 2 * EPS32 * (np.abs(alpha * np.asarray(x, np.float64)) + abs(beta)) + 1e-37


def _hard_swish_bound(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The rounding of a / 6 + 1/2 (absolute, near 1/2) times a, then the product's."""
    return 2 * EPS32 * np.abs(np.asarray(x, np.float64)) + 4 * EPS32 * np.abs(result) + 1e-37


#: (name, arity, WGSL expression, numpy reference, result dtype, tolerance, summary, defaults)
FUNCTIONS: list[tuple[str, int, Callable[..., str], Callable[..., Any], bool, Callable[..., Any], str, dict]] = [
    ("erf", 1, lambda a, dtype: f"wn_erf({a})", f64(_erf), True, ulps(lambda x: 8.0), "the error function", {}),
    ("reciprocal", 1, lambda a, dtype: f"(1.0 / {a})", f64(np.reciprocal), True, three_ulps, "1 / a", {}),
    ("sin", 1, lambda a, dtype: f"sin({a})", f64(np.sin), True, _trig_bound, "sine", {}),
    ("cos", 1, lambda a, dtype: f"cos({a})", f64(np.cos), True, _trig_bound, "cosine", {}),
    ("softplus", 1, lambda a, dtype: f"wn_softplus({a})", f64(_softplus), True, _softplus_bound, "log(1 + e ** a)", {}),
    ("softsign", 1, lambda a, dtype: f"({a} / (1.0 + abs({a})))", f64(lambda x: x / (1 + np.abs(x))), True,
     ulps(lambda x: 4.0), "a / (1 + |a|)", {}),
    ("mish", 1, lambda a, dtype: f"({a} * wn_tanh(wn_softplus({a})))",
     f64(lambda x: x * np.tanh(_softplus(x))), True, _mish_bound, "a * tanh(softplus(a))", {}),
    ("elu", 1, lambda a, dtype, alpha: f"select({_f(alpha)} * (exp(min({a}, 0.0)) - 1.0), {a}, {a} > 0.0)",
     f64(_elu), True, lambda r, x, alpha: _expm1_bound(r, x, alpha), "a if a > 0 else alpha (e ** a - 1)",
     {"alpha": 1.0}),
    ("selu", 1,
     lambda a, dtype, alpha, gamma:
        f"({_f(gamma)} * select({_f(alpha)} * (exp(min({a}, 0.0)) - 1.0), {a}, {a} > 0.0))",
     f64(lambda x, alpha, gamma: gamma * _elu(x, alpha)), True,
     lambda r, x, alpha, gamma: _expm1_bound(r, x, alpha * gamma), "gamma elu(a, alpha), ONNX's constants", SELU),
    ("celu", 1,
     lambda a, dtype, alpha: f"(max({a}, 0.0) + min(0.0, {_f(alpha)} * (exp(min({a}, 0.0) / {_f(alpha)}) - 1.0)))",
     f64(_celu), True, lambda r, x, alpha: _expm1_bound(r, x / alpha, alpha),
     "max(a, 0) + min(0, alpha (e ** (a / alpha) - 1))", {"alpha": 1.0}),
    ("leaky_relu", 1, lambda a, dtype, alpha: f"select({_f(alpha)} * {a}, {a}, {a} >= 0.0)",
     f64(lambda x, alpha: np.where(x >= 0, x, alpha * x)), True, rounding, "a if a >= 0 else alpha a",
     {"alpha": 0.01}),
    ("hard_sigmoid", 1, lambda a, dtype, alpha, beta: f"clamp({_f(alpha)} * {a} + {_f(beta)}, 0.0, 1.0)",
     f64(lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1)), True, _hard_sigmoid_bound,
     "max(0, min(1, alpha a + beta))", {"alpha": 0.2, "beta": 0.5}),
    ("hard_swish", 1, lambda a, dtype: f"({a} * clamp({a} * {_f(1 / 6)} + 0.5, 0.0, 1.0))",
     f64(lambda x: x * np.clip(x / 6 + 0.5, 0, 1)), True, _hard_swish_bound, "a max(0, min(1, a / 6 + 1/2))", {}),
    ("floor", 1, _rounded("floor"), np.floor, False, exact, "largest integer <= a", {}),
    ("ceil", 1, _rounded("ceil"), np.ceil, False, exact, "smallest integer >= a", {}),
    ("round", 1, _rounded("round"), np.round, False, exact, "nearest integer, halves to even", {}),
    ("sign", 1, _sign_wgsl, np.sign, False, exact, "-1, 0 or 1", {}),
    ("mod", 2, _mod_wgsl, _mod, False, exact, "fmod for floats (a's sign), Python's % for integers", {}),
    ("prelu", 2, lambda a, b, dtype: f"select({a} * {b}, {a}, {a} >= {WGSL_TYPES[dtype]}(0))",
     lambda a, b: np.where(a >= 0, a, a * b), False, rounding, "a if a >= 0 else slope a (slope broadcast)", {}),
]  # fmt: skip
for _name, _arity, _wgsl, _reference, _float_only, _bound, _summary, _defaults in FUNCTIONS:
    register(
        OpSpec(_name, (_arity, _arity), "elementwise", same_type(_float_only), _reference, _bound, _summary,
               defaults=_defaults, wgsl=_wgsl)
    )  # fmt: skip
register(
    OpSpec("clip", (1, 1), "elementwise", _clip_infer, _clip, exact, "a limited to [min, max] (None: no limit)",
           defaults={"min": None, "max": None}, wgsl=_clip_wgsl)
)  # fmt: skip
