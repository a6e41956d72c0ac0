"""Work cut into jobs: shards for a fleet of devices, and blocks that fit one device's limits.

A device reports ``maxStorageBufferBindingSize`` and ``maxBufferSize`` (128 MiB and
256 MiB by default; iOS caps them lower), and a fleet has devices of different speeds.
:func:`split` serves both: it cuts a result into shards along its rows (or a matmul's
columns, when those are more), sized in proportion to given weights (the devices'
speeds), and cuts each shard further until every buffer fits the limit.

A plain matmul of two notebook arrays becomes blocks of C: row blocks of A, column
blocks of B, and, when even one row of A is too long, slices of K whose partial products
are summed here.  Any other expression whose rows can be computed apart (see
:mod:`.restrict`: elementwise chains, matmuls by their left operand, row-wise softmax,
layernorm and reductions) is cut along its first axis.  Each piece is an ordinary job, so
pieces run on different devices at once; a block of B used by several jobs is sent to each
device once (inputs are cached by content).  Anything else too large is refused with the
limit it exceeds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..broker.records import DeviceRecord, DeviceState
from ..errors import DeviceLimitError
from .compiler import ContentKeys, Plan, compile_graph
from .graph import Graph, Node, topological
from .restrict import restrict

#: The limits that bound a single buffer, as workers report them.
BUFFER_LIMITS = ("maxStorageBufferBindingSize", "maxBufferSize")


@dataclass(frozen=True)
class Piece:
    """One job of a split: its plan, where its result goes in the whole, and which shard it belongs to."""

    plan: Plan
    place: Callable[[np.ndarray, np.ndarray], None]  # (whole, this piece's result) -> None
    shard: int = 0


@dataclass(frozen=True)
class Split:
    """The pieces of one output and the array they fill."""

    pieces: list[Piece]
    shape: tuple[int, ...]
    dtype: str

    def assemble(self, results: Sequence[np.ndarray]) -> np.ndarray:
        whole = np.zeros(self.shape, self.dtype)
        for piece, result in zip(self.pieces, results, strict=True):
            piece.place(whole, result)
        return whole


def buffer_limit(limits: Mapping[str, int]) -> int:
    """The largest buffer a device with ``limits`` binds (WebGPU's defaults where unreported)."""
    defaults = {"maxStorageBufferBindingSize": 128 << 20, "maxBufferSize": 256 << 20}
    return min(int(limits.get(name, defaults[name])) for name in BUFFER_LIMITS)


def sized_for(fleet: Sequence[DeviceRecord]) -> list[DeviceRecord]:
    """The devices of ``fleet`` that work is sized for: those done calibrating, and of them
    the ones with WebGPU's full buffer sizes, where there are any.

    So one device never shrinks the others' work: one that caps its buffers below what WebGPU
    guarantees (a phone's own cap, ``--max-buffer-mb``, or a device that lies) takes only the work
    that fits it while any device has the full sizes, and one still calibrating is not counted.
    """
    ready = [d for d in fleet if d.state is not DeviceState.CALIBRATING] or list(fleet)
    return [d for d in ready if buffer_limit(d.limits) >= buffer_limit({})] or ready


def shardable(node: Node) -> bool:
    """Whether :func:`split` can cut ``node`` into more than one shard."""
    return bool(node.shape) and node.shape[0] > 1 and (_plain_matmul(node) or restrict(node, slice(0, 1)) is not None)


def split(
    node: Node, limit: int, wire: str = "f32", weights: Sequence[float] = (1.0,), keys: ContentKeys | None = None
) -> Split:
    """``node``'s computation as shards in proportion to ``weights``, in pieces whose buffers fit ``limit``.

    Raises :class:`DeviceLimitError` naming the limit when the computation cannot be cut to fit.
    """
    keys = keys or ContentKeys()
    if _plain_matmul(node):
        return _matmul(node, limit, wire, weights, keys)
    if shardable(node):
        return _rows(node, limit, wire, weights, keys)
    plan = compile_graph([node], wire, keys)
    if plan.program.largest_buffer <= limit:
        return Split([Piece(plan, _put_rows(0, None))], node.shape, node.dtype)
    raise DeviceLimitError(
        f"{node.text!r} needs a {_largest(node)}-byte buffer, above the device's buffer limit of {limit} bytes "
        f"(maxStorageBufferBindingSize / maxBufferSize); only expressions whose rows can be computed apart are split"
    )


def _plain_matmul(node: Node) -> bool:
    return (
        node.op == "matmul"
        and len(node.args[0].shape) == 2
        and len(node.args[1].shape) == 2
        and all(a.op == "input" or (a.op == "cast" and a.args[0].op == "input") for a in node.args)
    )


def bounds(total: int, weights: Sequence[float], align: int = 1) -> list[tuple[int, int, int]]:
    """``range(total)`` cut in proportion to ``weights``, as ``(shard, start, stop)`` with starts on
    multiples of ``align`` where possible; a shard that would get no rows is left out."""
    shares = [max(float(w), 0.0) for w in weights]
    whole = sum(shares)
    if not whole:
        shares, whole = [1.0] * len(shares), float(len(shares))
    cuts, acc = [0], 0.0
    for share in shares[:-1]:
        acc += share
        cuts.append(min(max(round(total * acc / whole / align) * align, cuts[-1]), total))
    cuts.append(total)
    return [(i, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(cuts)) if hi > lo]


def _largest(node: Node) -> int:
    return max(n.size * 4 for n in topological([node]))


def _matmul(node: Node, limit: int, wire: str, weights: Sequence[float], keys: ContentKeys) -> Split:
    """Shards of C's rows (or columns, when it has more of them), each in blocks that fit ``limit``."""
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
    by_rows = m >= n
    pieces = []
    for shard, lo, hi in bounds(m if by_rows else n, weights, 1 if by_rows else 4):
        rows, cols = ((lo, hi), (0, n)) if by_rows else ((0, m), (lo, hi))
        for i in range(rows[0], rows[1], mb):
            i1 = min(i + mb, rows[1])
            for j in range(cols[0], cols[1], nb):
                j1 = min(j + nb, cols[1])
                for p in range(0, k, kb):
                    graph = Graph()
                    part = graph.apply(
                        "matmul",
                        [graph.input(f"{a_node.text}[{i}:{i1}, {p}:]", a[i:i1, p : p + kb]),
                         graph.input(f"{b_node.text}[{p}:, {j}:{j1}]", b[p : p + kb, j:j1])],
                        {}, node.text,
                    )  # fmt: skip
                    pieces.append(Piece(compile_graph([part], wire, keys), _add_block(i, i1, j, j1), shard))
    return Split(pieces, (m, n), "float32")


def _add_block(r0: int, r1: int, c0: int, c1: int) -> Callable[[np.ndarray, np.ndarray], None]:
    def place(whole: np.ndarray, block: np.ndarray) -> None:
        whole[r0:r1, c0:c1] += block  # K slices add up; other blocks land on zeros

    return place


def _rows(node: Node, limit: int, wire: str, weights: Sequence[float], keys: ContentKeys) -> Split:
    """Shards of ``node``'s first axis, each in chunks of rows that fit ``limit`` (broadcast inputs are not cut)."""
    pieces = []
    for shard, lo, hi in bounds(node.shape[0], weights):
        pieces += _fitted(node, lo, hi, limit, wire, shard, keys)
    return Split(pieces, node.shape, node.dtype)


def _fitted(node: Node, lo: int, hi: int, limit: int, wire: str, shard: int, keys: ContentKeys) -> list[Piece]:
    """Rows ``lo:hi`` of ``node`` as pieces within ``limit``: the whole range if it fits, else chunks
    sized from the first try (checked again, as a buffer need not shrink in proportion)."""
    part = restrict(node, slice(lo, hi))
    assert part is not None  # the caller checked that rows can be cut
    plan = compile_graph([part], wire, keys)
    largest = plan.program.largest_buffer
    if largest <= limit:
        return [Piece(plan, _put_rows(lo, hi), shard)]
    if hi - lo == 1:
        raise DeviceLimitError(
            f"one row of {node.text!r} needs a {largest}-byte buffer, above the device's buffer limit of {limit} bytes"
        )
    step = max(1, min((hi - lo) // 2, (hi - lo) * limit // largest))
    chunks = [(start, min(start + step, hi)) for start in range(lo, hi, step)]
    return [p for start, stop in chunks for p in _fitted(node, start, stop, limit, wire, shard, keys)]


def _put_rows(r0: int, r1: int | None) -> Callable[[np.ndarray, np.ndarray], None]:
    def place(whole: np.ndarray, rows: np.ndarray) -> None:
        whole[r0:r1] = rows

    return place


def _value(node: Node) -> np.ndarray:
    """An input's array (possibly through a cast) in the dtype the device computes it in."""
    leaf = node.args[0].leaf if node.op == "cast" and node.args[0].op == "input" else node.leaf
    if leaf is None:
        raise DeviceLimitError(
            f"{node.text!r} is not an array from the notebook (it is computed first); only such arrays can be cut"
        )
    return leaf.array.astype(node.dtype, copy=False)
