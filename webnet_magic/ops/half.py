"""float32 <-> float16 on the notebook's side of ``--wire f16``, fast enough to be worth it.

numpy casts between float32 and float16 one element at a time (about 3 ns each here,
against 0.4 ns for a float32 copy), so a 64 MB input took longer to convert than to send
over loopback, and the range check before it (finite values, their absolute values, their
maximum) copied the array three more times: ``--wire f16`` came out slower than float32.
Here the check is a minimum and a maximum (two vectorised passes, with the slow path only
for arrays holding inf or NaN), and large arrays are converted in slices on a few threads
(numpy lets go of the GIL while it casts), each slice checked and cast while in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .._threads import THREADS, gil_free_pool
from ..errors import DtypeError

#: float16's largest finite value.
HALF_MAX = 65504.0
#: Elements per slice: 1 MiB of float32, so a slice is read twice from cache, not memory.
SLICE = 1 << 18


def to_half(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` (float32) as float16, refused if a finite value is beyond float16's range."""
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.shape, np.float16)
    peaks = _sliced(flat, out, _half_slice)
    if peaks and max(peaks) > HALF_MAX:
        raise DtypeError(
            f"{name} has values beyond float16's range (|x| <= 65504), which --wire f16 would make inf; "
            f"send it as float32 (--wire f32)"
        )
    return out.reshape(array.shape)


def to_float(array: np.ndarray) -> np.ndarray:
    """float16 ``array`` as float32 (a result that travelled as float16)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.shape, np.float32)
    _sliced(flat, out, _float_slice)
    return out.reshape(array.shape)


def _half_slice(source: np.ndarray, target: np.ndarray) -> float:
    """Cast one slice; the largest finite |value| in it."""
    peak = _peak(source)
    if peak <= HALF_MAX:  # (beyond it, the whole call is refused: no need for numpy's overflow warning)
        np.copyto(target, source, casting="same_kind")
    return peak


def _float_slice(source: np.ndarray, target: np.ndarray) -> float:
    np.copyto(target, source)
    return 0.0


def _peak(values: np.ndarray) -> float:
    if not values.size:
        return 0.0
    peak = max(-float(values.min()), float(values.max()))
    if math.isfinite(peak):
        return peak
    finite = values[np.isfinite(values)]  # inf or NaN present (allowed: they stay inf and NaN)
    return float(np.abs(finite).max()) if finite.size else 0.0


def _sliced(source: np.ndarray, target: np.ndarray, each: Callable[[np.ndarray, np.ndarray], float]) -> list[float]:
    """``each`` over matching slices of ``source`` and ``target``, on the pool when there are several."""
    bounds = [(i, min(i + SLICE, source.size)) for i in range(0, source.size, SLICE)]
    if len(bounds) <= 1 or THREADS == 1:
        return [each(source[a:b], target[a:b]) for a, b in bounds]
    return list(gil_free_pool().map(lambda ab: each(source[ab[0] : ab[1]], target[ab[0] : ab[1]]), bounds))
