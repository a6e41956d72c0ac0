"""The %webnet line parser and the body-less %%webnet cell rewrite, on strings alone."""

from __future__ import annotations

import pytest

from webnet_magic.client.magics import bodyless_cell
from webnet_magic.client.parsing import MagicSyntaxError, help_text, parse


def test_an_op_line_splits_on_the_arrow_before_argparse_sees_it() -> None:
    """`->` is not an option: the op and its operands before it, outputs and options after it."""
    command = parse("matmul A B -> C --timeout 5 --device d2")
    assert command.name == "run" and command.expression == "matmul(A, B)"
    assert command.outputs == ("C",)
    assert command.options == {"timeout": 5.0, "devices": "d2", "local": False, "verify": False, "bg": False}


def test_options_may_come_before_the_arrow_and_spaces_are_optional() -> None:
    """`matmul A B --local ->C` parses like the spaced form."""
    command = parse("matmul A B --local ->C")
    assert command.expression == "matmul(A, B)" and command.outputs == ("C",) and command.options["local"]


def test_an_expression_is_kept_whole() -> None:
    """Anything that is not a sub-command or an op with bare operands is an expression, spaces and all."""
    command = parse("relu(X @ W1 + b1) @ W2 -> Y --timeout 2")
    assert command.expression == "relu(X @ W1 + b1) @ W2"
    assert command.outputs == ("Y",) and command.options["timeout"] == 2.0
    assert parse("sum(X, axis=1)").expression == "sum(X, axis=1)"
    assert parse("A @ B").outputs == ()


def test_op_operands_may_be_expressions() -> None:
    """Operands such as A.T or a quoted subscript become the call's arguments."""
    assert parse("matmul A.T 'X[:, :10]' -> C").expression == "matmul(A.T, X[:, :10])"


def test_several_outputs_are_read_with_or_without_commas() -> None:
    assert parse("A, B -> H, Y").outputs == ("H", "Y")
    assert parse("A, B -> H Y").outputs == ("H", "Y")


def test_a_cell_body_is_the_program() -> None:
    """`%%webnet -> H, Y` with assignments in the body."""
    command = parse("-> H, Y --local", "H = relu(X)\nY = H @ W\n")
    assert command.expression == "H = relu(X)\nY = H @ W" and command.outputs == ("H", "Y")
    assert command.options["local"]


def test_start_takes_port_and_host() -> None:
    command = parse("start --port 8765 --host 0.0.0.0")
    assert command.name == "start" and command.options == {"port": 8765, "host": "0.0.0.0"}


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("", "needs a command or an expression"),
        ("A B -> C", "is not a Python expression"),
        ("matmul A B ->", "nothing after '->'"),
        ("matmul A B -> 1C", "cannot bind to '1C'"),
        ("matmul A B -> class", "cannot bind to 'class'"),
        ("matmul A B( -> C", "is not a Python expression"),
        ("matmul A B -> C --timeout soon", "positive number of seconds, not 'soon'"),
        ("matmul A B -> C --timeout nan", "positive number of seconds, not 'nan'"),
        ("matmul A B -> C --timeout -1", "positive number of seconds, not '-1'"),
        ("matmul A B -> C --bogus", "unrecognized arguments"),
        ("start --port 70000", "0 to 65535, not '70000'"),
        ("stop -> C", "takes no '->' output"),
        ("matmul 'A B -> C", "cannot split the line"),
    ],
)
def test_bad_lines_say_what_is_wrong(line: str, complaint: str) -> None:
    """Each malformed line raises MagicSyntaxError with a message naming the mistake."""
    with pytest.raises(MagicSyntaxError, match=complaint):
        parse(line)


def test_a_line_and_a_body_together_are_refused() -> None:
    with pytest.raises(MagicSyntaxError, match="not both"):
        parse("A @ B -> C", "X = 1")
    with pytest.raises(MagicSyntaxError, match="takes no cell body"):
        parse("stop", "X = 1")


def test_help_lists_every_command_and_op() -> None:
    from webnet_magic.ops import OPS

    text = help_text()
    for name in ("start", "stop", "status", "devices", "url", "help", *OPS):
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


@pytest.mark.parametrize("name", ["start", "stop", "status", "devices", "url", "kernel", "load", "put", "free", "help"])
def test_every_command_takes_help(name: str) -> None:
    """`%webnet NAME --help` is a help command holding NAME's usage: nothing else is parsed or run."""
    for flag in ("--help", "-h"):
        command = parse(f"{name} {flag}")
        assert command.name == "help" and command.options["text"].startswith("usage: ")
        assert f"webnet {name}" in command.options["text"]
    assert "--port PORT" in parse("start --help").options["text"]
    assert "--workgroups" in parse("kernel --help").options["text"]


def test_help_on_the_expression_form_lists_the_run_options() -> None:
    assert "--timeout S" in parse("A @ B -> C --help").options["text"]
    assert "start" in parse("--help").options["text"]


@pytest.mark.parametrize(("word", "meant"), [("stats", "status / start"), ("strat", "start"), ("devics", "devices")])
def test_a_misspelt_command_gets_a_suggestion(word: str, meant: str) -> None:
    with pytest.raises(MagicSyntaxError, match=f"'{word}' is no command or variable; did you mean {meant}\\?"):
        parse(word)
    with pytest.raises(MagicSyntaxError, match="did you mean"):
        parse(f"{word} --port 5")


def test_a_notebook_name_close_to_a_command_is_an_expression() -> None:
    """A variable named `stats` is the user's array, not a typo; a word close to no command is left to the reader."""
    assert parse("stats -> S", names={"stats"}).expression == "stats"
    assert parse("stats @ W", names={"stats"}).name == "run"
    assert parse("weights").expression == "weights"


def test_the_kernel_line_goes_through_argparse() -> None:
    """The signature before the options, --workgroups after, spaces and commas kept; an unknown option is named."""
    command = parse("kernel f(x, a: f32) -> out[x.shape[0], 2] --workgroups ceil(x.size / 64), 1", "WGSL")
    assert command.options == {"signature": "f(x, a: f32) -> out[x.shape[0], 2]", "workgroups": "ceil(x.size / 64), 1"}
    assert parse("kernel f(x) -> out[x.shape]", "WGSL").options["workgroups"] == "auto"
    with pytest.raises(MagicSyntaxError, match="unrecognized arguments: --groups"):
        parse("kernel f(x) -> out[x.shape] --groups 2", "WGSL")


def test_messages_carry_no_prefix_of_their_own() -> None:
    """The magic puts 'webnet: ' in front of every message: the parser's own start with none."""
    for line in ("", "matmul A B ->", "matmul A B -> 1C", "A B -> C", "start --port 70000", "matmul 'A B -> C"):
        with pytest.raises(MagicSyntaxError) as raised:
            parse(line)
        assert not str(raised.value).startswith(("%webnet:", "webnet:", "%webnet start:")), str(raised.value)
