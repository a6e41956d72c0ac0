"""From a graph to one program: which values get a buffer, and the dispatches that fill them.

A node gets its own buffer ("is materialized") when it is an input, an output, the
argument of a kernel op (matmul, reductions, ...), a kernel op itself, or used more
than once.  Every other elementwise or view node is folded into the fused kernel of
the node that uses it, so ``relu(X @ W + b)`` is two dispatches: the matmul, then
one kernel computing ``max(t + b, 0)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DtypeError
from ..program import Buffer, Kernel, Output, Program, Step, padded
from .dtypes import Leaf, conversion_note
from .graph import OPS, Node, Shape, evaluate, topological

WORKGROUP = 256  # invocations per workgroup in the 1-D kernels
#: Storage buffers a fused kernel reads: WebGPU's default maxStorageBuffersPerShaderStage (8)
#: less the output.  A larger elementwise expression is cut into several kernels.
MAX_FUSED_INPUTS = 7
#: Inputs this large get a content key, so a worker that kept them is not sent them again.
#: (Hashing runs at about 1.5 GB/s; below this size, sending is as cheap as hashing.)
CACHE_MIN_BYTES = 64 * 1024
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

    def __init__(self, keys: ContentKeys) -> None:
        self.keys = keys
        self.inputs: list[np.ndarray] = []
        self.buffers: list[Buffer] = []
        self.steps: list[Step] = []
        self.outputs: list[Output] = []

    def input(self, array: np.ndarray, cacheable: bool = True) -> int:
        """A buffer filled from ``array``; arrays worth caching on the worker get a content key."""
        self.inputs.append(array)
        key = self.keys(array) if cacheable and array.nbytes >= CACHE_MIN_BYTES else None
        self.buffers.append(Buffer(padded(array.nbytes), input=len(self.inputs) - 1, key=key))
        return len(self.buffers) - 1

    def scratch(self, shape: Shape, dtype: str) -> Value:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        self.buffers.append(Buffer(padded(nbytes)))
        return Value(len(self.buffers) - 1, tuple(shape), dtype)

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
    """A hash of the array's bytes, dtype and shape: equal keys mean equal buffers on the device."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:32]


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

    def __call__(self, array: np.ndarray) -> str:
        where = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
        known = self._known.get(where)
        if known is None:
            known = self._known[where] = (array, content_key(array))
        return known[1]


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
        return [np.asarray(o).astype(n.dtype).reshape(n.shape) for o, n in zip(outputs, self.nodes, strict=True)]

    def reference(self) -> list[np.ndarray]:
        """numpy's answer for the same outputs (see :func:`~webnet_magic.ops.graph.evaluate`)."""
        return evaluate(self.nodes)


def compile_graph(outputs: Sequence[Node], wire: str = "f32", keys: ContentKeys | None = None) -> Plan:
    """One program computing ``outputs``; intermediates stay on the device.

    ``wire="f16"`` halves the bytes of float32 data both ways: float inputs travel as
    float16 (widened on the device) and float32 results come back as float16 (narrowed on
    the device), at float16's precision (about 3 significant digits) and range (|x| <= 65504).
    """
    from .elementwise import narrow, widen  # the fused-kernel generator is itself an op module

    if wire not in ("f32", "f16"):
        raise ValueError(f"wire must be 'f32' or 'f16', not {wire!r}")

    order = topological(outputs)
    uses = Counter(id(a) for node in order for a in node.args)
    feeds_kernel = {id(a) for node in order if _kind(node) == "kernel" for a in node.args}
    wanted = {id(n) for n in outputs}

    # Inputs of custom kernels are not cached on workers: their WGSL is the notebook's, and a
    # kernel that wrote into its input would corrupt what later jobs read.
    untrusted = {id(a) for node in order if node.op in OPS and not OPS[node.op].trusted for a in node.args}

    def materialized(node: Node) -> bool:
        if node.op == "input" or id(node) in wanted or id(node) in feeds_kernel:
            return True
        if node.op == "const":
            return False
        return _kind(node) == "kernel" or uses[id(node)] > 1

    builder, values = Builder(keys or ContentKeys()), {}
    for node in order:
        if not materialized(node):
            continue
        if node.op == "input":
            assert node.leaf is not None
            array = half(node) if wire == "f16" and node.dtype == "float32" else node.leaf.array
            value = Value(builder.input(array, id(node) not in untrusted), node.shape, array.dtype.name)
            values[id(node)] = widen(builder, value) if value.dtype == "float16" else value
        elif _kind(node) == "kernel":
            out = builder.scratch(node.shape, node.dtype)
            OPS[node.op].emit(builder, [values[id(a)] for a in node.args], out, node.options)  # type: ignore[misc]
            values[id(node)] = out
        else:
            values[id(node)] = _fused(builder, node, values)
    for node in outputs:
        value = values[id(node)]
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
    array = node.leaf.array
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > 65504:
        raise DtypeError(
            f"{node.text} has values beyond float16's range (|x| <= 65504), which --wire f16 would make inf; "
            f"send it as float32 (--wire f32)"
        )
    return array.astype(np.float16)


def _kind(node: Node) -> str:
    """``kernel``, ``elementwise`` or ``view``; casts and constants fuse like elementwise ops."""
    spec = OPS.get(node.op)
    return spec.kind if spec is not None else "elementwise"
