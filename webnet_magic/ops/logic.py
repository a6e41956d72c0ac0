"""Comparisons, logic and selection, fused like the rest (see :mod:`.elementwise`).

WGSL has no boolean buffers, so truth travels as int32: ``less less_equal greater
greater_equal equal not_equal`` compare their arguments at their common dtype (numpy's
broadcasting) and give 0 or 1; ``logical_and logical_or logical_xor logical_not`` take
any nonzero value as true; ``where(cond, a, b)`` picks ``a`` where ``cond`` is nonzero,
at the common dtype of ``a`` and ``b``.  All exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .elementwise import exact, promote
from .graph import Node, OpSpec, Typed, broadcast, register


def _compare_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    dtype = promote(args)
    return Typed(broadcast([a.shape for a in args]), "int32", (dtype,) * len(args))


def _logic_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    return Typed(broadcast([a.shape for a in args]), "int32", tuple(a.dtype for a in args))


def _where_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    cond, a, b = args
    dtype = promote([a, b])
    return Typed(broadcast([n.shape for n in args]), dtype, (cond.dtype, dtype, dtype))


def _as_int(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda *args: np.asarray(fn(*args)).astype(np.int32)


COMPARISONS = {
    "less": ("<", np.less),
    "less_equal": ("<=", np.less_equal),
    "greater": (">", np.greater),
    "greater_equal": (">=", np.greater_equal),
    "equal": ("==", np.equal),
    "not_equal": ("!=", np.not_equal),
}
for _name, (_symbol, _reference) in COMPARISONS.items():
    register(
        OpSpec(_name, (2, 2), "elementwise", _compare_infer, _as_int(_reference), exact,
               f"1 where a {_symbol} b, else 0 (int32)", wgsl=lambda a, b, dtype, s=_symbol: f"i32({a} {s} {b})")
    )  # fmt: skip

LOGIC = {
    "logical_and": (2, lambda a, b, dtype: f"i32(bool({a}) && bool({b}))", np.logical_and, "a and b"),
    "logical_or": (2, lambda a, b, dtype: f"i32(bool({a}) || bool({b}))", np.logical_or, "a or b"),
    "logical_xor": (2, lambda a, b, dtype: f"i32(bool({a}) != bool({b}))", np.logical_xor, "a xor b"),
    "logical_not": (1, lambda a, dtype: f"i32(!bool({a}))", np.logical_not, "not a"),
}
for _name, (_arity, _wgsl, _reference, _summary) in LOGIC.items():
    register(
        OpSpec(_name, (_arity, _arity), "elementwise", _logic_infer, _as_int(_reference), exact,
               f"{_summary}: 1 or 0 (int32; nonzero is true)", wgsl=_wgsl)
    )  # fmt: skip

register(
    OpSpec("where", (3, 3), "elementwise", _where_infer, lambda c, a, b: np.where(c != 0, a, b), exact,
           "a where cond is nonzero, else b (broadcast)", wgsl=lambda c, a, b, dtype: f"select({b}, {a}, bool({c}))")
)  # fmt: skip
