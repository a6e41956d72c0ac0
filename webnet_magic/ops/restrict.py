"""An expression cut down to some rows of its result: for shards, and for spot checks.

Row ``i`` of ``relu(X @ W + b)`` needs only row ``i`` of ``X`` (and all of ``W`` and
``b``), so the expression for rows ``r0:r1`` is the same expression over ``X[r0:r1]``.
:func:`restrict` builds that expression by walking down from the result and cutting
each input that lines up with it; ops whose rows depend on other rows (a transpose that
moves the first axis, a reduction over it, a custom kernel) stop it, and it returns
None.  Sharding a job over devices and recomputing a random sample of a result with
numpy (``--verify``) are both this one cut.
"""

from __future__ import annotations

import numpy as np

from .graph import OPS, Graph, Node, normalize_axis

#: Rows of the result: a slice (a shard) or sorted row indices (a sample).
Rows = slice | np.ndarray


def restrict(node: Node, rows: Rows) -> Node | None:
    """``node``'s expression over only ``rows`` of its first axis, in a new graph; None if it cannot be cut."""
    if not node.shape:
        return None
    return _cut(node, rows, Graph(), {})


def _label(rows: Rows) -> str:
    if isinstance(rows, slice):
        return f"[{rows.start or 0}:{'' if rows.stop is None else rows.stop}]"
    return f"[{len(rows)} rows]"


def _cut(node: Node, rows: Rows | None, graph: Graph, made: dict[tuple[int, bool], Node]) -> Node | None:
    """``node`` over ``rows`` (all of it when ``rows`` is None), memoized per node and cut."""
    key = (id(node), rows is not None)
    if key in made:
        return made[key]
    if node.op == "input":
        assert node.leaf is not None
        array = node.leaf.array if rows is None else node.leaf.array[rows]
        made[key] = graph.input(node.text + ("" if rows is None else _label(rows)), array)
        return made[key]
    if node.op == "const":
        made[key] = graph.const(node.value, node.text)
        return made[key]
    if rows is None:
        arg_rows: list[Rows | None] = [None] * len(node.args)
    else:
        found = _arg_rows(node, rows)
        if found is None:
            return None
        arg_rows = found
    args = []
    for arg, r in zip(node.args, arg_rows, strict=True):
        cut = _cut(arg, r, graph, made)
        if cut is None:
            return None
        args.append(cut)
    made[key] = graph.apply(node.op, args, node.options, node.text)
    return made[key]


def _arg_rows(node: Node, rows: Rows) -> list[Rows | None] | None:
    """Which rows of each argument ``rows`` of ``node`` read (None: all of it); None if not separable."""
    spec = OPS.get(node.op)
    if spec is None or not spec.trusted:
        return None
    ndim = len(node.shape)

    def lined_up(arg: Node) -> Rows | None:  # a broadcast argument (fewer axes, or one row) is read whole
        return rows if len(arg.shape) == ndim and arg.shape[0] == node.shape[0] != 1 else None

    if spec.kind == "elementwise":
        return [lined_up(a) for a in node.args]
    if node.op == "transpose":
        axes = node.options["axes"]
        return [rows] if axes is not None and normalize_axis(axes[0], ndim) == 0 else None
    if node.op == "matmul":
        if ndim == 2 and len(node.args[0].shape) == 2:
            return [rows, None]
        return [lined_up(a) for a in node.args] if ndim >= 3 else None
    if node.op in ("sum", "mean", "prod", "max", "min", "argmax", "argmin"):
        axis = node.options["axis"]
        axes = (axis,) if isinstance(axis, int) else axis
        if axes is None or any(normalize_axis(a, len(node.args[0].shape)) == 0 for a in axes):
            return None
        return [rows]
    if node.op in ("softmax", "log_softmax", "layernorm") and ndim >= 2:  # rows apart unless axis 0 is used
        return [lined_up(a) for a in node.args] if normalize_axis(node.options["axis"], ndim) else None
    if node.op in ("concat", "gather") and normalize_axis(node.options["axis"], len(node.args[0].shape)):
        return [rows] + [None] * (len(node.args) - 1) if node.op == "gather" else [rows] * len(node.args)
    if node.op == "pad" and not node.options["pads"][0] and not node.options["pads"][ndim]:
        return [rows]
    if node.op in ("conv", "conv2d", "maxpool", "avgpool", "global_avgpool", "global_maxpool", "lrn"):
        return [rows] + [None] * (len(node.args) - 1)  # images are independent: cut x, keep w and b whole
    return None
