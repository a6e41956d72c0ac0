"""Computations as graphs: nodes for inputs, constants and op applications.

A single op call and an expression such as ``relu(X @ W1 + b1) @ W2`` both become
a graph; :mod:`~webnet_magic.ops.compiler` turns a graph into one program, so
intermediates never leave the device.  Building a node checks shapes and dtypes
at once (through the op's ``infer``), so errors name the sub-expression at fault
before anything is sent.  Identical sub-expressions are built once (hash-consing),
so ``f(X), g(f(X))`` computes ``f(X)`` a single time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DtypeError, ShapeError
from .dtypes import Leaf, to_wire

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Node:
    """A value in a computation: an ``input`` array, a ``const`` scalar, or an op applied to nodes."""

    op: str
    args: tuple[Node, ...]
    attrs: tuple[tuple[str, Any], ...]
    shape: Shape
    dtype: str
    text: str
    leaf: Leaf | None = field(default=None, repr=False)
    value: float | int | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.attrs)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Typed:
    """What an op's ``infer`` decides: the result's shape and dtype, and the dtype each argument needs."""

    shape: Shape
    dtype: str
    arg_dtypes: tuple[str, ...]


@dataclass(frozen=True)
class OpSpec:
    """One op: how to type it, compute it on the device, and check it against numpy.

    ``kind`` says how the compiler treats it: ``elementwise`` ops (and ``view`` ops,
    which only re-index, like transpose and slice) are fused into one kernel with their
    neighbours; an ``alias`` op (reshape) is the same buffer under another shape when its
    argument has a buffer, and a view otherwise; ``kernel`` ops run their own ``emit``.
    ``view`` (for view and alias ops) says where the argument's coordinates come from,
    given the result's (see :mod:`.indexing`); it returns None where that is not affine.
    """

    name: str
    arity: tuple[int, int]
    kind: str
    infer: Callable[[Sequence[Node], Mapping[str, Any]], Typed]
    reference: Callable[..., np.ndarray]
    tolerance: Callable[..., np.ndarray | float]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    wgsl: Callable[..., str] | None = None  # elementwise: argument expressions -> expression
    emit: Callable[..., None] | None = None  # kernel ops: (builder, args, out, attrs) -> None
    view: Callable[..., Any] | None = None  # view and alias ops: (node, mapping) -> the argument's mapping
    trusted: bool = True  # False for kernels written in a notebook cell


OPS: dict[str, OpSpec] = {}
#: The values each dtype holds, for constants.
LIMITS = {
    "float32": (-float(np.finfo(np.float32).max), float(np.finfo(np.float32).max)),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def register(spec: OpSpec) -> OpSpec:
    OPS[spec.name] = spec
    return spec


class Graph:
    """Builds nodes, checking each as it is made; one graph per job."""

    def __init__(self) -> None:
        self._made: dict[tuple[Any, ...], Node] = {}
        self.inputs: dict[str, Node] = {}

    def input(self, name: str, value: object) -> Node:
        """The node for array ``name`` (converted for the wire once, however often it is used)."""
        if name not in self.inputs:
            leaf = to_wire(name, value)
            dtype = "float32" if leaf.array.dtype == np.float16 else leaf.array.dtype.name
            self.inputs[name] = Node("input", (), (), leaf.array.shape, dtype, name, leaf=leaf)
        return self.inputs[name]

    def const(self, value: object, text: str) -> Node:
        """A Python number in an expression; it takes the dtype of what it is combined with.

        Infinities are allowed (a mask of -inf, as exporters write attention); NaN is not.
        """
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DtypeError(f"{text!r} is not a number")
        if isinstance(value, float) and math.isnan(value):
            raise DtypeError(f"{text!r}: a constant cannot be NaN")
        if isinstance(value, int) and not -(2**31) <= value < 2**32:
            raise DtypeError(f"{text!r} does not fit in 32 bits")
        dtype = "float32" if isinstance(value, float) else "int32"
        return self._intern(Node("const", (), (), (), dtype, text, value=value))

    def apply(self, op: str, args: Sequence[Node], attrs: Mapping[str, Any], text: str) -> Node:
        """``op(*args, **attrs)``, typed by the op; arguments are cast where the op needs it."""
        spec = OPS.get(op)
        if spec is None:
            raise ShapeError(f"unknown op {op!r} in {text!r}; available: {', '.join(sorted(OPS))}")
        low, high = spec.arity
        if not low <= len(args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise ShapeError(f"{op} takes {count} array arguments, got {len(args)} in {text!r}")
        unknown = set(attrs) - set(spec.defaults)
        if unknown:
            allowed = ", ".join(spec.defaults) or "none"
            raise ShapeError(f"{op} has no option {sorted(unknown)[0]!r} (options: {allowed}) in {text!r}")
        options = {**spec.defaults, **attrs}
        try:
            typed = spec.infer(args, options)
            cast = tuple(self.cast(arg, dtype) for arg, dtype in zip(args, typed.arg_dtypes, strict=True))
        except (ShapeError, DtypeError) as exc:
            raise type(exc)(f"{exc} in {text!r}") from None
        attrs_key = tuple(sorted(_frozen(options).items()))
        return self._intern(Node(op, cast, attrs_key, typed.shape, typed.dtype, text))

    def cast(self, node: Node, dtype: str) -> Node:
        if node.op == "const":  # a literal simply takes the type it is used at, if it fits
            value = float(node.value) if dtype == "float32" else node.value  # type: ignore[arg-type]
            low, high = LIMITS[dtype]
            fits = low <= value <= high or (dtype == "float32" and math.isinf(value))  # type: ignore[operator, arg-type]
            if (isinstance(value, float) and dtype != "float32") or not fits:
                raise DtypeError(f"the constant {node.text} does not fit {dtype} here")
            return self._intern(Node("const", (), (), (), dtype, node.text, value=value))
        if node.dtype == dtype:
            return node
        return self._intern(Node("cast", (node,), (("dtype", dtype),), node.shape, dtype, node.text))

    def _intern(self, node: Node) -> Node:
        # repr keeps -0.0 apart from 0.0 (1 / -0.0 is -inf); == would merge them
        key = (node.op, tuple(id(a) for a in node.args), node.attrs, node.dtype, repr(node.value), node.shape)
        return self._made.setdefault(key, node)


def _frozen(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as hashable values (lists become tuples) so equal calls intern to one node."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def topological(outputs: Iterable[Node]) -> list[Node]:
    """Every node the outputs depend on, each after its arguments."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if expanded:
            seen.add(id(node))
            order.append(node)
        else:
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args) if id(a) not in seen)
    return order


def evaluate(outputs: Sequence[Node]) -> list[np.ndarray]:
    """numpy's answer for ``outputs``: each op's reference, in the dtypes the device computes in."""
    values: dict[int, np.ndarray] = {}
    for node in topological(outputs):
        if node.op == "input":
            assert node.leaf is not None
            values[id(node)] = node.leaf.array.astype(node.dtype, copy=False)
        elif node.op == "const":
            values[id(node)] = np.asarray(node.value, dtype=node.dtype)
        else:
            args = [values[id(a)] for a in node.args]
            result = OPS[node.op].reference(*args, **node.options)
            values[id(node)] = np.asarray(result).astype(node.dtype, copy=False).reshape(node.shape)
    return [values[id(n)] for n in outputs]


def broadcast(shapes: Sequence[Shape], text: str = "") -> Shape:
    """numpy's broadcast of ``shapes``, or a ShapeError naming them."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = " and ".join(str(tuple(s)) for s in shapes)
        raise ShapeError(f"shapes {listed} do not broadcast{text}") from None


def normalize_axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis!r} is out of range for {ndim} dimensions")
    return axis % ndim
