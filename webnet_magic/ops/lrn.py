"""``lrn(x, size=, alpha=1e-4, beta=0.75, bias=1.0)``: local response normalization across channels (ONNX LRN).

For x of shape (N, C, ...), each element is divided by ``(bias + alpha / size · s)^beta``,
where ``s`` sums the squares of the same position over the channels
``c - floor((size - 1) / 2)`` to ``c + ceil((size - 1) / 2)`` that exist (``lrn.wgsl``,
one invocation per element).  Float32; ``bias`` must be positive and ``alpha`` not
negative, so the base of the power is positive.
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

KERNEL = Kernel(files(__package__).joinpath("lrn.wgsl").read_text())


def _check(shape: tuple[int, ...], attrs: Mapping[str, Any]) -> None:
    if len(shape) < 2:
        raise ShapeError(f"lrn takes x of shape (N, C, ...), not {shape}")
    size = attrs["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ShapeError(f"lrn needs size=, the number of channels summed over (an int >= 1), not {size!r}")
    for name in ("alpha", "beta", "bias"):
        value = attrs[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ShapeError(f"lrn's {name} must be a finite number, not {value!r}")
    if attrs["alpha"] < 0 or attrs["bias"] <= 0:
        raise ShapeError(
            f"lrn needs alpha >= 0 and bias > 0 (a positive base), not {attrs['alpha']} and {attrs['bias']}"
        )


def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    _check(args[0].shape, attrs)
    return Typed(args[0].shape, "float32", ("float32",))


def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    (x,) = args
    size, count = attrs["size"], x.size
    plane = math.prod(x.shape[2:])
    params = builder.uniform(
        count, x.shape[1], plane, (size - 1) // 2, size // 2,
        float(attrs["alpha"]) / size, float(attrs["bias"]), float(attrs["beta"]),
    )  # fmt: skip
    builder.dispatch(KERNEL, [x.buffer, out.buffer, params], grid(-(-count // 256)))


def _square_sums(x: np.ndarray, size: int) -> np.ndarray:
    """Per element, the sum of squares over its window of channels (cut at the first and last)."""
    squares = np.square(x.astype(np.float64))
    padded = np.pad(squares, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    return sum(padded[:, k : k + x.shape[1]] for k in range(size))  # type: ignore[return-value]


def reference(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    return x.astype(np.float64) / (bias + alpha / size * _square_sums(x, size)) ** beta


def tolerance(result: np.ndarray, x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """Relative: the sum of ``size`` squares, scaled by beta through the power, plus exp2 and log2's
    own error (log2 is within 2^-21 absolute near 1, 3 ULPs elsewhere; exp2 3 + 2|t| ULPs)."""
    exponent = np.abs(beta * np.log2(bias + alpha / size * _square_sums(x, size)))
    return ((size + 8) * abs(beta) + 4 * abs(beta) + 8 + 6 * exponent) * EPS32 * np.abs(result) + 1e-37


register(
    OpSpec("lrn", (1, 1), "kernel", infer, reference, tolerance,
           "lrn(x, size=, alpha=1e-4, beta=0.75, bias=1.0): local response normalization across channels (ONNX LRN)",
           defaults={"size": None, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}, emit=emit)
)  # fmt: skip
