"""Expressions as one job: parsing, fusion, intermediates kept on the device, several results."""

from __future__ import annotations

import numpy as np
import pytest

import webnet_magic as wm
from webnet_magic import ops
from webnet_magic.client import session as sessions
from webnet_magic.client.expressions import ExpressionError, namespace_resolver, parse, parse_program
from webnet_magic.errors import ShapeError

rng = np.random.default_rng(7)
NS = {
    "X": rng.standard_normal((33, 20)).astype(np.float32),
    "W1": rng.standard_normal((20, 50)).astype(np.float32),
    "b1": rng.standard_normal(50).astype(np.float32),
    "W2": rng.standard_normal((50, 7)).astype(np.float32),
}


def mlp(X, W1, b1, W2):
    return np.maximum(X.astype(np.float64) @ W1 + b1, 0) @ W2


def nodes(text: str) -> list[ops.Node]:
    return parse(text, ops.Graph(), namespace_resolver(NS))


def test_an_expression_compiles_to_one_program_with_the_elementwise_tail_fused() -> None:
    """relu(X @ W1 + b1) @ W2: matmul, one fused add+relu kernel, matmul; only Y is an output."""
    plan = ops.compile_graph(nodes("relu(X @ W1 + b1) @ W2"))
    assert len(plan.program.steps) == 3
    assert len(plan.program.outputs) == 1 and plan.program.outputs[0].shape == (33, 7)
    assert plan.program.input_bytes < sum(a.nbytes for a in NS.values()) + 1024  # each array sent once


def test_shared_subexpressions_are_computed_once() -> None:
    """`exp(X) @ W1, sum(exp(X))` builds exp(X) once and keeps it on the device for both uses."""
    outputs = nodes("exp(X) @ W1, sum(exp(X))")
    plan = ops.compile_graph(outputs)
    kinds = [step.kernel.source.count("exp(") > 0 for step in plan.program.steps]
    assert sum(kinds) == 1  # one kernel computes exp
    assert outputs[0].args[0] is outputs[1].args[0]


def test_the_local_reference_matches_numpy() -> None:
    (y,) = ops.evaluate(nodes("relu(X @ W1 + b1) @ W2"))
    np.testing.assert_allclose(y, mlp(**NS), rtol=1e-5, atol=1e-4)


def test_a_program_binds_names_usable_in_later_lines() -> None:
    bound = parse_program("H = relu(X @ W1 + b1)\nY = H @ W2", ops.Graph(), namespace_resolver(NS))
    assert set(bound) == {"H", "Y"} and bound["Y"].args[0] is bound["H"]


@pytest.mark.parametrize(
    ("text", "error", "complaint"),
    [
        ("X @", ExpressionError, "not a valid expression"),
        ("foo(X)", ExpressionError, "unknown function 'foo'"),
        ("sum(X, axis=W1)", ExpressionError, "options must be constants"),
        ("X @ W2", ShapeError, r"inner dimensions 20 and 50 must be equal in 'X @ W2'"),
        ("relu(X @ W1 + W2)", ShapeError, r"do not broadcast in 'X @ W1 \+ W2'"),
        ("import os", ExpressionError, "only expressions and 'name = expression' lines"),
        ("[X, W1]", ExpressionError, "cannot run on a device"),
        ("nope + X", ExpressionError, "'nope' is not defined"),
        ("X + 'text'", Exception, "not a number"),
        ("H = X + 1\nY = H[:, :2]", ExpressionError, "H is computed in this cell"),
    ],
)
def test_bad_expressions_name_what_is_wrong(text: str, error: type, complaint: str) -> None:
    with pytest.raises(error, match=complaint):
        nodes(text)


@pytest.fixture
def notebook(joined):
    """A shell with a broker, one native worker, and the MLP's arrays."""
    joined.user_ns.update(NS)
    return joined


def test_the_magic_runs_an_expression_as_one_job_and_brings_back_only_the_result(notebook) -> None:
    """One job; the worker sends back Y's bytes and not the (33, 50) intermediate."""
    session = sessions.current()
    before = session.devices()[0]
    result = notebook.run_cell("%webnet relu(X @ W1 + b1) @ W2 -> Y")
    assert result.success, result.error_in_exec
    after = session.devices()[0]
    assert after["jobs_done"] == before["jobs_done"] + 1
    y = notebook.user_ns["Y"]
    assert after["bytes_in"] - before["bytes_in"] < y.nbytes + 4096 < 33 * 50 * 4
    np.testing.assert_allclose(y, mlp(**NS), rtol=1e-4, atol=1e-3)


def test_a_cell_of_assignments_returns_the_names_after_the_arrow(notebook) -> None:
    """%%webnet -> H, Y with two lines: both come back from one job."""
    session = sessions.current()
    jobs = session.devices()[0]["jobs_done"]
    result = notebook.run_cell("%%webnet -> H, Y\nH = relu(X @ W1 + b1)\nY = H @ W2\n")
    assert result.success, result.error_in_exec
    ns = notebook.user_ns
    np.testing.assert_allclose(ns["H"], np.maximum(NS["X"].astype(np.float64) @ NS["W1"] + NS["b1"], 0), atol=1e-4)
    np.testing.assert_allclose(ns["Y"], mlp(**NS), rtol=1e-4, atol=1e-3)
    assert session.devices()[0]["jobs_done"] == jobs + 1


def test_a_tuple_expression_returns_a_tuple_or_binds_each_name(notebook) -> None:
    totals = notebook.run_cell("%webnet sum(X, axis=0), max(X) -> S, M")
    assert totals.success
    np.testing.assert_allclose(notebook.user_ns["S"], NS["X"].sum(axis=0), rtol=1e-5, atol=1e-4)
    assert notebook.user_ns["M"] == NS["X"].max()
    returned = notebook.run_cell("%webnet softmax(X), X.T").result
    assert isinstance(returned, tuple) and returned[1].shape == (20, 33)


def test_nothing_is_bound_when_an_expression_fails(notebook) -> None:
    notebook.user_ns.update(H="old", Y="old")
    result = notebook.run_cell("%%webnet -> H, Y\nH = relu(X @ W1 + b1)\nY = H @ W1\n")
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert notebook.user_ns["H"] == "old" and notebook.user_ns["Y"] == "old"


def test_the_python_api_runs_an_expression_with_keyword_arrays(notebook) -> None:
    y = wm.run("relu(X @ W1 + b1) @ W2", **NS)
    np.testing.assert_allclose(y, mlp(**NS), rtol=1e-4, atol=1e-3)
    local = wm.run("relu(X @ W1 + b1) @ W2", local=True, **NS)
    np.testing.assert_allclose(local, y, rtol=1e-4, atol=1e-3)


def test_the_magic_sends_float16_on_request(notebook) -> None:
    """`--wire f16` halves what travels; the result is float32 at float16's precision."""
    session = sessions.current()
    notebook.run_cell("%webnet X @ W1 -> full")
    before = session.devices()[0]["bytes_in"]
    result = notebook.run_cell("%webnet X @ W1 --wire f16 -> half")
    assert result.success, result.error_in_exec
    assert session.devices()[0]["bytes_in"] - before < 33 * 50 * 4 / 2 + 2048
    full, half = notebook.user_ns["full"], notebook.user_ns["half"]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, rtol=4e-3, atol=5e-2)


def test_the_documented_array_forms_are_looked_up_without_eval() -> None:
    """Names, attributes, subscripts, slices and index arithmetic still work, through the API as in the magic."""
    from types import SimpleNamespace

    X, W = NS["X"], NS["W1"]
    y = wm.run("X[:, :k] @ P['W'][: k - 1 + 1] + m.bias[-1]", local=True, X=X, P={"W": W}, k=5,
               m=SimpleNamespace(bias=NS["b1"]))  # fmt: skip
    np.testing.assert_allclose(y, X[:, :5].astype(np.float64) @ W[:5] + NS["b1"][-1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("X[__import__('pathlib').Path(MARK).touch()] @ W1", "only a plain call of a named function"),
        ("X[open(MARK, 'w')] @ W1", "open.* no function can be called here"),
        ("X[(lambda: open(MARK, 'w'))()] @ W1", "only a plain call of a named function"),
        ("X[[open(MARK, 'w') for _ in (1,)]] @ W1", "a comprehension is not allowed"),
        ("X[(f := open(MARK, 'w'))] @ W1", "':=' is not allowed"),
        ('X[f"{open(MARK, chr(119))}"] @ W1', "an f-string is not allowed"),
        ("X[().__class__.__bases__[0].__subclasses__()] @ W1", "only a plain call of a named function"),
        ("X[W1.__class__] @ W1", "attributes starting with '_'"),
        ("__builtins__ @ W1", "names like __this__ are refused"),
        ("X[2 ** 10 ** 10] @ W1", "too large a power"),
    ],
)
def test_text_from_someone_else_runs_no_code(tmp_path, template: str, complaint: str) -> None:
    """`webnet_magic.run(text)` with injected code: refused with a clear error; the file it would make is not made."""
    mark = tmp_path / "ran"
    text = template.replace("MARK", repr(str(mark)))
    with pytest.raises(ExpressionError, match=complaint):
        wm.run(text, local=True, **NS)
    assert not mark.exists()
