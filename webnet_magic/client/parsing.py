"""Parsing a ``%webnet`` line: ``matmul A B -> C --timeout 5``.

argparse reads ``->`` as an option, so the line is split on the first ``->``
before argparse sees it (jupysql pre-parses its ``<<`` the same way): what
comes after is output names, then options.  Operands are Python expressions
(``A``, ``A.T``, ``X[:, :10]``) checked for syntax here and evaluated later in
the notebook's namespace; outputs must be plain variable names.
"""

from __future__ import annotations

import argparse
import keyword
import math
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..ops import OPS


class MagicSyntaxError(ValueError):
    """A ``%webnet`` line that does not parse; the message says what the line should look like."""


@dataclass(frozen=True)
class Command:
    """One parsed ``%webnet`` line."""

    name: str
    operands: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise MagicSyntaxError(f"%webnet {self.prog.split()[-1]}: {message}. Try %webnet help")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise MagicSyntaxError(message or self.format_usage())


_OP_OPTIONS = "[--timeout S] [--device ID] [--local]"

#: One line per sub-command, shown by ``%webnet help``.
SUBCOMMANDS = {
    "start": "start the broker here and show the QR code + device panel  [--port N] [--host H]",
    "stop": "stop the broker, disconnect every device",
    "status": "the broker's URL and devices",
    "devices": "a table of connected devices",
    "url": "print the worker URL (with its token) as plain text",
    **{name: f"{op.USAGE}  {_OP_OPTIONS}" for name, op in OPS.items()},
    "help": "this list",
}


def _port(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"--port must be 0 to 65535, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"--timeout must be a positive number of seconds, not {text!r}")
    return seconds


def _build() -> _Parser:
    parser = _Parser(prog="%webnet", add_help=False)
    sub = parser.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    start = sub.add_parser("start", prog="%webnet start", add_help=False)
    start.add_argument("--port", type=_port, help="port to listen on (0: any free port)")
    start.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    for name in ("stop", "status", "devices", "url", "help"):
        sub.add_parser(name, prog=f"%webnet {name}", add_help=False)
    for name in OPS:
        op = sub.add_parser(name, prog=f"%webnet {name}", add_help=False)
        op.add_argument("operands", nargs="*", metavar="X")
        op.add_argument("--timeout", type=_seconds, help="seconds to wait for a device and the result")
        op.add_argument("--device", help="run on this device id (see %%webnet devices)")
        op.add_argument("--local", action="store_true", help="compute with numpy here, no device")
    return parser


_PARSER = _build()


def parse(line: str) -> Command:
    """Parse one ``%webnet`` line (without the ``%webnet``)."""
    left, arrow, right = line.partition("->")
    try:
        tokens = shlex.split(left)
        after = shlex.split(right)
    except ValueError as exc:
        raise MagicSyntaxError(f"%webnet: cannot split the line: {exc}") from None
    if not tokens:
        raise MagicSyntaxError("%webnet needs a command: " + ", ".join(SUBCOMMANDS) + ". Try %webnet help")
    if tokens[0] not in SUBCOMMANDS:
        raise MagicSyntaxError(
            f"%webnet: unknown command {tokens[0]!r}; choose from {', '.join(SUBCOMMANDS)}"
        )
    outputs: list[str] = []
    while after and not after[0].startswith("-"):
        outputs += [name for name in after.pop(0).split(",") if name]
    if arrow and not outputs:
        raise MagicSyntaxError("%webnet: nothing after '->'; name the variable to bind, e.g. -> C")
    namespace = _PARSER.parse_args(tokens + after)
    options = {k: v for k, v in vars(namespace).items() if k not in ("name", "operands") and v is not None}
    operands = tuple(getattr(namespace, "operands", ()) or ())
    if arrow and namespace.name not in OPS:
        raise MagicSyntaxError(f"%webnet {namespace.name} takes no '->' output")
    if namespace.name in OPS:
        op = OPS[namespace.name]
        if len(operands) != op.ARITY:
            raise MagicSyntaxError(
                f"%webnet {namespace.name} takes {op.ARITY} operands, got {len(operands)}: "
                f"%webnet {namespace.name} {op.USAGE}"
            )
        if len(outputs) > op.RESULTS:
            raise MagicSyntaxError(
                f"%webnet {namespace.name} gives {op.RESULTS} result(s); name that many after '->', "
                f"not {len(outputs)}"
            )
    for expr in operands:
        _check_expression(expr)
    for name in outputs:
        _check_output(name)
    return Command(namespace.name, operands, tuple(outputs), options)


def _check_expression(expr: str) -> None:
    try:
        compile(expr, "<webnet operand>", "eval")
    except SyntaxError as exc:
        raise MagicSyntaxError(f"%webnet: operand {expr!r} is not a Python expression ({exc.msg})") from None


def _check_output(name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise MagicSyntaxError(f"%webnet: cannot bind to {name!r}; outputs must be variable names like C")


def help_text() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["%webnet COMMAND ...   (also as a cell of one line: %%webnet COMMAND ...)"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines.append("Without '-> NAME', an op returns its result: C = %webnet matmul A B")
    return "\n".join(lines)
