"""A loaded model: call it on arrays and it runs on the fleet; its weights travel once.

Each call checks the arrays against the model's inputs (names, shapes with their
symbolic dimensions bound consistently, dtypes), lowers the graph for those shapes
(:mod:`~webnet_magic.models.lowering`) and submits it like any expression.  The
weights are graph inputs with content keys hashed once per model (the arrays are
the model's own, read-only), so a device that ran the model keeps them and later
calls send only their inputs.  With several devices and a batch to cut, the batch
is split over them in proportion to their measured speeds (data parallel).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ops import Graph, Node
from ..ops.compiler import ContentKeys, content_key
from ..ops.dtypes import conversion_note, to_wire
from .lowering import Lowering, Prepared, Value, prepare
from .source import ModelError, OnnxGraph, TensorSpec, parse, read


class WeightKeys(ContentKeys):
    """Content keys for one launch where the model's own weights are hashed once per model.

    A memo may outlive a launch only for arrays nobody can change: the model's weights are
    read-only arrays it owns.  Every other array (the call's inputs) is hashed afresh.
    """

    def __init__(self, weights: ContentKeys, owned: Mapping[int, np.ndarray], transient: Iterable[np.ndarray]) -> None:
        super().__init__()
        self._weights = weights
        self._owned = owned
        self._transient = {id(a) for a in transient}

    def worth_keeping(self, array: np.ndarray) -> bool:
        """Everything but the call's own data stays on the device, however small: the weights (biases too)
        and the tables ops make from the model's shapes (a convolution's taps), so that a call sends
        only its inputs and the kernels."""
        return id(array) not in self._transient or super().worth_keeping(array)

    def add_transient(self, arrays: Iterable[np.ndarray]) -> None:
        """More of the caller's own data (a stream's next item)."""
        self._transient.update(id(a) for a in arrays)

    def __call__(self, array: np.ndarray) -> str:
        """The weights' keys from the model's memo; anything else hashed afresh and not remembered, so
        one set of keys may serve a whole stream of calls without holding on to their arrays."""
        if self._owned.get(id(array)) is array:
            return self._weights(array)
        return content_key(array)


class Model:
    """An ONNX graph (or an exported torch module) ready to run on the fleet.

    Made by :func:`webnet_magic.load_model`.  ``net(X)`` runs it (a tuple for several
    outputs); inside ``%webnet`` expressions ``net(X)`` is a sub-expression like any op.
    """

    def __init__(self, graph: OnnxGraph, name: str | None = None) -> None:
        self.name = name or graph.name
        self._prepared: Prepared = prepare(graph)
        self._weight_keys = ContentKeys()

    # -- what it is ----------------------------------------------------------------------------

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._prepared.graph.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._prepared.graph.outputs)

    @property
    def ops(self) -> Counter[str]:
        """How many nodes of each op type run per call (after folding constants on the host)."""
        return Counter(n.op for n in self._prepared.nodes)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of the constants the devices use (the weights), as they travel (32-bit)."""
        return sum(min(a.itemsize, 4) * a.size for a in self._weights().values())

    def _weights(self) -> dict[str, np.ndarray]:
        used = {i for n in self._prepared.nodes for i in n.inputs}
        return {k: a for k, a in self._prepared.constants.items() if k in used and a.size > 1}

    def __repr__(self) -> str:
        lines = [
            f"<webnet Model {self.name!r}: {sum(self.ops.values())} nodes, {_size(self.parameter_bytes)} of weights"
        ]
        lines += [f"  input  {spec}" for spec in self.inputs]
        lines += [f"  output {spec}" for spec in self.outputs]
        lines.append("  ops    " + ", ".join(f"{op} x{k}" for op, k in self.ops.most_common()) + ">")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{kind}</td><td><code>{html.escape(str(spec))}</code></td></tr>"
            for kind, specs in (("input", self.inputs), ("output", self.outputs))
            for spec in specs
        )
        ops = ", ".join(f"{html.escape(op)} x{k}" for op, k in self.ops.most_common())
        return (
            f"<b>webnet model {html.escape(self.name)}</b>: {sum(self.ops.values())} nodes, "
            f"{_size(self.parameter_bytes)} of weights<table>{rows}</table><small>{ops}</small>"
        )

    # -- lowering --------------------------------------------------------------------------------

    def lower(self, graph: Graph, arrays: Mapping[str, Node]) -> list[Value]:
        """The model's outputs as values of ``graph``, its inputs bound to ``arrays`` (nodes of it)."""
        self._check_shapes({name: node.shape for name, node in arrays.items()})
        return Lowering(self._prepared, graph, arrays).run()

    def __webnet_lower__(self, graph: Graph, args: Sequence[Node], text: str) -> list[Node]:
        """Inside an expression: ``net(X)`` with positional nodes; host-known outputs become inputs."""
        if len(args) != len(self.inputs):
            raise ModelError(f"{text}: {self.name} takes {len(self.inputs)} input(s) ({_names(self.inputs)})")
        values = self.lower(graph, {spec.name: node for spec, node in zip(self.inputs, args, strict=True)})
        return [v if isinstance(v, Node) else graph.input(f"{text}:{i}", v.array) for i, v in enumerate(values)]

    def bind(self, arrays: Sequence[Any], named: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The call's arrays by input name, converted for the wire and checked against the model."""
        specs = self.inputs
        if len(arrays) > len(specs):
            raise ModelError(f"{self.name} takes {len(specs)} input(s) ({_names(specs)}), not {len(arrays)}")
        bound = {spec.name: value for spec, value in zip(specs, arrays, strict=False)}
        for name, value in named.items():
            if name not in {s.name for s in specs}:
                raise ModelError(f"{self.name} has no input {name!r}; its inputs: {_names(specs)}")
            if name in bound:
                raise ModelError(f"{self.name}: input {name!r} given twice")
            bound[name] = value
        missing = [s for s in specs if s.name not in bound]
        if missing:
            raise ModelError(f"{self.name} needs input {missing[0]} (inputs: {_names(specs)})")
        leaves = {name: to_wire(name, value) for name, value in bound.items()}
        self._check_shapes({name: leaf.array.shape for name, leaf in leaves.items()})
        from ..client.session import warn_conversions

        warn_conversions(conversion_note(list(leaves.values())))  # int64 ids narrowed, float64 to float32: said once
        return {spec.name: leaves[spec.name].array for spec in specs}

    def _check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Each input's shape against the model's, symbolic dimensions bound once across inputs."""
        dims: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            shape = shapes[spec.name]
            if spec.shape is None:
                continue
            if len(shape) != len(spec.shape):
                raise ShapeError(
                    f"{self.name}: input {spec} got shape {shape} (rank {len(shape)}, not {len(spec.shape)})"
                )
            for want, got in zip(spec.shape, shape, strict=True):
                if isinstance(want, int) and want > 0 and want != got:
                    raise ShapeError(f"{self.name}: input {spec} got shape {shape}")
                if isinstance(want, str):
                    seen = dims.setdefault(want, (got, spec.name))
                    if seen[0] != got:
                        raise ShapeError(
                            f"{self.name}: dimension {want!r} is {seen[0]} in input {seen[1]!r} but {got} in "
                            f"{spec.name!r}"
                        )

    # -- running ---------------------------------------------------------------------------------

    def __call__(self, *arrays: Any, local: bool = False, session: Any = None, timeout: float | None = None,
                 **named_and_options: Any) -> Any:  # fmt: skip
        """Run the model on the fleet (or with numpy, ``local=True``); a tuple when it has several outputs.

        Inputs by position or by name; the options of :meth:`Session.launch
        <webnet_magic.client.session.Session.launch>` (``devices``, ``shard``, ``verify``,
        ``wire``) and ``timeout`` (the session's if None) apply.
        """
        options = {k: named_and_options.pop(k) for k in LAUNCH_OPTIONS if k in named_and_options}
        bound = self.bind(arrays, named_and_options)
        if local:
            return _single(self.run_local(bound))
        return _single(_runner(session).run_model(self, bound, timeout=timeout, **options))

    def run_local(self, bound: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs computed here with each op's numpy reference: the same graph, no device."""
        from ..client.session import run_local

        graph = Graph()
        values = self.lower(graph, {name: graph.input(name, a) for name, a in bound.items()})
        devices = [v for v in values if isinstance(v, Node)]
        computed = iter(run_local(devices)) if devices else iter(())
        return self.finish([next(computed) if isinstance(v, Node) else v.array for v in values])

    def submit(self, *arrays: Any, session: Any = None, **named_and_options: Any) -> Any:
        """Like calling the model, but returns a :class:`~webnet_magic.client.jobs.Job` at once."""
        options = {k: named_and_options.pop(k) for k in LAUNCH_OPTIONS if k in named_and_options}
        return _runner(session).submit_model(self, self.bind(arrays, named_and_options), **options)

    def map(self, batches: Iterable[Any], *, session: Any = None, **options: Any) -> Iterator[Any]:
        """The model on each batch (an array, or a tuple of arrays for several inputs): results in order.

        A stream (:meth:`Session.map <webnet_magic.client.session.Session.map>`): several batches in
        flight, each device holding a few while the next one's data arrives, faster devices taking
        more; ``options`` as for it (``in_flight``, ``timeout``, ``devices``, ``wire``, ...).  Leaving
        the loop early cancels what is still in flight.
        """
        keys = self.weight_keys()

        def outputs(batch: Any) -> list[Node]:
            bound = self.bind(batch if isinstance(batch, tuple) else (batch,), {})
            keys.add_transient(bound.values())
            keys.send_once(bound.values())  # a batch is used once: sent, never kept on the device
            graph = Graph()
            values = self.lower(graph, {name: graph.input(name, a) for name, a in bound.items()})
            if not all(isinstance(v, Node) for v in values):
                raise ModelError(f"{self.name}: an output is a constant; call the model instead of mapping it")
            return values  # type: ignore[return-value]

        with _runner(session).map(outputs, batches, keys=keys, **options) as stream:
            for result in stream:
                yield _single(self.finish(list(result) if isinstance(result, tuple) else [result]))

    def finish(self, outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs in the dtypes the model declares (int32 back to int64, 0/1 back to bool)."""
        results = []
        for spec, array in zip(self.outputs, outputs, strict=True):
            array = np.asarray(array)
            if spec.dtype == "bool":
                array = array != 0
            elif spec.dtype not in (array.dtype.name, "undefined"):
                array = array.astype(spec.dtype)
            results.append(array)
        return results

    def owns(self, node: Node) -> bool:
        """Whether a graph input is one of this model's weights (not a call's input)."""
        array = node.leaf.array if node.leaf is not None else None
        return array is not None and any(a is array for a in self._owned_arrays())

    def _owned_arrays(self) -> list[np.ndarray]:
        return [a for a in (*self._prepared.constants.values(), *self._prepared.derived.values()) if a.size > 1]

    def weight_keys(self, transient: Iterable[np.ndarray] = ()) -> WeightKeys:
        """Keys for one launch of this model, whose own data is ``transient`` (see :class:`WeightKeys`)."""
        return WeightKeys(self._weight_keys, {id(a): a for a in self._owned_arrays()}, transient)

    def free(self, session: Any = None) -> None:
        """Let every device drop this model's weights (they are sent again by the next call)."""
        keys = self.weight_keys()
        arrays = self._owned_arrays()
        runner = _runner(session)
        for key in {keys(a) for a in arrays}:
            runner.broker.free(key)


#: Keywords of a call that are options, not inputs.
LAUNCH_OPTIONS = ("devices", "shard", "verify", "wire", "progress_after")


def _single(results: list[np.ndarray]) -> Any:
    return results[0] if len(results) == 1 else tuple(results)


def _runner(session: Any) -> Any:
    from ..client.session import current
    from ..errors import BrokerStopped

    runner = session if session is not None else current()
    if runner is None:
        raise BrokerStopped("no webnet broker is running: call webnet_magic.start() (or pass local=True)")
    return runner


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(str(s) for s in specs)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def load_model(source: Any, example: Any = None, *, name: str | None = None, opset: int | None = None) -> Model:
    """A model from an ONNX file path, its bytes, an ``onnx.ModelProto``, or a ``torch.nn.Module``.

    A torch module is exported with ``torch.onnx.export`` using ``example`` (a tensor or
    tuple of them) with its first dimension left symbolic, so any batch size runs.  The
    graph is checked, constants are folded, and every op is checked against the supported
    list before anything is sent: an unsupported op is named with its node.
    """
    proto = read(source, example, opset=opset)
    if name is None and isinstance(source, str):
        import os

        name = os.path.splitext(os.path.basename(source))[0]
    elif name is None and example is not None:
        name = type(source).__name__
    return Model(parse(proto), name)


__all__ = ["Model", "ModelError", "load_model"]
