"""Sliding windows over the spatial axes of an (N, C, *spatial) array: conv and pooling share them.

A window op's attributes (kernel size, strides, pads, dilations, ceil_mode) are checked
and made explicit per axis here, once, and the output size follows ONNX (and PyTorch):
``(in + pad_begin + pad_end - dilation·(kernel - 1) - 1) // stride + 1``, rounded up with
``ceil_mode``, where a last window that would start in the end padding is dropped.
Kernels see every window as 3-D (leading axes of size 1), so one WGSL source serves 1-D,
2-D and 3-D ops.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any

from ..errors import ShapeError
from .graph import Shape

#: Spatial axes the kernels handle (1-D, 2-D and 3-D windows).
MAX_SPATIAL = 3


@dataclass(frozen=True)
class Window:
    """A window sliding over ``size``, every attribute one entry per spatial axis."""

    size: Shape
    kernel: Shape
    strides: Shape
    begin: Shape  # padding before each axis
    end: Shape  # padding after each axis
    dilations: Shape
    out: Shape

    @property
    def extent(self) -> Shape:
        """How far each axis of the window reaches: dilation·(kernel - 1) + 1."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilations, self.kernel, strict=True))

    def as_3d(self) -> Window:
        """The same window with leading axes of size 1 added up to 3 spatial axes, as the kernels see it."""
        lead = MAX_SPATIAL - len(self.size)
        return Window(
            (1,) * lead + self.size,
            (1,) * lead + self.kernel,
            (1,) * lead + self.strides,
            (0,) * lead + self.begin,
            (0,) * lead + self.end,
            (1,) * lead + self.dilations,
            (1,) * lead + self.out,
        )

    def offsets(self) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
        """For each kernel position, its index and the slices of the padded input it meets at every output.

        The padded input is the input with ``begin`` before and ``end`` plus :meth:`overhang` after
        each axis: the numpy references gather one strided slice per kernel position.
        """
        for index in product(*(range(k) for k in self.kernel)):
            slices = tuple(
                slice(i * d, i * d + s * (o - 1) + 1, s)
                for i, d, s, o in zip(index, self.dilations, self.strides, self.out, strict=True)
            )
            yield index, slices

    def overhang(self) -> Shape:
        """How far the last window (with ceil_mode) reaches past the end padding, per axis."""
        axes = zip(self.out, self.strides, self.extent, self.size, self.begin, self.end, strict=True)
        return tuple(max(0, (o - 1) * s + e - (n + b + p)) for o, s, e, n, b, p in axes)


def per_axis(op: str, name: str, value: Any, rank: int, minimum: int, default: int | None = None) -> Shape:
    """``value`` as one int per spatial axis: an int stands for every axis, None for ``default``."""
    if value is None and default is not None:
        return (default,) * rank
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * rank
    if (
        not isinstance(value, tuple | list)
        or len(value) != rank
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    ):
        raise ShapeError(
            f"{op}'s {name} must be {rank} int{'s' * (rank > 1)} >= {minimum} (one per spatial axis), not {value!r}"
        )
    return tuple(value)


def pads_of(op: str, value: Any, rank: int) -> tuple[Shape, Shape]:
    """ONNX's ``pads`` (all the begins, then all the ends) as (begin, end); an int pads every side alike."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        value = (value or 0,) * (2 * rank)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2 * rank
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise ShapeError(
            f"{op}'s pads must be {2 * rank} ints >= 0 (the begin of each spatial axis, then the end), not {value!r}"
        )
    return tuple(value[:rank]), tuple(value[rank:])


def window(
    op: str,
    size: Shape,
    kernel: Shape,
    strides: Any,
    pads: Any,
    dilations: Any,
    ceil_mode: bool = False,
) -> Window:
    """The window of ``op`` over spatial ``size``, or a ShapeError naming the attribute at fault."""
    rank = len(size)
    if not 1 <= rank <= MAX_SPATIAL:
        raise ShapeError(f"{op} works on 1 to {MAX_SPATIAL} spatial axes, not {rank} (input (N, C, *spatial))")
    if not isinstance(ceil_mode, bool):
        raise ShapeError(f"{op}'s ceil_mode must be True or False, not {ceil_mode!r}")
    kernel = per_axis(op, "kernel", kernel, rank, 1)
    strides = per_axis(op, "strides", strides, rank, 1, default=1)
    dilations = per_axis(op, "dilations", dilations, rank, 1, default=1)
    begin, end = pads_of(op, pads, rank)
    out = []
    for n, k, s, b, e, d in zip(size, kernel, strides, begin, end, dilations, strict=True):
        span = n + b + e - d * (k - 1) - 1
        if span < 0:
            raise ShapeError(
                f"{op}: a window of {k} (dilation {d}) does not fit a spatial size of {n} padded by {(b, e)}"
            )
        count = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (count - 1) * s >= n + b:  # the last window would start in the end padding
            count -= 1
        out.append(count)
    return Window(tuple(size), kernel, strides, begin, end, dilations, tuple(out))
