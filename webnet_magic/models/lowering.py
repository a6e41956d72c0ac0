"""ONNX nodes into the op graph: what is known on the host is computed there, the rest runs on devices.

A model is prepared once (:class:`Prepared`): every node whose inputs are all constants
is computed on the host then (``ConstantOfShape`` weights, reshaped initializers), a
``BatchNormalization`` that follows a ``Conv`` is folded into its weights, and every
remaining op is checked against the supported list, so an unsupported op is refused
at load, before anything is sent.

Each call then lowers the remaining nodes with the inputs' real shapes
(:class:`Lowering`): a symbolic batch dimension is simply whatever the call brings.
Values are either :class:`Host` arrays (shape arithmetic: ``Shape``, ``Gather`` on
it, ``Concat`` of it, in int64, evaluated with ONNX's own reference implementation)
or nodes of a :class:`~webnet_magic.ops.graph.Graph`, which compiles into one
program per call.  Weights enter that graph as inputs under their ONNX names;
being large, they carry content keys, so a device that ran the model keeps them and
later calls send only their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DtypeError, ShapeError
from ..ops import Graph, Node
from ..ops.dtypes import to_wire
from .source import ModelError, OnnxGraph, OnnxNode


@dataclass(frozen=True)
class Host:
    """A value known on the host (a constant, or arithmetic on shapes)."""

    array: np.ndarray


Value = Host | Node
#: Lowers one node: (lowering, node, its inputs (None where left out)) -> its outputs.
Handler = Callable[["Lowering", OnnxNode, list["Value | None"]], "Value | list[Value]"]
HANDLERS: dict[str, Handler] = {}
#: Ops whose result is always known on the host (their inputs' shapes suffice).
SHAPE_ONLY = frozenset({"Shape", "Size"})
#: Arrays a call brings with at most this many elements may also serve as axes, pads or shapes.
KNOWN_INPUT = 4096


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return register


@dataclass
class Prepared:
    """A model after load-time folding: its constants, the nodes left for each call, and its weights."""

    graph: OnnxGraph
    constants: dict[str, np.ndarray]
    nodes: list[OnnxNode]
    derived: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (name, form) -> array
    evaluators: dict[int, Any] = field(default_factory=dict)  # id(node) -> its host evaluator
    names: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)  # id(array) -> its name, the array

    def __post_init__(self) -> None:
        self.names.update({id(a): (name, a) for name, a in self.constants.items()})

    def weight(self, name: str, form: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """A constant in a form computed once per model (a transposed weight, a folded scale)."""
        key = (name, form)
        if key not in self.derived:
            array = np.asarray(make(), order="C")
            array.flags.writeable = False
            self.derived[key] = array
            self.names[id(array)] = (f"{name}~{form}", array)
        return self.derived[key]


def prepare(graph: OnnxGraph) -> Prepared:
    """Fold constants, fold BatchNormalization into convolutions, and refuse unsupported ops."""
    constants = dict(graph.initializers)
    remaining: list[OnnxNode] = []
    for node in graph.nodes:
        present = [i for i in node.inputs if i]
        if node.op not in SHAPE_ONLY and all(i in constants for i in present) and node.op != "Dropout":
            for name, value in zip(node.outputs, fold(node, [constants.get(i) for i in node.inputs], graph.opset),
                                   strict=False):  # fmt: skip
                constants[name] = _frozen(value)
        else:
            remaining.append(node)
    remaining = _fold_batchnorm(remaining, constants, graph)
    # Values known on the host at every call: constants, shapes, and arithmetic on them only.  A node
    # computing one needs no device op (ONNX's reference implementation folds it each call).
    known = set(constants)
    on_device = []
    for n in remaining:
        if n.op in SHAPE_ONLY or all(i in known for i in n.inputs if i):
            known.update(n.outputs)
        else:
            on_device.append(n)
    unsupported = [n for n in on_device if n.op not in HANDLERS]
    if unsupported:
        first = unsupported[0]
        kinds = sorted({n.op for n in unsupported})
        raise ModelError(
            f"{first.describe()} is not supported (unsupported op types in this model: {', '.join(kinds)}). "
            f"Supported: {', '.join(supported_ops())}"
        )
    return Prepared(graph, constants, remaining)


def supported_ops() -> list[str]:
    return sorted({*HANDLERS, *SHAPE_ONLY})


def fold(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int,
         evaluators: dict[int, Any] | None = None) -> list[np.ndarray]:  # fmt: skip
    """``node`` evaluated on the host by ONNX's reference implementation (for constants and shapes).

    The node is wrapped in a one-node model of the model's opset, so the reference picks the op's
    version of that opset (Unsqueeze's axes are an attribute in opset 9, an input from 13 on);
    ``evaluators`` keeps each node's evaluator across calls.
    """
    import onnx
    from onnx.reference import ReferenceEvaluator

    if node.op in ("Shape", "Size"):  # only their input's shape matters
        return _shape_op(node, inputs[0].shape)  # type: ignore[union-attr]
    try:
        evaluator = (evaluators or {}).get(id(node))
        if evaluator is None:
            untyped = [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in node.inputs if name]
            results = [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in node.outputs if name]
            graph = onnx.helper.make_graph([node.proto], "fold", untyped, results)
            opsets = [onnx.helper.make_opsetid("", opset)]
            evaluator = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=opsets))
            if evaluators is not None:
                evaluators[id(node)] = evaluator
        feeds = {name: value for name, value in zip(node.inputs, inputs, strict=True) if name}
        return [np.asarray(v) for v in evaluator.run(None, feeds)]
    except Exception as exc:
        raise ModelError(f"{node.describe()} could not be computed on the host: {type(exc).__name__}: {exc}") from None


def _shape_op(node: OnnxNode, shape: tuple[int, ...]) -> list[np.ndarray]:
    if node.op == "Size":
        return [np.asarray(math.prod(shape), np.int64)]
    rank = len(shape)
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    return [np.asarray(shape[slice(start, end)], np.int64)]


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, order="C")
    array.flags.writeable = False
    return array


def _fold_batchnorm(nodes: list[OnnxNode], constants: dict[str, np.ndarray], graph: OnnxGraph) -> list[OnnxNode]:
    """``Conv`` then ``BatchNormalization`` of constants becomes one ``Conv`` with scaled weights.

    Only where the convolution's output feeds nothing else and is no graph output, so the
    folded convolution computes exactly what the pair did (in one pass, not three).
    """
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.inputs:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in graph.outputs}
    producer = {n.outputs[0]: n for n in nodes if n.op == "Conv"}
    folded: dict[int, OnnxNode] = {}
    dropped: set[int] = set()
    for bn in nodes:
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1:
            continue
        conv = producer.get(bn.inputs[0])
        params = bn.inputs[1:5]
        if conv is None or uses.get(conv.outputs[0]) != 1 or conv.outputs[0] in outputs:
            continue
        if not all(p in constants for p in params) or conv.inputs[1] not in constants:
            continue
        if len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in constants:
            continue
        scale, shift, mean, var = (constants[p].astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        w = constants[conv.inputs[1]].astype(np.float64)
        b = constants[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        w_name, b_name = f"{conv.inputs[1]}~bn:{bn.outputs[0]}", f"{bn.outputs[0]}~bias"
        constants[w_name] = _frozen((w * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32))
        constants[b_name] = _frozen(((b - mean) * factor + shift).astype(np.float32))
        folded[id(conv)] = OnnxNode("Conv", (conv.inputs[0], w_name, b_name), bn.outputs, conv.attrs, conv.name, "",
                                    conv.proto)  # fmt: skip
        dropped.add(id(bn))
    return [folded.get(id(n), n) for n in nodes if id(n) not in dropped]


class Lowering:
    """One call's translation of a prepared model into nodes of ``graph``."""

    def __init__(self, model: Prepared, graph: Graph, inputs: Mapping[str, Node]) -> None:
        self.model = model
        self.graph = graph
        self.opset = model.graph.opset
        self.env: dict[str, Value] = {name: Host(a) for name, a in model.constants.items()}
        self.env.update(inputs)

    def run(self) -> list[Value]:
        """Every node in order; the graph's outputs."""
        for node in self.model.nodes:
            args = [None if not name else self._get(name, node) for name in node.inputs]
            present = [a for a in args if a is not None]
            if node.op in SHAPE_ONLY:
                results: list[Value] = [Host(a) for a in _shape_op(node, shape_of(present[0]))]
            elif all(isinstance(a, Host) for a in present) and node.op != "Dropout":
                arrays = [None if a is None else a.array for a in args]  # type: ignore[union-attr]
                results = [Host(_frozen(v)) for v in fold(node, arrays, self.opset, self.model.evaluators)]
            else:
                try:
                    produced = HANDLERS[node.op](self, node, args)
                except (ShapeError, DtypeError) as exc:
                    raise type(exc)(f"{node.describe()}: {exc}") from None
                results = produced if isinstance(produced, list) else [produced]
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    self.env[name] = value
        return [self._get(o.name, None) for o in self.model.graph.outputs]

    def _get(self, name: str, node: OnnxNode | None) -> Value:
        try:
            return self.env[name]
        except KeyError:
            where = f" (needed by {node.describe()})" if node else ""
            raise ModelError(f"the model uses {name!r} before any node makes it{where}") from None

    # -- helpers for the handlers --------------------------------------------------------------

    def device(self, value: Value, name: str = "constant", *, scalar_for: int | None = None) -> Node:
        """``value`` as a node: a host array becomes a graph input (a weight) under ``name``.

        ``scalar_for``: the rank of what it will be combined with elementwise; a one-element
        array of no greater rank then becomes a constant in the kernel, not a buffer.
        """
        if isinstance(value, Node):
            return value
        array = value.array
        if scalar_for is not None and array.size == 1 and array.ndim <= scalar_for and array.dtype.kind in "fiub":
            item = array.reshape(()).item()
            number = float(item) if array.dtype.kind == "f" else int(item)
            if (array.dtype.kind == "f" and math.isfinite(number)) or (
                array.dtype.kind != "f" and -(2**31) <= number < 2**31
            ):
                return self.graph.const(number, repr(number))
        # The model's own constants travel in device dtypes without a word: the caller's arrays are
        # the ones a conversion note is about (bool masks and int64 indices made here are not).
        return self.graph.input(self._name_of(array, name), to_wire(name, array).array)

    def _name_of(self, array: np.ndarray, name: str) -> str:
        """A graph-input name for a host array: its ONNX name when it is one of the model's constants."""
        known = self.model.names.get(id(array))
        if known is not None and known[1] is array:
            return known[0]
        taken = self.graph.inputs
        candidate, k = name, 1
        while candidate in taken and taken[candidate].leaf is not None and taken[candidate].leaf.array is not array:
            k += 1
            candidate = f"{name}~{k}"
        return candidate

    def apply(self, op: str, args: Sequence[Node], node: OnnxNode, **attrs: Any) -> Node:
        return self.graph.apply(op, list(args), attrs, node.describe())

    def elementwise(self, op: str, node: OnnxNode, values: Sequence[Value | None], **attrs: Any) -> Node:
        """``op`` over ``values`` with numpy broadcasting; one-element constants become literals."""
        present = [v for v in values if v is not None]
        rank = max(len(_shape(v)) for v in present)
        args = [self.device(v, _input_name(node, i), scalar_for=rank) for i, v in enumerate(present)]
        if all(a.op == "const" for a in args):  # only literals left: anchor on a real array
            args[0] = self.device(present[0], _input_name(node, 0))
        return self.apply(op, args, node, **attrs)

    def host(self, value: Value | None, node: OnnxNode, what: str) -> np.ndarray:
        """A value that must be known on the host (a shape, axes, pads), or a clear refusal."""
        if value is None:
            raise ModelError(f"{node.describe()} needs its {what}")
        if isinstance(value, Node) and value.op == "input" and value.leaf is not None and value.size <= KNOWN_INPUT:
            return value.leaf.array  # a small array the call brought: its values are known here too
        if isinstance(value, Node):
            raise ModelError(
                f"{node.describe()}: its {what} is computed from the model's inputs, not known before the call; "
                f"only constant or shape-derived {what}s run here"
            )
        return value.array


def _shape(value: Value) -> tuple[int, ...]:
    return value.shape if isinstance(value, Node) else value.array.shape


def shape_of(value: Value) -> tuple[int, ...]:
    return _shape(value)


def _input_name(node: OnnxNode, i: int) -> str:
    present = [name for name in node.inputs if name]
    return present[i] if i < len(present) else f"{node.outputs[0]}:{i}"
