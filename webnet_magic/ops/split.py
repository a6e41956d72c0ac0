"""Work larger than a device can bind, cut into jobs that fit and put back together here.

A device reports ``maxStorageBufferBindingSize`` and ``maxBufferSize`` (128 MiB and
256 MiB by default; iOS caps them lower).  A single matmul too large for them becomes
blocks of C: row blocks of A, column blocks of B, and, when even one row of A is too
long, slices of K whose partial products are summed here.  An elementwise expression
too large becomes chunks along its first axis.  Each block is an ordinary job, so blocks
can run on different devices at once, and a block of B used by several jobs is sent to
each device once (inputs are cached by content).  Anything else too large is refused
with the limit it exceeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DeviceLimitError
from .compiler import Plan, compile_graph
from .graph import OPS, Graph, Node, topological

#: The limits that bound a single buffer, as workers report them.
BUFFER_LIMITS = ("maxStorageBufferBindingSize", "maxBufferSize")


@dataclass(frozen=True)
class Piece:
    """One job of a split: its plan, and where its result goes in the whole."""

    plan: Plan
    place: Callable[[np.ndarray, np.ndarray], None]  # (whole, this piece's result) -> None


@dataclass(frozen=True)
class Split:
    """The pieces of one too-large output and the array they fill."""

    pieces: list[Piece]
    shape: tuple[int, ...]
    dtype: str

    def assemble(self, results: Sequence[np.ndarray]) -> np.ndarray:
        whole = np.zeros(self.shape, self.dtype)
        for piece, result in zip(self.pieces, results, strict=True):
            piece.place(whole, result)
        return whole


def buffer_limit(limits: dict[str, int]) -> int:
    """The largest buffer a device with ``limits`` binds (WebGPU's defaults where unreported)."""
    defaults = {"maxStorageBufferBindingSize": 128 << 20, "maxBufferSize": 256 << 20}
    return min(int(limits.get(name, defaults[name])) for name in BUFFER_LIMITS)


def split(node: Node, limit: int, wire: str = "f32") -> Split:
    """``node``'s computation as jobs whose buffers are each at most ``limit`` bytes.

    Raises :class:`DeviceLimitError` naming the limit when the computation cannot be split.
    """
    if node.op == "matmul" and len(node.args[0].shape) == 2 and len(node.args[1].shape) == 2:
        return _matmul(node, limit, wire)
    if all(n.op in ("input", "const") or OPS[n.op].kind == "elementwise" for n in topological([node])):
        return _rows(node, limit, wire)
    raise DeviceLimitError(
        f"{node.text!r} needs a {_largest(node)}-byte buffer, above the device's buffer limit of {limit} bytes "
        f"(maxStorageBufferBindingSize / maxBufferSize); only a 2-D matmul or an elementwise expression is split"
    )


def _largest(node: Node) -> int:
    return max(n.size * 4 for n in topological([node]))


def _matmul(node: Node, limit: int, wire: str) -> Split:
    a_node, b_node = node.args
    a, b = (_value(n) for n in (a_node, b_node))
    (m, k), n = a.shape, b.shape[1]
    words = limit // 4
    kb = k if k * 64 <= words else max(4, (words // 64) // 4 * 4)  # at least 64 rows and columns per block
    nb = max(1, min(n, words // kb))
    nb = nb if nb == n else max(4, nb // 4 * 4)  # whole vec4s keep the fast kernel
    mb = max(1, min(m, words // kb, words // nb))
    if mb * kb > words or kb * nb > words:
        raise DeviceLimitError(f"matmul blocks cannot fit a device limit of {limit} bytes")
    pieces = []
    for i in range(0, m, mb):
        for j in range(0, n, nb):
            for p in range(0, k, kb):
                graph = Graph()
                part = graph.apply(
                    "matmul",
                    [graph.input(f"{a_node.text}[{i}:, {p}:]", a[i : i + mb, p : p + kb]),
                     graph.input(f"{b_node.text}[{p}:, {j}:]", b[p : p + kb, j : j + nb])],
                    {}, node.text,
                )  # fmt: skip
                pieces.append(Piece(compile_graph([part], wire), _add_block(i, i + mb, j, j + nb)))
    return Split(pieces, (m, n), "float32")


def _add_block(r0: int, r1: int, c0: int, c1: int) -> Callable[[np.ndarray, np.ndarray], None]:
    def place(whole: np.ndarray, block: np.ndarray) -> None:
        whole[r0:r1, c0:c1] += block  # K slices add up; other blocks land on zeros

    return place


def _rows(node: Node, limit: int, wire: str) -> Split:
    """An elementwise expression in chunks along its first axis (broadcast inputs are not cut)."""
    if not node.shape:
        raise DeviceLimitError(f"{node.text!r} is a scalar; nothing to split")
    leaves = [n for n in topological([node]) if n.op == "input"]
    row_bytes = max([math.prod(node.shape[1:]) * 4] + [math.prod(leaf.shape[1:]) * 4 for leaf in leaves])
    rows = max(1, limit // max(row_bytes, 1))
    if row_bytes > limit:
        raise DeviceLimitError(f"one row of {node.text!r} is {row_bytes} bytes, above the device limit of {limit}")
    pieces = []
    for start in range(0, node.shape[0], rows):

        def rows_of(leaf: Node, start: int = start) -> np.ndarray:
            return _rows_of(leaf, node, start, rows)

        part = _rebuild(node, Graph(), rows_of, {})
        pieces.append(Piece(compile_graph([part], wire), _put_rows(start, start + rows)))
    return Split(pieces, node.shape, node.dtype)


def _rows_of(leaf: Node, root: Node, start: int, count: int) -> np.ndarray:
    """The rows of ``leaf`` that rows ``start:start+count`` of ``root`` read (all of it if it broadcasts)."""
    value = _value(leaf)
    aligned = len(leaf.shape) == len(root.shape) and leaf.shape and leaf.shape[0] == root.shape[0]
    return value[start : start + count] if aligned else value


def _put_rows(r0: int, r1: int) -> Callable[[np.ndarray, np.ndarray], None]:
    def place(whole: np.ndarray, rows: np.ndarray) -> None:
        whole[r0:r1] = rows

    return place


def _rebuild(node: Node, graph: Graph, leaf: Callable[[Node], np.ndarray], made: dict[int, Node]) -> Node:
    """``node``'s expression again in ``graph``, each input replaced by ``leaf(input)``."""
    if id(node) not in made:
        if node.op == "input":
            made[id(node)] = graph.input(node.text, leaf(node))
        elif node.op == "const":
            made[id(node)] = graph.const(node.value, node.text)
        else:
            args = [_rebuild(a, graph, leaf, made) for a in node.args]
            made[id(node)] = graph.apply(node.op, args, node.options, node.text)
    return made[id(node)]


def _value(node: Node) -> np.ndarray:
    """An input's array (possibly through a cast) in the dtype the device computes it in."""
    leaf = node.args[0].leaf if node.op == "cast" and node.args[0].op == "input" else node.leaf
    if leaf is None:
        raise DeviceLimitError(
            f"{node.text!r} is not an array from the notebook (it is computed first); only such arrays can be cut"
        )
    return leaf.array.astype(node.dtype, copy=False)
