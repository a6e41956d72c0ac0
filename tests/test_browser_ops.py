"""Every op against numpy on the browser worker: the page's WebGPU (SwiftShader) in headless Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread

from .op_cases import CASES


def run_on(broker: BrokerThread, plan: ops.Plan) -> list[np.ndarray]:
    return plan.finish(broker.submit(plan.program).future.result(120))


@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_op_matches_numpy_in_the_browser(page_worker: BrokerThread, op: str, data: st.DataObject) -> None:
    arrays, options = data.draw(CASES[op](), label="arguments")
    plan = ops.plan(op, *arrays, **options)
    (got,) = run_on(page_worker, plan)
    node = plan.nodes[0]
    assert got.shape == node.shape and got.dtype == node.dtype
    assert ops.error_ratio(node, got) <= 1


def test_an_expression_runs_as_one_job_in_the_browser(page_worker: BrokerThread) -> None:
    from webnet_magic.client.expressions import namespace_resolver, parse

    rng = np.random.default_rng(3)
    ns = {"X": rng.standard_normal((40, 30)), "W": rng.standard_normal((30, 20)), "b": rng.standard_normal(20)}
    outputs = parse("softmax(gelu(X @ W + b)), sum(X.T, axis=1)", ops.Graph(), namespace_resolver(ns))
    plan = ops.compile_graph(outputs)
    got = run_on(page_worker, plan)
    for value, expected in zip(got, plan.reference(), strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


def test_float16_input_is_widened_in_the_browser(page_worker: BrokerThread) -> None:
    x = np.linspace(-3, 3, 999).astype(np.float16)
    plan = ops.plan("tanh", x)
    (got,) = run_on(page_worker, plan)
    assert ops.error_ratio(plan.nodes[0], got) <= 1


def test_an_expression_of_many_arrays_stays_within_the_browsers_binding_limit(page_worker: BrokerThread) -> None:
    """Chrome allows 8 storage buffers per kernel by default: ten arrays summed still run."""
    from webnet_magic.client.expressions import namespace_resolver, parse

    ns = {name: np.full(64, i, np.float32) for i, name in enumerate("ABCDEFGHIJ")}
    plan = ops.compile_graph(parse("A+B+C+D+E+F+G+H+I+J", ops.Graph(), namespace_resolver(ns)))
    (got,) = run_on(page_worker, plan)
    np.testing.assert_array_equal(got, np.full(64, 45, np.float32))
