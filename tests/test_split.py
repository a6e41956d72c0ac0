"""Work larger than a device's buffer limit, split into jobs that fit and reassembled."""

from __future__ import annotations

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.client import session as sessions
from webnet_magic.errors import DeviceLimitError
from webnet_magic.ops.split import bounds, buffer_limit, split

from .conftest import Workers

LIMIT = 64 * 1024  # bytes: a tiny device, so the split is exercised with small arrays


def test_a_large_matmul_becomes_blocks_that_each_fit() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((300, 200), np.float32), rng.random((200, 150), np.float32)
    pieces = split(ops.call("matmul", a, b), LIMIT)
    assert len(pieces.pieces) > 1
    assert all(p.plan.program.largest_buffer <= LIMIT for p in pieces.pieces)
    whole = pieces.assemble([p.plan.reference()[0] for p in pieces.pieces])
    np.testing.assert_allclose(whole, a @ b, rtol=1e-4)


def test_k_is_cut_too_when_one_row_does_not_fit() -> None:
    """A (4, 20000) @ (20000, 8): a row of A alone is above the limit; partial products are summed."""
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 20000), np.float32), rng.random((20000, 8), np.float32)
    pieces = split(ops.call("matmul", a, b), LIMIT)
    assert all(p.plan.program.largest_buffer <= LIMIT for p in pieces.pieces)
    whole = pieces.assemble([p.plan.reference()[0] for p in pieces.pieces])
    np.testing.assert_allclose(whole, a.astype(np.float64) @ b, rtol=1e-4)


def test_an_elementwise_expression_is_cut_along_its_first_axis() -> None:
    from webnet_magic.client.expressions import namespace_resolver, parse

    rng = np.random.default_rng(2)
    ns = {"X": rng.random((400, 90)), "b": rng.random(90)}
    (node,) = parse("relu(X * 2 - b)", ops.Graph(), namespace_resolver(ns))
    pieces = split(node, LIMIT)
    assert all(p.plan.program.largest_buffer <= LIMIT for p in pieces.pieces)
    whole = pieces.assemble([p.plan.reference()[0] for p in pieces.pieces])
    np.testing.assert_allclose(whole, np.maximum(ns["X"] * 2 - ns["b"], 0), rtol=1e-5, atol=1e-6)


def test_what_cannot_be_split_is_refused_naming_the_limit() -> None:
    """A sum down the columns needs every row at once: it cannot be cut along them."""
    x = np.ones((300, 300), np.float32)
    with pytest.raises(DeviceLimitError, match=r"above the device.s buffer limit of 65536 bytes"):
        split(ops.call("sum", x, axis=0), LIMIT)


def test_row_wise_chains_are_cut_by_rows_even_through_a_matmul() -> None:
    """softmax(relu(X @ W + b)): each row needs only its row of X, so it is cut like an elementwise op."""
    from webnet_magic.client.expressions import namespace_resolver, parse

    rng = np.random.default_rng(3)
    ns = {"X": rng.random((500, 40)), "W": rng.random((40, 60)), "b": rng.random(60)}
    (node,) = parse("softmax(relu(X @ W + b))", ops.Graph(), namespace_resolver(ns))
    pieces = split(node, LIMIT)
    assert len(pieces.pieces) > 1
    assert all(p.plan.program.largest_buffer <= LIMIT for p in pieces.pieces)
    whole = pieces.assemble([p.plan.reference()[0] for p in pieces.pieces])
    np.testing.assert_allclose(whole, ops.evaluate([node])[0], rtol=1e-5)


@pytest.mark.parametrize("shape", [(600, 40, 100), (20, 40, 900)])
def test_shards_follow_the_weights_along_the_longer_side(shape: tuple[int, int, int]) -> None:
    """Weights 4:2:1 give rows (or, for a wide C, columns) in that proportion, each shard whole."""
    m, k, n = shape
    rng = np.random.default_rng(4)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    cut = split(ops.call("matmul", a, b), 128 << 20, weights=(4, 2, 1))
    assert [p.shard for p in cut.pieces] == [0, 1, 2]
    sides = [p.plan.nodes[0].shape[0 if m >= n else 1] for p in cut.pieces]
    assert sides == pytest.approx([4 / 7 * max(m, n), 2 / 7 * max(m, n), 1 / 7 * max(m, n)], abs=4)
    whole = cut.assemble([p.plan.reference()[0] for p in cut.pieces])
    np.testing.assert_allclose(whole, a @ b, rtol=1e-4)


def test_bounds_skip_shards_with_no_rows() -> None:
    assert bounds(10, (1, 1)) == [(0, 0, 5), (1, 5, 10)]
    assert bounds(2, (1, 1, 1)) == [(0, 0, 1), (2, 1, 2)]
    assert bounds(100, (0, 0)) == [(0, 0, 50), (1, 50, 100)]


def test_defaults_are_webgpus_when_a_device_reports_nothing() -> None:
    assert buffer_limit({}) == 128 << 20
    assert buffer_limit({"maxStorageBufferBindingSize": 1 << 30, "maxBufferSize": 256 << 20}) == 256 << 20


def test_the_magic_splits_work_for_a_device_with_small_limits(shell, workers: Workers) -> None:
    """A native worker that reports a 0.25 MB limit still computes a 1.4 MB matmul, as blocks."""
    shell.run_cell("%webnet start")
    session = sessions.current()
    workers.start(session.url, "--max-buffer-mb", "0.25")
    session.wait_for_devices(1, 60)
    assert session.devices()[0]["limits"]["maxStorageBufferBindingSize"] == 256 * 1024
    shell.run_cell("import numpy as np\nA = np.random.rand(600, 500)\nB = np.random.rand(500, 300)")
    result = shell.run_cell("%webnet A @ B -> C")
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-4)
    assert session.devices()[0]["jobs_done"] > 1
    result = shell.run_cell("%webnet softmax(A @ B) -> S")
    assert "above the device's buffer limit" in str(result.error_in_exec)
