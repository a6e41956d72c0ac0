"""Parsing a ``%webnet`` line: a sub-command, or something to compute and where to put it.

::

    %webnet start --port 8765                  a sub-command (argparse)
    %webnet relu(X @ W1 + b1) @ W2 -> Y        an expression, bound to Y
    %webnet matmul A B -> C --timeout 5        an op with its operands, the same as matmul(A, B)
    %%webnet -> H, Y                           a cell of assignments; H and Y come back

argparse reads ``->`` as an option, so the line is split on the first ``->`` before
argparse sees it (jupysql pre-parses its ``<<`` the same way): after it come output
names, then options.  The expression itself is checked for Python syntax here and
read into a graph later (:mod:`~webnet_magic.client.expressions`).
"""

from __future__ import annotations

import argparse
import ast
import keyword
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn

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


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise MagicSyntaxError(f"{self.prog}: {message}. Try %webnet help")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise MagicSyntaxError(message or self.format_usage())


#: One line per sub-command, shown by ``%webnet help``.
SUBCOMMANDS = {
    "start": "start the broker here and show the QR code + device panel  [--tunnel auto|ngrok|off] [--lan] [--depth N]",
    "stop": "stop the broker, disconnect every device",
    "status": "the broker's URL and devices",
    "devices": "a table of connected devices",
    "url": "print the worker URL (with its token) as plain text",
    "kernel": "NAME(x, y, a: f32) -> out[x.shape] [--workgroups auto]   (a cell: WGSL below) define an op",
    "load": "MODEL [EXAMPLE] -> NAME  load an ONNX file (a path, or a variable: ModelProto, bytes, torch module)",
    "put": "NAME ...  keep these arrays on every device: later jobs send none of their bytes",
    "free": "NAME ...  let devices drop what put kept",
    "help": "this text",
}
RUN_OPTIONS = "[--timeout S] [--devices ID,ID|all] [--shard auto|N|off] [--verify] [--bg] [--local] [--wire f16]"


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


def _build() -> tuple[_Parser, _Parser]:
    commands = _Parser(prog="%webnet", add_help=False)
    sub = commands.add_subparsers(dest="name", metavar="COMMAND", parser_class=_Parser)
    start = sub.add_parser("start", prog="%webnet start", add_help=False)
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
    for name in ("stop", "status", "devices", "url", "help"):
        sub.add_parser(name, prog=f"%webnet {name}", add_help=False)
    for name in ("put", "free"):
        sub.add_parser(name, prog=f"%webnet {name}", add_help=False).add_argument("names", nargs="+")
    run = _Parser(prog="%webnet", add_help=False)
    run.add_argument("--timeout", type=_seconds, help="seconds to wait for a device and the result")
    run.add_argument("--devices", "--device", type=_devices, help="run on these device ids only (default all)")
    run.add_argument("--shard", type=_shard, help="cut the job over devices: auto (default), N shards, or off")
    run.add_argument("--verify", action="store_true", help="check results here; a device that fails is banned")
    run.add_argument("--bg", "--noblock", action="store_true", help="return a handle at once; bind on completion")
    run.add_argument("--local", action="store_true", help="compute with numpy here, no device")
    run.add_argument("--wire", choices=("f32", "f16"), help="f16: float data travels as float16 (half the bytes)")
    return commands, run


_COMMANDS, _RUN = _build()
_OPTION = re.compile(r"(?:^|\s)(--[A-Za-z])")


def parse(line: str, cell: str | None = None) -> Command:
    """Parse one ``%webnet`` line (without the ``%webnet``); ``cell`` is the body of a ``%%webnet`` cell."""
    if line.split()[:1] == ["kernel"]:  # its '->' part is a shape expression: checked by ops.custom
        if not (cell and cell.strip()):
            raise MagicSyntaxError("%%webnet kernel needs the WGSL source in the cell body, under the first line")
        return Command("kernel", cell, options={"line": line.split(None, 1)[1] if len(line.split()) > 1 else ""})
    if line.split()[:1] == ["load"]:
        return _load(line, cell)
    left, arrow, right = line.partition("->")
    expression, left_options = _split_options(left)
    try:
        option_tokens = shlex.split(left_options)
        after = shlex.split(right)
    except ValueError as exc:
        raise MagicSyntaxError(f"%webnet: cannot split the line: {exc}") from None
    outputs: list[str] = []
    while after and not after[0].startswith("-"):
        outputs += [name for name in after.pop(0).split(",") if name]
    if arrow and not outputs:
        raise MagicSyntaxError("%webnet: nothing after '->'; name the variable to bind, e.g. -> C")
    for name in outputs:
        _check_output(name)
    words = expression.split()
    if words and words[0] in SUBCOMMANDS:
        if arrow:
            raise MagicSyntaxError(f"%webnet {words[0]} takes no '->' output")
        if cell and cell.strip():
            raise MagicSyntaxError(f"%%webnet {words[0]} takes no cell body; put nothing under the first line")
        namespace = _COMMANDS.parse_args(shlex.split(left) + after)
        return Command(namespace.name, options={k: v for k, v in vars(namespace).items() if k != "name" and v})
    options = vars(_RUN.parse_args(option_tokens + after))
    text = _expression(words, expression, cell)
    return Command("run", text, tuple(outputs), {k: v for k, v in options.items() if v is not None})


def _load(line: str, cell: str | None) -> Command:
    """``load MODEL [EXAMPLE] -> NAME``: the model's source and, for a torch module, its example inputs."""
    usage = "%webnet load takes a model and a name: %webnet load model.onnx -> net (or: load module example -> net)"
    left, arrow, right = line.rpartition("->")
    try:
        words, names = shlex.split(left)[1:], shlex.split(right)
    except ValueError as exc:
        raise MagicSyntaxError(f"%webnet load: cannot split the line: {exc}") from None
    if not arrow or len(names) != 1 or not 1 <= len(words) <= 2 or (cell and cell.strip()):
        raise MagicSyntaxError(usage)
    _check_output(names[0])
    return Command("load", words[0], (names[0],), {"example": words[1] if len(words) == 2 else None})


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
        raise MagicSyntaxError("%webnet needs a command or an expression. Try %webnet help")
    elif words[0] in OPS and len(words) > 1 and not words[1].startswith("("):
        try:  # %webnet matmul A B  is  matmul(A, B); an operand with spaces may be quoted
            operands = shlex.split(text)[1:]
        except ValueError as exc:
            raise MagicSyntaxError(f"%webnet: cannot split the line: {exc}") from None
        source = f"{words[0]}({', '.join(operands)})"
    else:
        source = text.strip()
    try:
        ast.parse(source, mode="exec")
    except SyntaxError as exc:
        raise MagicSyntaxError(f"%webnet: {source!r} is not a Python expression ({exc.msg})") from None
    return source


def _check_output(name: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise MagicSyntaxError(f"%webnet: cannot bind to {name!r}; outputs must be variable names like C")


def help_text() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["%webnet COMMAND      (also as a cell of one line: %%webnet COMMAND)"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += [
        "",
        f"%webnet EXPRESSION -> NAMES  {RUN_OPTIONS}",
        "  e.g. %webnet relu(X @ W1 + b1) @ W2 -> Y   (one job: intermediates stay on the device)",
        "       %webnet matmul A B -> C                (an op and its operands: matmul(A, B))",
        "       C = %webnet A @ B                      (without '->' the result is returned)",
        "  %%webnet -> H, Y  with a cell of 'name = expression' lines: H and Y come back",
        "",
        "ops (options as keywords, e.g. sum(X, axis=1)):",
    ]
    lines += [f"  {name:<{width + 4}}  {spec.summary}" for name, spec in sorted(OPS.items())]
    return "\n".join(lines)
