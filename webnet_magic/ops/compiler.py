"""From a graph to one program: which values get a buffer, and the dispatches that fill them.

A node gets its own buffer ("is materialized") when it is an input, an output, the
argument of a kernel op (matmul, reductions, ...), a kernel op itself, or used more
than once.  Every other elementwise or view node is folded into the fused kernel of
the node that uses it, so ``relu(X @ W + b)`` is two dispatches: the matmul, then
one kernel computing ``max(t + b, 0)``.  A reshape of a value with a buffer is that
buffer under another shape (no dispatch); a reshape of anything else is folded like a
view where it can be (it only splits dimensions), else its argument gets a buffer.

Buffers are reused: once the last dispatch reading a value has been emitted, its
buffer goes back to a pool, and a later value of no larger size takes it (never an
input's, an output's, or one still read through a reshape).  A chain of 100 layers
then holds a few activations at a time, not 100.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .._threads import THREADS, gil_free_pool
from ..broker.records import DeviceRecord
from ..program import Buffer, Kernel, Output, Program, Step, padded
from .dtypes import Leaf, conversion_note
from .graph import OPS, Node, Shape, evaluate, topological
from .half import to_float, to_half
from .indexing import identity

#: Storage buffers a fused kernel reads: WebGPU's default maxStorageBuffersPerShaderStage (8)
#: less the output.  A larger elementwise expression is cut into several kernels.
MAX_FUSED_INPUTS = 7
#: Inputs this large get a content key, so a worker that kept them is not sent them again.
#: (Hashing runs at about 1.5 GB/s a thread; below this size, sending is as cheap as hashing.)
CACHE_MIN_BYTES = 64 * 1024
#: Bytes of an array hashed as one piece (see :func:`content_key`).
HASH_PIECE = 256 * 1024
MAX_GROUPS = 65535  # per dispatch dimension, WebGPU's default limit


@dataclass(frozen=True)
class Value:
    """A materialized value: a contiguous, row-major buffer of ``shape`` and ``dtype``."""

    buffer: int
    shape: Shape
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Builder:
    """Collects a program's inputs, buffers, dispatches and outputs as ops emit them."""

    def __init__(self, keys: ContentKeys, parallelism: int | None = None) -> None:
        self.keys = keys
        #: About how many workgroups the target device runs at once (see :func:`parallelism`): an op
        #: with fewer independent tiles may cut its work further (a convolution splits its sums).
        self.parallelism = GPU_PARALLELISM if parallelism is None else parallelism
        self.inputs: list[np.ndarray] = []
        self.buffers: list[Buffer] = []
        self.steps: list[Step] = []
        self.outputs: list[Output] = []
        self.taken: list[int] = []  # every scratch buffer handed out, in order (a buffer again when reused)
        self._free: list[int] = []  # scratch buffers whose values are dead

    def input(self, array: np.ndarray, cacheable: bool = True) -> int:
        """A buffer filled from ``array``; arrays worth caching on the worker get a content key."""
        self.inputs.append(array)
        key = self.keys(array) if cacheable and self.keys.worth_keeping(array) else None
        self.buffers.append(Buffer(padded(array.nbytes), input=len(self.inputs) - 1, key=key))
        return len(self.buffers) - 1

    def scratch(self, shape: Shape, dtype: str, fresh: bool = False) -> Value:
        """A buffer for a computed value: the smallest free one that holds it, else a new one.

        A reused buffer holds whatever its last value left; ``fresh`` asks for a new
        (zeroed) one, for kernels that may not write every element.
        """
        nbytes = padded(math.prod(shape) * np.dtype(dtype).itemsize)
        fits = [] if fresh else [b for b in self._free if self.buffers[b].size >= nbytes]
        if fits:
            buffer = min(fits, key=lambda b: self.buffers[b].size)
            self._free.remove(buffer)
        else:
            self.buffers.append(Buffer(nbytes))
            buffer = len(self.buffers) - 1
        self.taken.append(buffer)
        return Value(buffer, tuple(shape), dtype)

    def release(self, buffer: int) -> None:
        """``buffer``'s value is dead (every step reading it is emitted): later scratch values may take it."""
        spec = self.buffers[buffer]
        if spec.input is None and not spec.uniform and buffer not in self._free:
            self._free.append(buffer)

    def uniform(self, *words: int | float) -> int:
        """A uniform buffer of 32-bit words (ints as u32, floats as f32), padded to 16 bytes."""
        data = np.zeros(max(4, -(-len(words) // 4) * 4), np.uint32)
        for i, w in enumerate(words):
            data[i] = np.float32(w).view(np.uint32) if isinstance(w, float) else np.uint32(w)
        self.inputs.append(data)
        self.buffers.append(Buffer(data.nbytes, input=len(self.inputs) - 1, uniform=True))
        return len(self.buffers) - 1

    def dispatch(self, kernel: Kernel, bindings: Sequence[int], workgroups: tuple[int, int, int]) -> None:
        self.steps.append(Step(kernel, tuple(bindings), workgroups))

    def output(self, value: Value) -> None:
        self.outputs.append(Output(value.buffer, value.dtype, value.shape))

    def program(self) -> Program:
        return Program(tuple(self.inputs), tuple(self.buffers), tuple(self.steps), tuple(self.outputs))


def content_key(array: np.ndarray) -> str:
    """A hash of the array's bytes, dtype and shape: equal keys mean equal buffers on the device.

    The bytes are hashed in pieces of :data:`HASH_PIECE` on a few threads (hashlib lets go
    of the GIL), and the key hashes the pieces' digests.  In one piece, hashing a job's
    4 MB input and its 4 MB weights took 6.2 ms of a 25 ms job on the lent H200's host.
    """
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    pieces = [data[i : i + HASH_PIECE] for i in range(0, data.size, HASH_PIECE)]
    digests = gil_free_pool().map(_digest, pieces) if len(pieces) > 1 and THREADS > 1 else map(_digest, pieces)
    key = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    for digest in digests:
        key.update(digest)
    return key.hexdigest()[:32]


def _digest(piece: np.ndarray) -> bytes:
    return hashlib.sha256(piece.data).digest()


class ContentKeys:
    """Content keys for one launch: each buffer hashed once, however many programs send it.

    A sharded matmul compiles the whole plan and then every shard and block, each sending
    all of B: hashing B each time cost more than the rest of the launch.  Entries are keyed
    by where the bytes are (address, shape, strides, dtype), so equal views of one block
    share one, and each holds its array so that memory cannot be freed and reused while the
    memo lives.  A memo must not outlive its launch: an array changed in place afterwards
    needs hashing again.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[object, ...], tuple[np.ndarray, str]] = {}
        self._once: set[int] = set()  # ids of arrays used once (a stream's items): never kept

    def worth_keeping(self, array: np.ndarray) -> bool:
        """Whether a worker should keep ``array`` for later jobs: large ones, unless used only once."""
        return array.nbytes >= CACHE_MIN_BYTES and not self.used_once(array)

    def send_once(self, arrays: Iterable[np.ndarray]) -> None:
        """Mark ``arrays`` (and views of them) as one-use data, such as a stream's items.

        Kept on a worker they would only push out what later jobs reuse (the weights), and
        hashing them would cost the notebook time for nothing: they travel unkeyed.
        """
        self._once.update(id(a) for a in arrays)

    def used_once(self, array: np.ndarray) -> bool:
        base: object = array
        while isinstance(base, np.ndarray):
            if id(base) in self._once:
                return True
            base = base.base
        return False

    def __call__(self, array: np.ndarray) -> str:
        where = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
        known = self._known.get(where)
        if known is None:
            known = self._known[where] = (array, content_key(array))
        return known[1]


def _widened(array: np.ndarray, dtype: str) -> np.ndarray:
    """A result in its compute dtype: a float16 one (``--wire f16``) on threads, others by numpy; one
    that came in it already is the received array itself (a view of its message's payload), not a copy."""
    return to_float(array) if array.dtype == np.float16 and dtype == "float32" else array.astype(dtype, copy=False)


def grid(groups: int) -> tuple[int, int, int]:
    """Workgroup counts for ``groups`` workgroups, spread over x and y past 65535.

    Kernels dispatched this way number their workgroups ``wg.y * groups.x + wg.x`` and
    skip invocations past the end (there may be up to one row of spare workgroups).
    """
    groups = max(1, groups)
    x = min(groups, MAX_GROUPS)
    return (x, -(-groups // x), 1)


@dataclass(frozen=True)
class Plan:
    """A compiled job: the program, what each output is for the user, and what was converted."""

    program: Program
    nodes: tuple[Node, ...]
    leaves: tuple[Leaf, ...]

    @property
    def note(self) -> str | None:
        """The one-line dtype-conversion warning for this job, if any input was converted."""
        return conversion_note(list(self.leaves))

    def finish(self, outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The user's results from the worker's (already checked) outputs, in their compute dtypes."""
        return [_widened(np.asarray(o), n.dtype).reshape(n.shape) for o, n in zip(outputs, self.nodes, strict=True)]

    def reference(self) -> list[np.ndarray]:
        """numpy's answer for the same outputs (see :func:`~webnet_magic.ops.graph.evaluate`)."""
        return evaluate(self.nodes)


#: Workgroups a GPU runs at once, as the schedules assume when the target is unknown (an H200 has 132
#: multiprocessors; phones have fewer, but each runs several workgroups).
GPU_PARALLELISM = 256
#: The same for a GPU emulated on CPU cores (lavapipe, SwiftShader): a handful of threads.  Splitting
#: work to fill 256 workgroups there only adds passes (measured: SqueezeNet in SwiftShader 2x slower).
CPU_PARALLELISM = 8
_SOFTWARE = ("llvmpipe", "lavapipe", "swiftshader", "software", "microsoft basic render")


def parallelism(device: DeviceRecord | None) -> int:
    """How many workgroups ``device`` runs at once, judged from its adapter."""
    adapter = device.adapter.lower() if device is not None else ""
    return CPU_PARALLELISM if any(name in adapter for name in _SOFTWARE) else GPU_PARALLELISM


def compile_graph(
    outputs: Sequence[Node], wire: str = "f32", keys: ContentKeys | None = None, parallelism: int | None = None
) -> Plan:
    """One program computing ``outputs``; intermediates stay on the device.

    ``parallelism`` is the target device's (:func:`parallelism`), when the caller knows it.
    ``wire="f16"`` halves the bytes of float32 data both ways: float inputs travel as
    float16 (widened on the device) and float32 results come back as float16 (narrowed on
    the device), at float16's precision (about 3 significant digits) and range (|x| <= 65504).
    """
    from .elementwise import copy, narrow, widen  # the fused-kernel generator is itself an op module

    if wire not in ("f32", "f16"):
        raise ValueError(f"wire must be 'f32' or 'f16', not {wire!r}")

    order = topological(outputs)
    has_buffer = _materialized(order, {id(n) for n in outputs})
    protected = {id(_owner(n, has_buffer)) for n in outputs}
    dying = _last_reads(order, has_buffer)

    # Inputs of custom kernels are not cached on workers: their WGSL is the notebook's, and a
    # kernel that wrote into its input would corrupt what later jobs read.
    untrusted = {id(a) for node in order if node.op in OPS and not OPS[node.op].trusted for a in node.args}

    builder, values = Builder(keys or ContentKeys(), parallelism), {}
    for position, node in enumerate(order):
        if id(node) not in has_buffer:
            continue
        made = len(builder.taken)
        if node.op == "input":
            assert node.leaf is not None
            array = half(node) if wire == "f16" and node.dtype == "float32" else node.leaf.array
            value = Value(builder.input(array, id(node) not in untrusted), node.shape, array.dtype.name)
            values[id(node)] = widen(builder, value) if value.dtype == "float16" else value
        elif _kind(node) == "alias" and id(node.args[0]) in values:
            values[id(node)] = dataclasses.replace(values[id(node.args[0])], shape=node.shape)
        elif _kind(node) == "kernel":
            out = builder.scratch(node.shape, node.dtype, fresh=not OPS[node.op].trusted)
            OPS[node.op].emit(builder, [values[id(a)] for a in node.args], out, node.options)  # type: ignore[misc]
            values[id(node)] = out
        else:
            values[id(node)] = _fused(builder, node, values)
        own = values[id(node)].buffer
        for buffer in builder.taken[made:]:  # parts made on the way (split fused kernels, an op's own scratch)
            if buffer != own:
                builder.release(buffer)
        for owner in dying.get(position, ()):
            if id(owner) not in protected:
                builder.release(values[id(owner)].buffer)
    for node in outputs:
        value = values[id(node)]
        if not builder.steps:  # a program needs a step: a reshaped input comes back through a copy
            value = copy(builder, value)
        builder.output(narrow(builder, value) if wire == "f16" and value.dtype == "float32" else value)
    leaves = tuple(n.leaf for n in order if n.leaf is not None)
    program = dataclasses.replace(builder.program(), work=float(sum(map(flops, order))))
    return Plan(program, tuple(outputs), leaves)


def flops(node: Node) -> int:
    """Floating-point operations of a compute-bound node (matmul, conv, conv2d); 0 for the rest.

    Only these count towards a program's ``work``: they run near a GPU's arithmetic
    peak, so work over time measures a device's speed in a way memory-bound ops do not.
    """
    if node.op == "matmul":
        return 2 * math.prod(node.shape) * node.args[0].shape[-1]
    if node.op in ("conv", "conv2d"):  # each output: a dot product over w's (C / groups, *kernel)
        return 2 * math.prod(node.shape) * math.prod(node.args[1].shape[1:])
    return 0


def _materialized(order: Sequence[Node], wanted: set[int]) -> set[int]:
    """The nodes that get a buffer of their own (or, for a reshape, share its argument's)."""
    uses = Counter(id(a) for node in order for a in node.args)
    forced = {  # kernel ops read buffers; so does a reshape that cannot be folded as a view
        id(a) for node in order if _kind(node) == "kernel" or (_kind(node) == "alias" and not _foldable(node))
        for a in node.args
    }  # fmt: skip
    chosen: set[int] = set()

    def needs(node: Node) -> bool:
        if node.op == "input" or id(node) in wanted or id(node) in forced:
            return True
        if node.op == "const":
            return False
        return _kind(node) == "kernel" or uses[id(node)] > 1 or (_kind(node) == "alias" and id(node.args[0]) in chosen)

    for node in order:  # arguments first, so a reshape knows whether its argument has a buffer
        if needs(node):
            chosen.add(id(node))
    return chosen


def _owner(node: Node, has_buffer: set[int]) -> Node:
    """The node whose buffer holds ``node``'s value (a reshape's is its argument's)."""
    while _kind(node) == "alias" and id(node.args[0]) in has_buffer:
        node = node.args[0]
    return node


def _last_reads(order: Sequence[Node], has_buffer: set[int]) -> dict[int, list[Node]]:
    """For each position in ``order``, the buffers' owners whose last reader is the node there."""
    last: dict[int, tuple[int, Node]] = {}
    for position, node in enumerate(order):
        if id(node) not in has_buffer or node.op == "input":
            continue
        stack = list(node.args)
        while stack:  # the buffers this node's dispatches read: through everything folded into them
            arg = stack.pop()
            if id(arg) in has_buffer:
                owner = _owner(arg, has_buffer)
                last[id(owner)] = (position, owner)
            elif arg.op != "const":
                stack.extend(arg.args)
    dying: dict[int, list[Node]] = {}
    for position, owner in last.values():
        dying.setdefault(position, []).append(owner)
    return dying


def _foldable(node: Node) -> bool:
    """Whether a reshape can be read as a view of its argument (see :func:`.indexing.regroup`)."""
    view = OPS[node.op].view
    return view is not None and view(node, identity(len(node.shape))) is not None


def _fused(builder: Builder, node: Node, values: dict[int, Value]) -> Value:
    """``node`` and the elementwise nodes folded into it as one kernel, or several if it would read
    more than :data:`MAX_FUSED_INPUTS` buffers (the largest folded sub-expression goes first)."""
    from .elementwise import fuse

    while True:
        leaves, inner = _reach(node, values)
        if len(leaves) <= MAX_FUSED_INPUTS:
            break
        child = max(inner, key=lambda n: len(_reach(n, values)[0]))
        values[id(child)] = _fused(builder, child, values)
    out = builder.scratch(node.shape, node.dtype)
    fuse(builder, node, values, out)
    return out


def _reach(node: Node, values: dict[int, Value]) -> tuple[set[int], list[Node]]:
    """The buffers a fused kernel for ``node`` would read, and the nodes it would fold in."""
    leaves: set[int] = set()
    inner: list[Node] = []
    stack = list(node.args)
    while stack:
        arg = stack.pop()
        if id(arg) in values:
            leaves.add(values[id(arg)].buffer)
        elif arg.op != "const":
            inner.append(arg)
            stack.extend(arg.args)
    return leaves, inner


def half(node: Node) -> np.ndarray:
    """An input as float16 for the wire, refused if a value is beyond float16's range."""
    assert node.leaf is not None
    return to_half(node.leaf.array, node.text)


def _kind(node: Node) -> str:
    """``kernel``, ``elementwise``, ``view`` or ``alias``; casts and constants fuse like elementwise ops."""
    spec = OPS.get(node.op)
    return spec.kind if spec is not None else "elementwise"
