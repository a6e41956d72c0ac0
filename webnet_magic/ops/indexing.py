"""Affine index maps: which element of a value a fused kernel's invocation reads.

A fused kernel runs one invocation per element of its result, at coordinates ``c``.
Each buffer it reads is reached through broadcasting and views (transpose, slice,
expand, a reshape that splits dimensions), and each of those makes every coordinate
of the value an affine function of ``c``: ``shift + Σ scale·c[dim]``.  A load from a
contiguous buffer is then at ``base + Σ coef·c[dim]``, one multiply-add per result
dimension however long the chain of views, so views never need a buffer of their own.
Negative scales (slices with negative steps) are fine: the kernel adds in wrapping u32
arithmetic, which gives the right offset whenever the final offset is in range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Form:
    """One coordinate as ``shift + Σ scale·c[dim]`` over the kernel's result coordinates ``c``."""

    terms: tuple[tuple[int, int], ...] = ()  # (result dimension, scale), each dimension once, scale != 0
    shift: int = 0

    @classmethod
    def of(cls, dim: int) -> Form:
        """The result's own coordinate along ``dim``."""
        return cls(((dim, 1),))

    def scaled(self, factor: int, shift: int = 0) -> Form:
        """``factor · self + shift``."""
        if factor == 0:
            return Form((), shift)
        return Form(tuple((d, s * factor) for d, s in self.terms), self.shift * factor + shift)

    def plus(self, other: Form) -> Form:
        scales = dict(self.terms)
        for d, s in other.terms:
            scales[d] = scales.get(d, 0) + s
        return Form(tuple(sorted((d, s) for d, s in scales.items() if s)), self.shift + other.shift)


ZERO = Form()
#: One Form per dimension of a value: where each of its coordinates comes from.
Mapping = tuple[Form, ...]


def identity(ndim: int) -> Mapping:
    return tuple(Form.of(d) for d in range(ndim))


def broadcast(shape: Shape, arg_shape: Shape, mapping: Mapping) -> Mapping:
    """The mapping of an argument broadcast (numpy's rules) to ``shape``, whose mapping is ``mapping``.

    Dimensions of size 1 always read coordinate 0, whether they broadcast or not.
    """
    lead = len(shape) - len(arg_shape)
    return tuple(ZERO if size == 1 else mapping[lead + d] for d, size in enumerate(arg_shape))


def permute(mapping: Mapping, axes: Sequence[int]) -> Mapping:
    """A transpose's argument: result dimension ``k`` is the argument's ``axes[k]``."""
    inner = [ZERO] * len(axes)
    for k, axis in enumerate(axes):
        inner[axis] = mapping[k]
    return tuple(inner)


def strided(mapping: Mapping, starts: Sequence[int], steps: Sequence[int]) -> Mapping:
    """A slice's argument: its coordinate ``start + step·k`` for the result's ``k``."""
    return tuple(form.scaled(step, start) for form, start, step in zip(mapping, starts, steps, strict=True))


def regroup(arg_shape: Shape, shape: Shape, mapping: Mapping) -> Mapping | None:
    """A reshape's argument, when each of its dimensions is a run of consecutive result dimensions.

    A reshape that splits dimensions, or adds or drops dimensions of size 1, keeps every
    coordinate affine; one that merges dimensions (or any empty reshape) does not: None.
    """
    forms: list[Form] = []
    j = 0
    for size in arg_shape:
        if size == 1:
            forms.append(ZERO)
            continue
        form, product = ZERO, 1
        while product < size and j < len(shape):
            form, product = form.scaled(shape[j]).plus(mapping[j]), product * shape[j]
            j += 1
        if product != size:
            return None
        forms.append(form)
    return tuple(forms) if all(size == 1 for size in shape[j:]) else None


def contiguous(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides, in elements."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def offsets(shape: Shape, mapping: Mapping, ndim: int) -> tuple[tuple[int, ...], int]:
    """A contiguous value of ``shape`` read through ``mapping``: (coefficient per result dimension, base)."""
    total = ZERO
    for form, stride in zip(mapping, contiguous(shape), strict=True):
        total = total.plus(form.scaled(stride))
    coefs = [0] * ndim
    for d, s in total.terms:
        coefs[d] = s
    return tuple(coefs), total.shift
