"""Turning numpy operands into arrays WGSL can hold.

WGSL has f32, i32, u32 (and f16 behind a feature), no f64; numpy's default is
float64.  Conversions are made here, once, before anything is sent, and
reported so the caller can warn the user exactly once per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DtypeError


@dataclass(frozen=True)
class Operand:
    """A float32, C-contiguous copy (or view) of a user's array, and what it was converted from."""

    name: str
    array: np.ndarray
    converted_from: str | None


def numeric(name: str, value: object) -> np.ndarray:
    """``value`` as an array of a kind WGSL can compute on (no copy), or a :class:`DtypeError`.

    Floats, integers and booleans pass (integers beyond 2**24 lose precision in
    float32, as in any float32 computation); complex, object, string and datetime
    data are refused with what to do instead.
    """
    if not isinstance(value, np.ndarray):
        if isinstance(value, (str, bytes)) or value is None:
            raise DtypeError(f"{name} is a {type(value).__name__}, not an array")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise DtypeError(f"{name} cannot be made into an array: {exc}") from None
    kind = value.dtype.kind
    if kind == "c":
        raise DtypeError(
            f"{name} is {value.dtype}; WebGPU has no complex numbers. "
            f"Split it: run on {name}.real and {name}.imag separately."
        )
    if kind not in "fiub":
        raise DtypeError(f"{name} has dtype {value.dtype}, which WGSL cannot hold; use a numeric array")
    return value


def to_float32(name: str, array: np.ndarray) -> Operand:
    """A contiguous float32 version of a :func:`numeric` array, remembering its original dtype."""
    converted = None if array.dtype == np.float32 else str(array.dtype)
    return Operand(name, np.asarray(array, dtype=np.float32, order="C"), converted)


def conversion_note(operands: list[Operand]) -> str | None:
    """One short sentence naming the operands that were converted, or None when none were."""
    changed = [f"{o.name} from {o.converted_from}" for o in operands if o.converted_from]
    if not changed:
        return None
    return f"webnet computes in float32 (WGSL has no float64): converted {', '.join(changed)}"
