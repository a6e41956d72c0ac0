"""Expressions such as ``relu(X @ W1 + b1) @ W2``, read with Python's own parser into a graph.

The syntax is Python's: ``@ + - * / **`` and unary minus, calls of the ops in
:data:`~webnet_magic.ops.OPS` (keyword arguments are their options: ``sum(X, axis=1)``),
``.T`` for a transpose, number constants, and tuples for several results.  A loaded model
(:func:`webnet_magic.load_model`) is called like an op: ``softmax(net(X))``, ``net(X)[1]``.  Any other
sub-expression (a name, ``model.weight``, ``X[:, :10]``, ``params["W1"][k - 1]``) is an array
looked up in the notebook's namespace and sent as an input: names, attributes not starting with
``_``, subscripts, slices and arithmetic on numbers, and nothing else (no calls, no lambdas), since
the text may be someone else's (``webnet_magic.run(text)``).  A cell body may also hold assignments
(``H = relu(X @ W1 + b1)`` then ``Y = H @ W2``); the names they bind are values on the
device, usable in later lines, and come back only if asked for after ``->``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import WebnetError
from ..ops import OPS, Graph, Node
from ..restricted import Refused, Rules, evaluate

BINARY = {
    ast.Add: "add",
    ast.Sub: "sub",
    ast.Mult: "mul",
    ast.Div: "div",
    ast.MatMult: "matmul",
    ast.Pow: "pow",
}


class ExpressionError(WebnetError, ValueError):
    """An expression that cannot run: bad syntax, an unknown function, an option that is not a constant."""


#: Looks up an array expression (a name, an attribute, a subscript) in the caller's namespace.
Resolve = Callable[[str], object]


def parse(text: str, graph: Graph, resolve: Resolve) -> list[Node]:
    """The nodes for an expression (a tuple gives several), or a program of assignments.

    For a program, the nodes returned are its last expression's, if it ends with one;
    use :func:`parse_program` to get the names it binds.
    """
    bound = parse_program(text, graph, resolve)
    return bound.pop("", [])  # type: ignore[return-value]


def parse_program(text: str, graph: Graph, resolve: Resolve) -> dict[str, Any]:
    """Every name a block of ``name = expression`` lines binds (and "" for a final expression)."""
    try:
        tree = ast.parse(text.strip(), mode="exec")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} in {text.strip()!r}") from None
    reader = _Reader(graph, resolve, text)
    bound: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
            value = reader.node(statement.value)
            for target in statement.targets:
                bound[target.id] = reader.local[target.id] = value  # type: ignore[attr-defined]
        elif isinstance(statement, ast.Expr):
            final = statement.value
            items = final.elts if isinstance(final, ast.Tuple) else [final]
            bound[""] = [reader.node(item) for item in items]
        else:
            snippet = ast.get_source_segment(text.strip(), statement) or type(statement).__name__
            raise ExpressionError(f"only expressions and 'name = expression' lines can run; not {snippet!r}")
    return bound


class _Reader:
    def __init__(self, graph: Graph, resolve: Resolve, text: str) -> None:
        self.graph, self.resolve, self.text = graph, resolve, text.strip()
        self.local: dict[str, Node] = {}

    def source(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ast.unparse(node)

    def node(self, tree: ast.expr) -> Node:
        text = self.source(tree)
        if isinstance(tree, ast.BinOp) and type(tree.op) in BINARY:
            args = [self.node(tree.left), self.node(tree.right)]
            return self.graph.apply(BINARY[type(tree.op)], args, {}, text)
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub | ast.UAdd):
            if isinstance(tree.operand, ast.Constant):  # -2 is a constant, not neg(2)
                return self.constant(tree)
            inner = self.node(tree.operand)
            return inner if isinstance(tree.op, ast.UAdd) else self.graph.apply("neg", [inner], {}, text)
        if isinstance(tree, ast.Constant):
            return self.constant(tree)
        if isinstance(tree, ast.Attribute) and tree.attr == "T":
            return self.graph.apply("transpose", [self.node(tree.value)], {}, text)
        if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id in OPS:
            args = [self.node(a) for a in tree.args]
            options = {k.arg: self.option(k.value, tree.func.id) for k in tree.keywords if k.arg}
            return self.graph.apply(tree.func.id, args, options, text)
        if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name):
            outputs = self.model_call(tree)
            if outputs is None:
                ops = ", ".join(sorted(OPS))
                raise ExpressionError(f"unknown function {tree.func.id!r} in {text!r}; ops: {ops}, or a loaded model")
            if len(outputs) != 1:
                raise ExpressionError(
                    f"{text!r} has {len(outputs)} outputs; pick one with {text}[0] ... [{len(outputs) - 1}]"
                )
            return outputs[0]
        outputs = self.model_call(tree.value) if _called_by_name(tree) else None
        if outputs is not None:
            index = self.option(tree.slice, tree.value.func.id)
            if not isinstance(index, int) or not -len(outputs) <= index < len(outputs):
                raise ExpressionError(
                    f"{text!r}: the model has {len(outputs)} outputs; index them 0 to {len(outputs) - 1}"
                )
            return outputs[index]
        if isinstance(tree, ast.Name) and tree.id in self.local:
            return self.local[tree.id]
        if isinstance(tree, ast.Name | ast.Attribute | ast.Subscript):
            root: ast.expr = tree
            while isinstance(root, ast.Attribute | ast.Subscript):
                root = root.value
            if isinstance(root, ast.Name) and root.id in self.local:  # not the notebook's variable of that name
                raise ExpressionError(
                    f"{text!r}: {root.id} is computed in this cell; slicing or attributes of it cannot run on the "
                    f"device (use it whole, or slice its inputs)"
                )
            return self.graph.input(text, self.resolve(text))
        raise ExpressionError(f"{text!r} cannot run on a device; use arrays, numbers, ops and @ + - * / **")

    def model_call(self, tree: ast.Call) -> list[Node] | None:
        """``net(X, ...)`` where ``net`` is a loaded model (:class:`~webnet_magic.models.Model`): its output
        nodes; None when the name is no model."""
        try:
            target = self.resolve(tree.func.id)  # type: ignore[attr-defined]
        except ExpressionError:
            return None
        lower = getattr(target, "__webnet_lower__", None)
        if lower is None:
            return None
        if tree.keywords:
            raise ExpressionError(f"{self.source(tree)!r}: inside an expression a model takes its inputs in order")
        return lower(self.graph, [self.node(a) for a in tree.args], self.source(tree))

    def constant(self, tree: ast.expr) -> Node:
        try:
            value = ast.literal_eval(tree)
        except ValueError:
            value = None
        return self.graph.const(value, self.source(tree))

    def option(self, tree: ast.expr, op: str) -> Any:
        try:
            return ast.literal_eval(tree)
        except ValueError:
            raise ExpressionError(f"{op}'s options must be constants, not {self.source(tree)!r}") from None


def _called_by_name(tree: ast.expr) -> bool:
    """``name(...)[...]``: possibly one output of a model call."""
    return (
        isinstance(tree, ast.Subscript) and isinstance(tree.value, ast.Call) and isinstance(tree.value.func, ast.Name)
    )


def namespace_resolver(namespace: Mapping[str, Any], where: str = "") -> Resolve:
    """Evaluates array expressions in ``namespace`` (``where``: "in the notebook"), naming what is missing.

    Names, attributes, subscripts, slices and index arithmetic only (see :mod:`~webnet_magic.restricted`):
    the text may be someone else's (``webnet_magic.run(text)``), so it is not given to ``eval``.
    """
    rules = Rules(namespace)

    def resolve(text: str) -> object:
        try:
            return evaluate(text, rules)
        except NameError as exc:
            raise ExpressionError(f"{exc.name or text!r} is not defined {where}".rstrip()) from None
        except Refused as exc:
            raise ExpressionError(f"cannot evaluate {text!r}: {exc}") from None
        except Exception as exc:
            raise ExpressionError(f"cannot evaluate {text!r}: {type(exc).__name__}: {exc}") from None

    return resolve
