"""What a worker runs: WGSL kernels, GPU buffers, dispatches, and which buffers come back.

Workers are generic: they know nothing about matmul or any other op.  An op
(see :mod:`webnet_magic.ops`) turns numpy operands into a :class:`Program`; the
browser worker (``js/gpu.js``) and the native worker (:mod:`webnet_magic.worker.gpu`)
execute it the same way.  Keeping op knowledge in Python means a new op needs
no change to either worker, and a chain of dispatches can keep intermediates on
the device because buffers outlive steps within one program.

Conversion to and from a :class:`~webnet_magic.protocol.Message` lives here too
and is pure: the receiving side checks every index and size before trusting it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence, Set
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .protocol import Message, ProtocolError, array_nbytes


@dataclass(frozen=True)
class Kernel:
    """A WGSL compute shader and its entry point; workers compile each one once, keyed by hash."""

    source: str
    entry: str = "main"

    @cached_property
    def hash(self) -> str:
        return hashlib.sha256(f"{self.entry}\0{self.source}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Buffer:
    """A GPU buffer of ``size`` bytes, filled from ``inputs[input]`` or left zeroed.

    ``key`` (the input's content hash) lets a worker keep the buffer after the job and
    reuse it: in a message, a keyed buffer without ``input`` is one the worker already
    holds, so its bytes are not sent again.
    """

    size: int
    input: int | None = None
    uniform: bool = False
    key: str | None = None


@dataclass(frozen=True)
class Step:
    """One dispatch: binding *i* of group 0 is ``buffers[bindings[i]]``."""

    kernel: Kernel
    bindings: tuple[int, ...]
    workgroups: tuple[int, int, int]


@dataclass(frozen=True)
class Output:
    """A buffer read back after the last step, seen as an array of ``dtype`` and ``shape``."""

    buffer: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Program:
    """Everything one job needs on a device; built by an op, run by a worker.

    ``compile`` lists kernels to compile even if no step uses them: a program of only
    those (no buffers, no steps) checks a custom kernel on a device before first use.
    ``work`` is the floating-point operations of its compute-bound steps (matmul,
    convolution), which the scheduler divides by a device's measured speed to size shards
    and leases; it stays in the notebook.
    """

    inputs: tuple[np.ndarray, ...]
    buffers: tuple[Buffer, ...]
    steps: tuple[Step, ...]
    outputs: tuple[Output, ...]
    compile: tuple[Kernel, ...] = ()
    work: float = 0.0

    @property
    def kernels(self) -> dict[str, Kernel]:
        """Every kernel the worker compiles, by hash."""
        return {k.hash: k for k in (*self.compile, *(s.kernel for s in self.steps))}

    def __post_init__(self) -> None:
        check_structure(self)

    @property
    def largest_buffer(self) -> int:
        return max((b.size for b in self.buffers), default=0)

    @property
    def input_bytes(self) -> int:
        return sum(a.nbytes for a in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    @property
    def workgroups_max(self) -> int:
        return max((max(s.workgroups) for s in self.steps), default=0)

    def to_message(self, job: str, held: Set[str] = frozenset()) -> Message:
        """The ``job`` message; inputs whose key is in ``held`` (the worker has them) are left out."""
        kernels = {h: {"source": k.source, "entry": k.entry} for h, k in self.kernels.items()}
        arrays: list[np.ndarray] = []
        buffers = []
        for b in self.buffers:
            sent = None
            if b.input is not None and b.key not in held:
                sent = len(arrays)
                arrays.append(self.inputs[b.input])
            buffers.append({"size": b.size, "input": sent, "uniform": b.uniform, "key": b.key})
        return Message(
            "job",
            {
                "job": job,
                "kernels": kernels,
                "buffers": buffers,
                "steps": [
                    {
                        "kernel": s.kernel.hash,
                        "bindings": list(s.bindings),
                        "workgroups": list(s.workgroups),
                    }
                    for s in self.steps
                ],
                "outputs": [{"buffer": o.buffer, "dtype": o.dtype, "shape": list(o.shape)} for o in self.outputs],
            },
            arrays,
        )

    @classmethod
    def from_message(cls, message: Message) -> Program:
        """The program a ``job`` message describes; every index and size is checked."""
        f = message.fields
        try:
            kernels = {h: Kernel(_str(k["source"]), _str(k.get("entry", "main"))) for h, k in f["kernels"].items()}
            buffers = tuple(
                Buffer(
                    _int(b["size"]),
                    None if b.get("input") is None else _int(b["input"]),
                    bool(b.get("uniform")),
                    None if b.get("key") is None else _str(b["key"]),
                )
                for b in f["buffers"]
            )
            steps = tuple(
                Step(kernels[s["kernel"]], tuple(map(_int, s["bindings"])), _dims(s["workgroups"])) for s in f["steps"]
            )
            outputs = tuple(
                Output(_int(o["buffer"]), _str(o["dtype"]), tuple(map(_int, o["shape"]))) for o in f["outputs"]
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"malformed job description: {exc!r}") from None
        for h, k in kernels.items():
            if k.hash != h:
                raise ProtocolError(f"kernel {h} does not match its source's hash")
        used = {s.kernel.hash for s in steps}
        return cls(
            tuple(message.arrays), buffers, steps, outputs, tuple(k for h, k in kernels.items() if h not in used)
        )

    def check_results(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The worker's result arrays, refused unless they match ``outputs`` exactly."""
        if len(arrays) != len(self.outputs):
            raise ProtocolError(f"worker returned {len(arrays)} arrays, expected {len(self.outputs)}")
        for i, (a, o) in enumerate(zip(arrays, self.outputs, strict=True)):
            if a.dtype != np.dtype(o.dtype) or a.shape != o.shape:
                raise ProtocolError(
                    f"worker returned output {i} as {a.dtype}{list(a.shape)}, expected {o.dtype}{list(o.shape)}"
                )
        return list(arrays)


def check_structure(p: Program) -> None:
    """Refuse a program whose indices or sizes do not add up, naming the first problem."""
    if not p.steps and not p.compile:
        raise ProtocolError("a program needs at least one step, or kernels to compile")
    for i, b in enumerate(p.buffers):
        if b.size <= 0 or b.size % 4:
            raise ProtocolError(f"buffer {i} has size {b.size}; sizes must be positive multiples of 4")
        if b.key is not None and (len(b.key) > 64 or b.uniform):
            raise ProtocolError(f"buffer {i} has a key that is too long, or is a uniform buffer")
        if b.input is not None:
            if not 0 <= b.input < len(p.inputs):
                raise ProtocolError(f"buffer {i} reads input {b.input}, which does not exist")
            if p.inputs[b.input].nbytes > b.size:
                raise ProtocolError(f"buffer {i} is smaller than input {b.input}")
    for i, s in enumerate(p.steps):
        for buf in s.bindings:
            if not 0 <= buf < len(p.buffers):
                raise ProtocolError(f"step {i} binds buffer {buf}, which does not exist")
        if any(w < 1 for w in s.workgroups):
            raise ProtocolError(f"step {i} dispatches {s.workgroups} workgroups; each must be >= 1")
    for i, o in enumerate(p.outputs):
        if not 0 <= o.buffer < len(p.buffers):
            raise ProtocolError(f"output {i} reads buffer {o.buffer}, which does not exist")
        if array_nbytes(o.dtype, o.shape) > p.buffers[o.buffer].size:
            raise ProtocolError(f"output {i} is larger than buffer {o.buffer}")
        if p.buffers[o.buffer].uniform:
            raise ProtocolError(f"output {i} reads a uniform buffer, which cannot be copied out")


def padded(nbytes: int) -> int:
    """A WebGPU buffer size for ``nbytes`` of data: a multiple of 4, never zero."""
    return max(4, -(-nbytes // 4) * 4)


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{v!r} is not an integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v


def _dims(v: Any) -> tuple[int, int, int]:
    if not isinstance(v, list) or len(v) != 3:
        raise TypeError(f"workgroups {v!r} is not a list of three integers")
    return (_int(v[0]), _int(v[1]), _int(v[2]))


__all__ = ["Buffer", "Kernel", "Output", "Program", "Step", "padded"]
