"""The ops webnet_magic runs on a device, each a ``.wgsl`` kernel beside the Python that plans it.

Every op is an :class:`~webnet_magic.ops.graph.OpSpec` in :data:`OPS`: how to type it
(shapes and dtypes, checked before anything is sent), how to compute it on the
device, numpy's answer (``reference``) and how far the device may be from it
(``tolerance``).  Single calls and whole expressions go through the same path:
build a :class:`~webnet_magic.ops.graph.Graph`, then
:func:`~webnet_magic.ops.compiler.compile_graph` it into one program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import conv, elementwise, functions, logic, lrn, matmul, pool, reduce, rows, tensor  # noqa: F401  (importing registers the ops)
from .compiler import Plan, compile_graph
from .graph import OPS, Graph, Node, evaluate


def call(op: str, *arrays: object, names: Sequence[str] | None = None, **options: Any) -> Node:
    """The node for ``op(*arrays, **options)``, checked; arrays are named ``a0, a1, ...`` unless named."""
    graph = Graph()
    names = tuple(names) if names else tuple(f"a{i}" for i in range(len(arrays)))
    args = [graph.input(name, value) for name, value in zip(names, arrays, strict=True)]
    return graph.apply(op, args, options, f"{op}({', '.join(names)})")


def plan(op: str, *arrays: object, **options: Any) -> Plan:
    """The compiled program for one op call (see :func:`call`)."""
    return compile_graph([call(op, *arrays, **options)])


def error_ratio(node: Node, result: np.ndarray) -> float:
    """How far ``result`` is from numpy's answer for ``node``, as a fraction of the op's tolerance.

    The largest, over all elements, of |result - exact| / bound: at most 1 means every
    element is within the op's stated tolerance.  ``exact`` is numpy's (float64 where
    it matters) answer for the same converted arguments; elements where both are NaN agree.
    """
    spec = OPS[node.op]
    args = evaluate(node.args)
    exact = np.asarray(spec.reference(*args, **node.options), dtype=np.float64).reshape(node.shape)
    bound = np.broadcast_to(np.asarray(spec.tolerance(exact, *args, **node.options), np.float64), exact.shape)
    got = np.asarray(result, dtype=np.float64)
    same = (got == exact) | (np.isnan(got) & np.isnan(exact))  # equal infinities, NaN for NaN
    with np.errstate(invalid="ignore"):
        error = np.where(same, 0.0, np.abs(got - exact))
    error = np.where(np.isnan(error), np.inf, error)  # NaN on one side only is a failure
    return float(np.max(error / np.maximum(bound, 1e-300), initial=0.0))


__all__ = ["OPS", "Graph", "Node", "Plan", "call", "compile_graph", "error_ratio", "evaluate", "plan"]
