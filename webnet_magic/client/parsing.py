"""Parsing a ``%webnet`` line: a sub-command, or something to compute and where to put it.

::

    %webnet start --port 8765                  a sub-command (argparse; --help on any of them)
    %webnet relu(X @ W1 + b1) @ W2 -> Y        an expression, bound to Y
    %webnet matmul A B -> C --timeout 5        an op with its operands, the same as matmul(A, B)
    %%webnet -> H, Y                           a cell of assignments; H and Y come back

argparse reads ``->`` as an option, so the line is split on the first ``->`` before
argparse sees it (jupysql pre-parses its ``<<`` the same way): after it come output
names, then options.  The expression itself is checked for Python syntax here and
read into a graph later (:mod:`~webnet_magic.client.expressions`).  A word that is no
command, op or notebook name but close to a command (``stats``) is taken for a typo.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import keyword
import math
import re
import shlex
from collections.abc import Container
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from ..ops import OPS


class MagicSyntaxError(ValueError):
    """A ``%webnet`` line that does not parse; the message says what the line should look like."""


@dataclass(frozen=True)
class Command:
    """One parsed ``%webnet`` line: ``name`` is a sub-command, or ``run`` for a computation."""

    name: str
    expression: str = ""
    outputs: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


class _Help(Exception):
    """``--help`` was asked for: its text, to print instead of running anything."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel (or printing from inside the parser)."""

    def error(self, message: str) -> NoReturn:
        raise MagicSyntaxError(f"{message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise MagicSyntaxError(message or self.format_usage())

    def print_help(self, file: IO[str] | None = None) -> NoReturn:  # type: ignore[override]
        raise _Help(self.format_help())


#: What each sub-command does, shown by ``%webnet help`` (its options come from its parser).
SUBCOMMANDS = {
    "start": "start the broker here and show the QR code + device panel",
    "stop": "stop the broker, disconnect every device",
    "status": "the broker's URL and devices",
    "devices": "a table of connected devices",
    "url": "print the worker URL (with its token) as plain text",
    "kernel": "define an op from WGSL in the cell below this line",
    "load": "load an ONNX model (a path, or a variable: ModelProto, bytes, torch module) and bind it",
    "put": "keep these arrays on every device: later jobs send none of their bytes",
    "free": "let devices drop what put kept",
    "help": "this text",
}


def _port(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"--port must be 0 to 65535, not {text!r}")
    return int(text)


def _jobs(text: str) -> int:
    if not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"--depth must be a positive number of jobs, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"--timeout must be a positive number of seconds, not {text!r}")
    return seconds


def _shard(text: str) -> str | int:
    if text in ("auto", "off"):
        return text
    if not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"--shard must be auto, off or a number of shards, not {text!r}")
    return int(text)


def _devices(text: str) -> str:
    if text != "all" and not all(re.fullmatch(r"[A-Za-z0-9_-]+", d) for d in text.split(",")):
        raise argparse.ArgumentTypeError(f"--devices takes ids like d1,d2 (see %webnet devices) or all, not {text!r}")
    return text


def _build() -> tuple[_Parser, dict[str, _Parser], _Parser]:
    commands = _Parser(prog="%webnet", add_help=False)
    sub = commands.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    parsers = {
        name: sub.add_parser(name, prog=f"%webnet {name}", description=text) for name, text in SUBCOMMANDS.items()
    }
    start = parsers["start"]
    start.add_argument("--port", type=_port, help="port to listen on (0: any free port)")
    start.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    start.add_argument(
        "--tunnel",
        choices=("auto", "ngrok", "off"),
        help="reach phones through ngrok: auto (default: in Colab/Kaggle with a token), ngrok, off",
    )
    start.add_argument("--authtoken", "--token", dest="authtoken", help="ngrok authtoken (better: NGROK_AUTHTOKEN)")
    start.add_argument(
        "--lan",
        nargs="?",
        const=True,
        metavar="ADDRESS",
        help="serve https on this Wi-Fi (default: this machine's LAN address)",
    )
    start.add_argument(
        "--depth", type=_jobs, help="jobs each device holds at once (default: by its link and speed; 1: no pipelining)"
    )
    for name in ("put", "free"):
        parsers[name].add_argument("names", nargs="+", metavar="NAME", help="a notebook variable holding an array")
    kernel = parsers["kernel"]
    kernel.prog = "%%webnet kernel"  # a cell: the WGSL goes below this line
    kernel.usage = "%(prog)s NAME(x, y, a: f32) -> out[SHAPE] [--workgroups auto|EXPR,EXPR,EXPR]"
    kernel.add_argument(
        "--workgroups",
        nargs="+",
        default=["auto"],
        metavar="EXPR",
        help="auto (default): one invocation per output element; or the counts as expressions of the inputs "
        "(x.size, x.shape[0], ceil(x.size / 64))",
    )
    load = parsers["load"]
    load.usage = "%(prog)s MODEL [EXAMPLE] -> NAME"
    load.add_argument("model", help="an .onnx path, or a notebook variable holding a model")
    load.add_argument("example", nargs="?", help="for a torch module: a variable holding example inputs")
    run = _Parser(prog="%webnet EXPRESSION -> NAMES")
    run.add_argument("--timeout", type=_seconds, metavar="S", help="seconds to wait for a device and the result")
    run.add_argument(
        "--devices", "--device", type=_devices, metavar="ID,ID|all", help="run on these device ids only (default all)"
    )
    run.add_argument(
        "--shard", type=_shard, metavar="auto|N|off", help="cut the job over devices: auto (default), N shards, or off"
    )
    run.add_argument("--verify", action="store_true", help="check results here; a device that fails is banned")
    run.add_argument("--bg", "--noblock", action="store_true", help="return a handle at once; bind on completion")
    run.add_argument("--local", action="store_true", help="compute with numpy here, no device")
    run.add_argument("--wire", choices=("f32", "f16"), help="f16: float data travels as float16 (half the bytes)")
    return commands, parsers, run


_COMMANDS, _PARSERS, _RUN = _build()
_OPTION = re.compile(r"(?:^|\s)(--[A-Za-z]|-h(?:\s|$))")


def parse(line: str, cell: str | None = None, names: Container[str] = ()) -> Command:
    """Parse one ``%webnet`` line (without the ``%webnet``); ``cell`` is the body of a ``%%webnet`` cell.

    ``names`` are the notebook's variables: a word among them is never taken for a misspelt command.
    ``--help`` gives a ``help`` command holding the text to show, and nothing else is done.
    """
    try:
        return _parse(line, cell, names)
    except _Help as asked:
        return Command("help", options={"text": str(asked)})


def _parse(line: str, cell: str | None, names: Container[str]) -> Command:
    if line.split() in (["--help"], ["-h"]):
        raise _Help(help_text())
    if line.split()[:1] == ["kernel"]:
        return _kernel(line, cell)
    if line.split()[:1] == ["load"]:
        return _load(line, cell)
    left, arrow, right = line.partition("->")
    expression, left_options = _split_options(left)
    try:
        option_tokens = shlex.split(left_options)
        after = shlex.split(right)
    except ValueError as exc:
        raise MagicSyntaxError(f"cannot split the line: {exc}") from None
    outputs: list[str] = []
    while after and not after[0].startswith("-"):
        outputs += [name for name in after.pop(0).split(",") if name]
    if arrow and not outputs:
        raise MagicSyntaxError("nothing after '->'; name the variable to bind, e.g. -> C")
    for name in outputs:
        _check_output(name)
    words = expression.split()
    if words and words[0] in SUBCOMMANDS:
        namespace = _COMMANDS.parse_args(shlex.split(left) + after)  # --help first: it runs nothing
        if arrow:
            raise MagicSyntaxError(f"%webnet {words[0]} takes no '->' output")
        if cell and cell.strip():
            raise MagicSyntaxError(f"%%webnet {words[0]} takes no cell body; put nothing under the first line")
        return Command(namespace.name, options={k: v for k, v in vars(namespace).items() if k != "name" and v})
    if words and words[0].isidentifier() and words[0] not in OPS and words[0] not in names:
        _not_a_typo(words[0])
    options = vars(_RUN.parse_args(option_tokens + after))
    text = _expression(words, expression, cell)
    return Command("run", text, tuple(outputs), {k: v for k, v in options.items() if v is not None})


def _not_a_typo(word: str) -> None:
    """Refuse a word close to a command (``stats``, ``strat``) rather than read it as a variable."""
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=2, cutoff=0.75)
    if close:
        raise MagicSyntaxError(f"{word!r} is no command or variable; did you mean {' / '.join(close)}? (%webnet help)")


def _kernel(line: str, cell: str | None) -> Command:
    """``kernel NAME(x, a: f32) -> out[SHAPE] [--workgroups ...]``: its signature (checked by
    :mod:`webnet_magic.ops.custom`; its '->' is part of it) and its options."""
    signature, options = _split_options(line.split(None, 1)[1] if len(line.split()) > 1 else "")
    try:
        tokens = shlex.split(options)
    except ValueError as exc:
        raise MagicSyntaxError(f"cannot split the line: {exc}") from None
    parsed = _PARSERS["kernel"].parse_args(tokens)  # --help first: it needs no cell
    if not (cell and cell.strip()):
        raise MagicSyntaxError("%%webnet kernel needs the WGSL source in the cell body, under the first line")
    return Command("kernel", cell, options={"signature": signature.strip(), "workgroups": " ".join(parsed.workgroups)})


def _load(line: str, cell: str | None) -> Command:
    """``load MODEL [EXAMPLE] -> NAME``: the model's source and, for a torch module, its example inputs."""
    left, arrow, right = line.rpartition("->")
    try:
        words, outputs = shlex.split(left or right), shlex.split(right) if arrow else []
    except ValueError as exc:
        raise MagicSyntaxError(f"cannot split the line: {exc}") from None
    parsed = _PARSERS["load"].parse_args(words[1:])  # --help first
    if len(outputs) != 1 or (cell and cell.strip()):
        raise MagicSyntaxError(f"{_usage(_PARSERS['load'])}, e.g. %webnet load model.onnx -> net")
    _check_output(outputs[0])
    return Command("load", parsed.model, (outputs[0],), {"example": parsed.example})


def _split_options(left: str) -> tuple[str, str]:
    """(expression, options): the options start at the first ``--name`` token."""
    match = _OPTION.search(left)
    return (left, "") if match is None else (left[: match.start(1)], left[match.start(1) :])


def _expression(words: list[str], text: str, cell: str | None) -> str:
    """The Python source to run: an op's operands as a call, the line's expression, or the cell body."""
    body = (cell or "").strip()
    if body and words:
        raise MagicSyntaxError("%%webnet takes either an expression on its line or a cell body, not both")
    if body:
        source = body
    elif not words:
        raise MagicSyntaxError("%webnet needs a command or an expression (%webnet help lists them)")
    elif words[0] in OPS and len(words) > 1 and not words[1].startswith("("):
        try:  # %webnet matmul A B  is  matmul(A, B); an operand with spaces may be quoted
            operands = shlex.split(text)[1:]
        except ValueError as exc:
            raise MagicSyntaxError(f"cannot split the line: {exc}") from None
        source = f"{words[0]}({', '.join(operands)})"
    else:
        source = text.strip()
    try:
        ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise MagicSyntaxError(f"{source!r} is not a Python expression ({exc.msg})") from None
    return source


def _check_output(name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise MagicSyntaxError(f"cannot bind to {name!r}; outputs must be variable names like C")


def help_text(ops: bool = True) -> str:
    """Every command with its options (from its parser), the expression form, and (``ops``) every op."""
    width = max(map(len, SUBCOMMANDS))
    lines = ["%webnet COMMAND      (also as a cell of one line: %%webnet COMMAND; COMMAND --help for more)"]
    for name, text in SUBCOMMANDS.items():
        usage = _usage(_PARSERS[name]).split(f"webnet {name}", 1)[-1].strip()
        lines += [f"  {name:<{width}}  {text}"] + ([f"  {'':<{width}}    {usage}"] if usage else [])
    lines += [
        "",
        f"%webnet EXPRESSION -> NAMES  {_usage(_RUN).removeprefix(_RUN.prog).strip()}",
        "  e.g. %webnet relu(X @ W1 + b1) @ W2 -> Y   (one job: intermediates stay on the device)",
        "       %webnet matmul A B -> C                (an op and its operands: matmul(A, B))",
        "       C = %webnet A @ B                      (without '->' the result is returned)",
        "  %%webnet -> H, Y  with a cell of 'name = expression' lines: H and Y come back",
    ]
    if not ops:
        return "\n".join([*lines, "", "%webnet help also lists the ops (matmul, relu, sum, ...)."])
    lines += ["", "ops (options as keywords, e.g. sum(X, axis=1)):"]
    lines += [f"  {name:<{width + 4}}  {spec.summary}" for name, spec in sorted(OPS.items())]
    return "\n".join(lines)


def _usage(parser: _Parser) -> str:
    """The parser's usage on one line, without 'usage:' and ``[-h]`` (every command takes --help)."""
    return " ".join(parser.format_usage().split()).removeprefix("usage: ").replace(" [-h]", "")
