"""From what a user hands :func:`~webnet_magic.load_model` to a checked ONNX graph, read once.

A path, bytes, an ``onnx.ModelProto`` or a ``torch.nn.Module`` (exported with
``torch.onnx.export``; torch is imported only then).  The graph is checked by
``onnx.checker``, its nodes are read into plain :class:`OnnxNode` records (attributes
as Python values), and its initializers become numpy arrays in the dtypes a device
computes in, converted once here rather than on every call.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DtypeError, WebnetError


class ModelError(WebnetError, ValueError):
    """A model that cannot run here: unreadable, an op or attribute not supported, a wrong input."""


@dataclass(frozen=True)
class OnnxNode:
    """One node of the graph, with its attributes as Python values (tensors as numpy arrays)."""

    op: str
    inputs: tuple[str, ...]  # "" where an optional input is left out
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""
    proto: Any = field(default=None, repr=False, compare=False)  # the NodeProto, for folding on the host

    def describe(self) -> str:
        return f"{self.op} node {self.name!r}" if self.name else f"{self.op} node producing {self.outputs[0]!r}"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, shape (an int, or a name for a symbolic dimension) and dtype."""

    name: str
    shape: tuple[int | str, ...] | None  # None: unknown rank
    dtype: str

    def __str__(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "(" + ", ".join(map(str, self.shape)) + ("," if len(self.shape) == 1 else "") + ")"
        )
        return f"{self.name}: {self.dtype}{dims}"


@dataclass
class OnnxGraph:
    """A model's graph as the lowering reads it."""

    nodes: list[OnnxNode]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    initializers: dict[str, np.ndarray]
    opset: int
    name: str


def read(source: Any, example: Any = None, *, opset: int | None = None) -> Any:
    """``source`` as an ``onnx.ModelProto``: a path, bytes, a ModelProto, or a torch module with ``example``."""
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return onnx.load_model_from_string(bytes(source))
    if isinstance(source, str | os.PathLike):
        if not os.path.exists(source):
            raise ModelError(f"no model file at {os.fspath(source)!r}")
        return onnx.load(os.fspath(source))
    if _is_torch_module(source):
        return export_torch(source, example, opset=opset)
    raise ModelError(
        f"cannot load a model from a {type(source).__name__}: give a path to an .onnx file, its bytes, an "
        f"onnx.ModelProto, or a torch.nn.Module with example inputs"
    )


def export_torch(module: Any, example: Any, *, opset: int | None = None) -> Any:
    """A torch module as ONNX, through ``torch.onnx.export`` (the batch dimension left symbolic)."""
    import torch

    if example is None:
        raise ModelError("a torch module needs example inputs: load_model(module, example) with a tensor or tuple")
    args = tuple(example) if isinstance(example, list | tuple) else (example,)
    args = tuple(torch.as_tensor(a) if isinstance(a, np.ndarray) else a for a in args)
    names = [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():  # torch's TorchScript exporter warns that it is not the newest one;
            warnings.simplefilter("ignore", DeprecationWarning)  # it is the one that needs no onnxscript
            torch.onnx.export(
                module,
                args,
                buffer,
                input_names=names,
                output_names=["output"],
                dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
                opset_version=opset or 17,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    return _onnx().load_model_from_string(buffer.getvalue())


def parse(proto: Any) -> OnnxGraph:
    """The checked graph of ``proto``, with constants as numpy arrays and attributes as Python values."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the model is not valid ONNX: {first}") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError("the model imports no version of the standard ONNX operator set")
    graph = proto.graph
    initializers = {t.name: _array(onnx.numpy_helper.to_array(t), t.name) for t in graph.initializer}
    nodes = [_node(n) for n in graph.node]
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            raise ModelError(
                f"{n.describe()} is from the operator domain {n.domain!r}; only standard ONNX ops run here"
            )
    inputs = [_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in graph.output]
    return OnnxGraph(nodes, inputs, outputs, initializers, opset, graph.name or "model")


def _node(n: Any) -> OnnxNode:
    onnx = _onnx()
    attrs: dict[str, Any] = {}
    for a in n.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise ModelError(f"{n.op_type} node {n.name!r} has a subgraph ({a.name}); control flow does not run here")
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = tuple(v.decode() if isinstance(v, bytes) else v for v in value)
        attrs[a.name] = value
    return OnnxNode(n.op_type, tuple(n.input), tuple(n.output), attrs, n.name, n.domain, n)


ELEM_TYPES = {
    0: "undefined", 1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}  # fmt: skip


def _spec(value: Any) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        kind = value.type.WhichOneof("value") or "untyped"
        raise ModelError(f"graph value {value.name!r} is a {kind.replace('_type', '')}; only tensors run here")
    tensor = value.type.tensor_type
    dtype = ELEM_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise ModelError(f"graph value {value.name!r} has ONNX element type {tensor.elem_type}, which cannot run here")
    if not tensor.HasField("shape"):
        return TensorSpec(value.name, None, dtype)
    dims: list[int | str] = []
    for i, d in enumerate(tensor.shape.dim):
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{value.name}:{i}"))
    return TensorSpec(value.name, tuple(dims), dtype)


def _array(array: np.ndarray, name: str) -> np.ndarray:
    """A constant as the lowering keeps it: read-only, contiguous, its ONNX dtype (int64 stays int64
    here: shape arithmetic on the host needs it; it is narrowed only if it goes to a device)."""
    if array.dtype.kind not in "fiub":
        raise DtypeError(f"the model's constant {name!r} has dtype {array.dtype}, which cannot run here")
    if array.dtype == np.float64:  # devices compute in float32: convert once, not on every call
        array = array.astype(np.float32)
    array = np.asarray(array, order="C")
    array.flags.writeable = False
    return array


def _is_torch_module(value: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(value).__mro__)


def _onnx() -> Any:
    try:
        import onnx
        import onnx.numpy_helper
    except ImportError:
        raise ModelError("models need the onnx package: pip install 'webnet-magic[models]'") from None
    return onnx


def names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(str(s) for s in specs)
