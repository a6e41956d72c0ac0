"""``matmul``: numpy's ``A @ B`` for 1-D and 2-D operands, on the tiled kernel in ``matmul.wgsl``."""

from __future__ import annotations

import math
from importlib.resources import files

import numpy as np

from ..errors import ShapeError
from ..program import Buffer, Kernel, Output, Program, Step, padded, uniform_u32
from .base import Plan
from .operands import numeric, to_float32

ARITY = 2
RESULTS = 1
USAGE = "X Y -> Z   Z = X @ Y on a device"
KERNEL = Kernel(files(__package__).joinpath("matmul.wgsl").read_text())
TILE = 64  # rows and columns of C per workgroup, as in matmul.wgsl

EPS32 = float(np.finfo(np.float32).eps)


def plan(a: object, b: object, names: tuple[str, str] = ("A", "B")) -> Plan:
    """A program computing ``a @ b`` in float32, with numpy's rules for 1-D operands.

    Shapes are checked before any conversion so a mismatch costs nothing.
    """
    x, y = numeric(names[0], a), numeric(names[1], b)
    for name, arr in zip(names, (x, y), strict=True):
        if arr.ndim not in (1, 2):
            raise ShapeError(
                f"matmul takes 1-D or 2-D arrays; {name} has shape {arr.shape} "
                f"(batched matmul is not supported yet)"
            )
    # numpy: a 1-D left operand is a row vector, a 1-D right operand a column vector.
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    y2 = y.reshape(-1, 1) if y.ndim == 1 else y
    (m, k), (k2, n) = x2.shape, y2.shape
    if k != k2:
        raise ShapeError(
            f"matmul: {names[0]} has shape {x.shape} and {names[1]} has shape {y.shape}; "
            f"the inner dimensions {k} and {k2} must be equal"
        )
    shape = (m,) * (x.ndim == 2) + (n,) * (y.ndim == 2)
    A, B = to_float32(names[0], x2), to_float32(names[1], y2)
    if m * n * k == 0:
        # An empty product needs no device: numpy's answer is zeros of the result shape.
        return Plan(None, shape, (A, B))
    program = Program(
        inputs=(A.array, B.array, uniform_u32(m, k, n)),
        buffers=(
            Buffer(padded(A.array.nbytes), input=0),
            Buffer(padded(B.array.nbytes), input=1),
            Buffer(padded(m * n * 4)),
            Buffer(16, input=2, uniform=True),
        ),
        steps=(Step(KERNEL, (0, 1, 2, 3), (math.ceil(n / TILE), math.ceil(m / TILE), 1)),),
        outputs=(Output(2, "float32", (m, n)),),
    )
    return Plan(program, shape, (A, B))


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the device must match: numpy's matmul of the float32 operands."""
    return np.matmul(np.asarray(a, np.float32), np.asarray(b, np.float32))


def tolerance(a: np.ndarray, b: np.ndarray) -> float:
    """Absolute error bound for the device's ``a @ b`` against :func:`reference`.

    A float32 dot product of length K is off by at most about K·eps·(|a|·|b|); both
    the device and numpy's BLAS round, in different orders, hence the factor 2.
    """
    k = np.shape(a)[-1]
    magnitude = np.matmul(np.abs(np.asarray(a, np.float32)), np.abs(np.asarray(b, np.float32)))
    return 2 * k * EPS32 * float(np.max(magnitude, initial=0.0))
