"""``--verify`` and the row cut it shares with sharding, on numpy alone (no device).

Honest answers are made the way the least accurate GPU kernel would: float32 products
summed one K step at a time.  A check must pass those and catch an error well inside
what a lying or broken device could return.
"""

from __future__ import annotations

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.client.expressions import namespace_resolver, parse
from webnet_magic.ops import compile_graph, evaluate
from webnet_magic.ops.restrict import restrict
from webnet_magic.ops.verify import checker

rng = np.random.default_rng(11)


def sequential_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 A @ B accumulated over K in order, each step rounded: the worst honest kernel."""
    c = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        c += a[:, k : k + 1] * b[k : k + 1, :]
    return c


def expression(text: str, **arrays: np.ndarray) -> ops.Node:
    (node,) = parse(text, ops.Graph(), namespace_resolver(arrays))
    return node


@pytest.mark.parametrize("data", ["normal", "positive"])
@pytest.mark.parametrize("k", [64, 1024])
def test_freivalds_passes_an_honest_float32_matmul(k: int, data: str) -> None:
    a = rng.standard_normal((96, k), np.float32)
    b = rng.standard_normal((k, 80), np.float32)
    if data == "positive":  # no cancellation: rounding errors pile up the most
        a, b = np.abs(a), np.abs(b)
    plan = compile_graph([ops.call("matmul", a, b)])
    for seed in range(5):
        assert checker(plan, seed=seed)([sequential_matmul(a, b)]) is None


def test_freivalds_catches_one_element_off_by_a_percent() -> None:
    a, b = rng.standard_normal((2, 256, 256), np.float32)
    c = a @ b
    typical = float(np.abs(c).mean())
    c[200, 17] += 0.01 * typical
    problem = checker(compile_graph([ops.call("matmul", a, b)]), seed=0)([c])
    assert problem is not None and "Freivalds' test failed for 1 of 256 rows (first: row 200)" in problem


def test_freivalds_catches_swapped_rows_and_zeros() -> None:
    a, b = rng.standard_normal((2, 64, 64), np.float32)
    plan = compile_graph([ops.call("matmul", a, b)])
    swapped = (a @ b)[[1, 0, *range(2, 64)]]
    assert checker(plan, seed=1)([swapped]) is not None
    assert checker(plan, seed=1)([np.zeros((64, 64), np.float32)]) is not None


def test_a_non_matmul_result_is_checked_on_sampled_rows() -> None:
    """Fewer rows than the sample: every row is recomputed, so one bad row is always caught."""
    x, w = rng.standard_normal((20, 30), np.float32), rng.standard_normal((30, 10), np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    node = expression("softmax(relu(X @ W + b))", X=x, W=w, b=b)
    plan = compile_graph([node])
    (honest,) = evaluate([node])
    assert checker(plan, seed=0)([honest]) is None
    bad = honest.copy()
    bad[13] = bad[13][::-1]
    problem = checker(plan, seed=0)([bad])
    assert problem is not None and "differ from numpy's answer" in problem and "(13," in problem


def test_argmax_ties_within_rounding_may_go_either_way() -> None:
    x = np.ones((8, 16), np.float32)
    x[:, 5] = 1 + 1e-7  # the maximum, by one float32 step
    x[:, 9] = 0.5
    plan = compile_graph([ops.call("argmax", x, axis=1)])
    assert checker(plan, seed=0)([np.full(8, 0, np.int32)]) is None
    assert checker(plan, seed=0)([np.full(8, 9, np.int32)]) is not None


@pytest.mark.parametrize(
    "text",
    [
        "relu(X @ W + b)",
        "softmax(X @ W)",
        "layernorm(X)",
        "sum(X, axis=1)",
        "tanh(X) * 2 - b2",
    ],
)
def test_restrict_gives_numpys_rows(text: str) -> None:
    arrays = {
        "X": rng.standard_normal((40, 12), np.float32),
        "W": rng.standard_normal((12, 12), np.float32),
        "b": rng.standard_normal(12).astype(np.float32),
        "b2": rng.standard_normal(12).astype(np.float32),
    }
    node = expression(text, **{k: v for k, v in arrays.items() if k in text})
    (whole,) = evaluate([node])
    for rows in (slice(5, 17), np.array([0, 3, 39])):
        part = restrict(node, rows)
        assert part is not None
        (got,) = evaluate([part])
        np.testing.assert_allclose(got, whole[rows], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("text", ["sum(X, axis=0)", "transpose(X) @ W2"])
def test_restrict_refuses_where_rows_depend_on_other_rows(text: str) -> None:
    x = rng.standard_normal((12, 12), np.float32)
    node = expression(text, **{k: v for k, v in {"X": x, "W2": x}.items() if k in text})
    assert restrict(node, slice(0, 4)) is None
