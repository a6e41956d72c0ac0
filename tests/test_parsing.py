"""The %webnet line parser and the body-less %%webnet cell rewrite, on strings alone."""

from __future__ import annotations

import pytest

from webnet_magic.client.magics import bodyless_cell
from webnet_magic.client.parsing import MagicSyntaxError, help_text, parse


def test_an_op_line_splits_on_the_arrow_before_argparse_sees_it() -> None:
    """`->` is not an option: operands before it, outputs after it, options anywhere."""
    command = parse("matmul A B -> C --timeout 5 --device d2")
    assert command.name == "matmul"
    assert command.operands == ("A", "B")
    assert command.outputs == ("C",)
    assert command.options == {"timeout": 5.0, "device": "d2", "local": False}


def test_options_may_come_before_the_arrow_and_spaces_are_optional() -> None:
    """`matmul A B --local ->C` parses like the spaced form."""
    command = parse("matmul A B --local ->C")
    assert command.operands == ("A", "B") and command.outputs == ("C",) and command.options["local"]


def test_operands_are_python_expressions() -> None:
    """Attribute access, calls and subscripts (quoted when they hold spaces) are operands."""
    command = parse("matmul A.T 'X[:, :10]' -> C")
    assert command.operands == ("A.T", "X[:, :10]")


def test_without_an_arrow_an_op_has_no_outputs() -> None:
    """`C = %webnet matmul A B` returns the result instead of binding it."""
    assert parse("matmul A B").outputs == ()


def test_outputs_are_read_with_or_without_commas() -> None:
    """`-> H, Y` and `-> H Y` name the same outputs (as many as the op gives)."""
    assert parse("matmul A B -> Y").outputs == ("Y",)
    with pytest.raises(MagicSyntaxError, match="gives 1 result"):
        parse("matmul A B -> H, Y")


def test_start_takes_port_and_host() -> None:
    command = parse("start --port 8765 --host 0.0.0.0")
    assert command.name == "start" and command.options == {"port": 8765, "host": "0.0.0.0"}


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("", "needs a command"),
        ("frobnicate A", "unknown command 'frobnicate'"),
        ("matmul A -> C", "takes 2 operands, got 1"),
        ("matmul A B C -> D", "takes 2 operands, got 3"),
        ("matmul A B ->", "nothing after '->'"),
        ("matmul A B -> 1C", "cannot bind to '1C'"),
        ("matmul A B -> class", "cannot bind to 'class'"),
        ("matmul A B( -> C", "not a Python expression"),
        ("matmul A B -> C --timeout soon", "positive number of seconds, not 'soon'"),
        ("matmul A B -> C --bogus", "unrecognized arguments"),
        ("stop -> C", "takes no '->' output"),
        ("matmul A B -> C D", "gives 1 result"),
        ("matmul A B -> C --timeout nan", "positive number of seconds, not 'nan'"),
        ("matmul A B -> C --timeout -1", "positive number of seconds, not '-1'"),
        ("start --port 70000", "0 to 65535, not '70000'"),
        ("matmul 'A B -> C", "cannot split the line"),
    ],
)
def test_bad_lines_say_what_is_wrong(line: str, complaint: str) -> None:
    """Each malformed line raises MagicSyntaxError with a message naming the mistake."""
    with pytest.raises(MagicSyntaxError, match=complaint):
        parse(line)


def test_help_lists_every_command() -> None:
    text = help_text()
    for name in ("start", "stop", "status", "devices", "url", "matmul", "help"):
        assert f"  {name}" in text


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        (["%%webnet matmul A B -> C\n"], ["%webnet matmul A B -> C\n"]),
        (["%%webnet matmul A B -> C\n", "\n", "   \n"], ["%webnet matmul A B -> C\n"]),
        (["%%webnet\n"], ["%webnet\n"]),
        (
            ["%%webnet kernel k(x) -> y\n", "fn main() {}\n"],
            ["%%webnet kernel k(x) -> y\n", "fn main() {}\n"],
        ),
        (["%%webnetwork A\n"], ["%%webnetwork A\n"]),
        (["%%time\n"], ["%%time\n"]),
        (["x = 1\n"], ["x = 1\n"]),
        ([], []),
    ],
)
def test_only_a_bodyless_webnet_cell_becomes_the_line_magic(cell: list[str], expected: list[str]) -> None:
    """A cell of one `%%webnet` line is rewritten; cells with a body and other magics are not."""
    assert bodyless_cell(cell) == expected
