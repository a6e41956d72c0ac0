"""The few Python forms webnet evaluates from text, read with :mod:`ast` instead of ``eval``.

Text reaches webnet from notebook cells, but also through ``webnet_magic.run(text, ...)``,
where the text may be someone else's.  ``eval`` runs anything (``X[__import__('os').system(...)]``),
and emptied builtins do not stop it (``().__class__.__base__.__subclasses__()``).  So the text is
parsed, every node is checked against the forms below before any of it is evaluated, and
then it is evaluated here, one node at a time:

- names, looked up in the given mapping only (no builtins; ``__dunder__`` names are refused),
- constants (numbers, strings, ``None``, ``...``), tuples, lists and slices,
- subscripts, and attributes that do not start with ``_`` (each use may narrow this),
- arithmetic (``+ - * / // % **`` and unary ``-``/``+``) on real numbers, ``+`` of tuples,
  with powers kept small,
- calls of the few functions a use names (``ceil`` in a kernel's shape), positional only.

Lambdas, comprehensions, ``:=``, f-strings, comparisons and every other call are refused.
"""

from __future__ import annotations

import ast
import numbers
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WebnetError

#: The most bits a power may produce: ``2 ** 4096`` is instant, ``10 ** 10 ** 10`` would hang the kernel.
MAX_POWER_BITS = 4096

_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FORMS = (ast.Name, ast.Constant, ast.Tuple, ast.List, ast.Slice, ast.Subscript, ast.Attribute, ast.BinOp,
          ast.UnaryOp, ast.Call)  # fmt: skip


class Refused(WebnetError, ValueError):
    """Text with a form that is not evaluated (a call, a lambda, a ``__dunder__``, ...); none of it ran."""


def public_attribute(value: object, name: str) -> bool:
    """The default attribute rule: anything not starting with ``_``."""
    return not name.startswith("_")


@dataclass(frozen=True)
class Rules:
    """What one use allows: the names it knows, the functions it may call, the attributes it may read."""

    names: Mapping[str, Any]
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    attribute: Callable[[object, str], bool] = public_attribute


def parse(text: str, functions: Mapping[str, object] | None = None) -> ast.expr:
    """``text`` as one expression, its forms checked (nothing is evaluated); raises :class:`Refused`.

    With ``functions``, a call of any other name is refused too.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise Refused(f"not an expression ({exc.msg})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.expr_context | ast.operator | ast.unaryop):
            continue  # judged with the node they belong to
        snippet = _source(text, node)
        if not isinstance(node, _FORMS):
            raise Refused(f"{snippet!r} cannot be evaluated here ({_kind(node)} is not allowed)")
        if isinstance(node, ast.BinOp | ast.UnaryOp) and type(node.op) not in (*_ARITHMETIC, *_UNARY):
            raise Refused(f"{snippet!r} cannot be evaluated here (only + - * / // % ** on numbers)")
        if isinstance(node, ast.Name) and node.id.startswith("__") and node.id.endswith("__"):
            raise Refused(f"{node.id!r} cannot be used here (names like __this__ are refused)")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise Refused(f"{snippet!r}: attributes starting with '_' cannot be read here")
        if isinstance(node, ast.Call):
            if (
                not isinstance(node.func, ast.Name)
                or node.keywords
                or any(isinstance(a, ast.Starred) for a in node.args)
            ):
                raise Refused(f"{snippet!r}: only a plain call of a named function can be evaluated here")
            if functions is not None and node.func.id not in functions:
                allowed = f"only {', '.join(sorted(functions))} can be" if functions else "no function can be"
                raise Refused(f"{snippet!r}: {allowed} called here")
    return tree


def evaluate(text: str, rules: Rules) -> Any:
    """The value of ``text`` under ``rules``; :class:`Refused` before anything runs if a form is not allowed.

    Errors of the evaluation itself (a missing name, an index out of range) propagate as they are.
    """
    return _Evaluator(rules, text).value(parse(text, rules.functions))


class _Evaluator:
    def __init__(self, rules: Rules, text: str) -> None:
        self.rules, self.text = rules, text

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.rules.names:
                raise NameError(f"name {node.id!r} is not defined", name=node.id)
            return self.rules.names[node.id]
        if isinstance(node, ast.Tuple | ast.List):
            items = [self.value(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Slice):
            return slice(*(None if p is None else self.value(p) for p in (node.lower, node.upper, node.step)))
        if isinstance(node, ast.Subscript):
            return self.value(node.value)[self.value(node.slice)]
        if isinstance(node, ast.Attribute):
            owner = self.value(node.value)
            if not self.rules.attribute(owner, node.attr):
                raise Refused(f"{_source(self.text, node)!r}: .{node.attr} cannot be read here")
            return getattr(owner, node.attr)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.real(node.operand, self.value(node.operand)))
        if isinstance(node, ast.BinOp):
            return self.arithmetic(node)
        if isinstance(node, ast.Call):
            return self.rules.functions[node.func.id](*(self.value(a) for a in node.args))  # type: ignore[attr-defined]
        raise Refused(f"{_source(self.text, node)!r} cannot be evaluated here")  # parse() let nothing else through

    def real(self, node: ast.expr, value: Any) -> Any:
        if not isinstance(value, numbers.Real):
            raise Refused(f"{_source(self.text, node)!r} is {type(value).__name__}; arithmetic here is on numbers")
        return value

    def arithmetic(self, node: ast.BinOp) -> Any:
        left, right = self.value(node.left), self.value(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, tuple) and isinstance(right, tuple):
            return left + right  # x.shape[:-1] + (4,)
        left, right = self.real(node.left, left), self.real(node.right, right)
        if isinstance(node.op, ast.Pow) and _bits(left, right) > MAX_POWER_BITS:
            raise Refused(f"{_source(self.text, node)!r} is too large a power")
        return _ARITHMETIC[type(node.op)](left, right)


def _bits(base: Any, exponent: Any) -> int:
    """About how many bits ``base ** exponent`` takes, for integers (0 for floats: they overflow to an error)."""
    if not (isinstance(base, numbers.Integral) and isinstance(exponent, numbers.Integral)):
        return 0
    return max(abs(int(base)), 1).bit_length() * int(exponent)


def _source(text: str, node: ast.AST) -> str:
    """The text of ``node``, cut short for a message."""
    source = ast.get_source_segment(text.strip(), node) or ast.unparse(node)
    return source if len(source) <= 80 else source[:77] + "..."


def _kind(node: ast.AST) -> str:
    """A user's word for a form: 'a lambda', 'a comprehension', 'a comparison', ..."""
    words = {
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.NamedExpr: "':='",
        ast.JoinedStr: "an f-string",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.IfExp: "'if'",
        ast.Starred: "'*'",
    }
    return words.get(type(node), f"{type(node).__name__}")
