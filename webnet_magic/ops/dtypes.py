"""Which numpy dtypes reach the device, and as what.

WGSL computes in f32, i32 and u32 (f16 only behind a feature, and nothing wider).
Every array entering a job is first brought to one of those, once, on the client:
float64 becomes float32, 64-bit integers become 32-bit ones when every value fits
(and are refused otherwise: nothing is truncated silently), small integers and
booleans widen to int32.  float16 stays float16 on the wire (half the bytes) and
is widened to float32 on the device.  Each conversion is reported, so the caller
can warn once per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DtypeError

#: dtypes a value can have inside a program, and their WGSL names.
COMPUTE = ("float32", "int32", "uint32")
WGSL_TYPES = {"float32": "f32", "int32": "i32", "uint32": "u32"}
#: float32's machine epsilon: the unit of every op's tolerance.
EPS32 = float(np.finfo(np.float32).eps)
#: dtypes an input array may travel as.
WIRE = (*COMPUTE, "float16")


@dataclass(frozen=True)
class Leaf:
    """A user's array as it will travel, and what it was converted from (None if unchanged)."""

    name: str
    array: np.ndarray
    converted_from: str | None


def to_wire(name: str, value: object) -> Leaf:
    """``value`` as a C-contiguous array of a :data:`WIRE` dtype, or a :class:`DtypeError` saying why not."""
    array = _numeric(name, value)
    source = array.dtype
    kind = source.kind
    target: type[np.generic]
    if kind == "f":
        target = np.float16 if source == np.float16 else np.float32
    elif kind == "b" or source.itemsize < 4:  # bool, (u)int8, (u)int16: int32 holds them all
        target = np.int32
    else:  # (u)int32 as is; (u)int64 only when every value fits
        integer = np.int32 if kind == "i" else np.uint32
        if source.itemsize == 8:
            _check_range(name, array, integer)
        target = integer
    converted = None if source == target else str(source)
    return Leaf(name, np.asarray(array, dtype=target, order="C"), converted)


def _numeric(name: str, value: object) -> np.ndarray:
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
    if kind not in "fiub" or value.dtype.itemsize > 8:
        raise DtypeError(f"{name} has dtype {value.dtype}, which WGSL cannot hold; use a numeric array")
    return value


def _check_range(name: str, array: np.ndarray, target: type[np.integer]) -> None:
    if array.size == 0:
        return
    info = np.iinfo(target)
    low, high = int(array.min()), int(array.max())
    if low < info.min or high > info.max:
        raise DtypeError(
            f"{name} is {array.dtype} with values in [{low}, {high}], beyond {np.dtype(target)}; "
            f"WGSL has no 64-bit integers. Convert it yourself (e.g. to float32) if that loss is acceptable."
        )


def conversion_note(leaves: list[Leaf]) -> str | None:
    """One short sentence naming the arrays that were converted, or None when none were."""
    changed = [f"{leaf.name} from {leaf.converted_from}" for leaf in leaves if leaf.converted_from]
    if not changed:
        return None
    return f"webnet computes in 32 bits (WGSL has no float64 or int64): converted {', '.join(changed)}"
