"""Tensor ops, views that fold into fused kernels, buffers reused along a chain, and a transformer block,
on the native worker's executor (wgpu-py on lavapipe) and in Chromium; every result against numpy.

The generated cases for each op (shapes, dtypes, attributes) run in tests/test_ops.py and
tests/test_browser_ops.py from tests/tensor_cases.py; these pin the edges and the compiler's behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webnet_magic import ops
from webnet_magic.errors import DtypeError, ShapeError
from webnet_magic.ops.compiler import MAX_FUSED_INPUTS
from webnet_magic.ops.split import split

from .op_cases import CASES

rng = np.random.default_rng(11)


@pytest.fixture(scope="module")
def executor():
    from webnet_magic.worker.gpu import WgpuExecutor

    return WgpuExecutor()


def run_on(executor, plan: ops.Plan) -> list[np.ndarray]:
    outputs, _ = executor.run(plan.program)
    return plan.finish(plan.program.check_results(outputs))


def check(executor, plan: ops.Plan) -> list[np.ndarray]:
    """Run ``plan``; hold an op on arrays to its tolerance against numpy, and a longer graph to 1e-4."""
    got = run_on(executor, plan)
    for node, value, expected in zip(plan.nodes, got, plan.reference(), strict=True):
        assert value.shape == node.shape and value.dtype == node.dtype
        if node.args and all(a.op in ("input", "const") for a in node.args):
            assert ops.error_ratio(node, value) <= 1, node.text
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)
    return got


def scratch_buffers(plan: ops.Plan) -> list[int]:
    """Sizes of the buffers a program computes into (not inputs, not uniforms)."""
    return [b.size for b in plan.program.buffers if b.input is None and not b.uniform]


def f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


class Builder:
    """A graph built op by op, as the ONNX importer builds one."""

    def __init__(self) -> None:
        self.graph = ops.Graph()

    def input(self, name: str, value: np.ndarray) -> ops.Node:
        return self.graph.input(name, value)

    def __call__(self, op: str, *args: ops.Node, **attrs: Any) -> ops.Node:
        return self.graph.apply(op, args, attrs, op)


# -- slices, views and reshapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "starts", "ends", "steps"),
    [
        ((7,), (6,), (-1,), (-1,)),  # all of it, backwards: end -1 is "through index 0"
        ((7,), (5,), (0,), (-2,)),
        ((7, 5), (0, 4), (7, -1), (3, -3)),
        ((4, 5), (2, 0), (2, 5), (1, 1)),  # empty along the first axis
        ((3, 1, 4), (2, 0, 3), (-1, 1, 0), (-1, 1, -1)),
        ((2, 3, 4, 5, 2, 3), (1, 2, 0, 4, 0, 2), (-1, -1, 4, 0, 2, -1), (-1, -2, 3, -1, 1, -1)),  # rank 6
    ],
)
def test_slices_with_negative_steps_and_empty_parts_match_numpy(executor, shape, starts, ends, steps) -> None:
    x = f32(*shape)
    (got,) = check(executor, ops.plan("slice", x, starts=starts, ends=ends, steps=steps))
    expected = x[tuple(slice(s, None if e < 0 else e, st) for s, e, st in zip(starts, ends, steps, strict=True))]
    np.testing.assert_array_equal(got, expected)


def test_views_fold_into_one_elementwise_kernel(executor) -> None:
    """slice of a transpose, plus an expand, plus a reshape that splits a dimension: one dispatch."""
    g = Builder()
    x, y, z = g.input("x", f32(6, 8)), g.input("y", f32(4)), g.input("z", f32(48))
    t = g("slice", g("transpose", x, axes=(1, 0)), starts=(7, 1), ends=(-1, 5), steps=(-2, 1))
    z_part = g("slice", g("reshape", z, shape=(4, 12)), starts=(0, 3), ends=(4, 7), steps=(1, 1))
    out = g("mul", g("add", t, g("expand", y, shape=(4, 4))), z_part)
    plan = ops.compile_graph([out])
    assert len(plan.program.steps) == 1
    check(executor, plan)


def test_a_reshape_of_a_value_with_a_buffer_costs_no_dispatch(executor) -> None:
    g = Builder()
    h = g("matmul", g.input("x", f32(6, 10)), g.input("w", f32(10, 12)))
    heads = g("reshape", h, shape=(6, 3, 4))
    plan = ops.compile_graph([heads, g("sum", heads, axis=2)])
    assert len(plan.program.steps) == 2  # the matmul and the sum; the reshape is the matmul's buffer
    assert plan.program.outputs[0].buffer == plan.program.steps[0].bindings[2]
    check(executor, plan)


def test_a_reshape_that_merges_transposed_axes_copies_once(executor) -> None:
    """(B, H, T, D) -> (B, T, H, D) -> (B, T, H*D): not affine, so the transpose gets one buffer."""
    g = Builder()
    x = g.input("x", f32(2, 3, 5, 4))
    merged = g("reshape", g("transpose", x, axes=(0, 2, 1, 3)), shape=(2, 5, 12))
    plan = ops.compile_graph([g("relu", merged)])
    assert len(plan.program.steps) == 2
    (got,) = check(executor, plan)
    np.testing.assert_array_equal(got, np.maximum(x.leaf.array.transpose(0, 2, 1, 3).reshape(2, 5, 12), 0))


def test_a_reshaped_input_alone_still_comes_back(executor) -> None:
    x = np.arange(24, dtype=np.int32)
    (got,) = check(executor, ops.plan("reshape", x, shape=(2, 3, 4)))
    np.testing.assert_array_equal(got, x.reshape(2, 3, 4))


def test_expand_broadcasts_like_numpy(executor) -> None:
    x = np.arange(3, dtype=np.uint32).reshape(3, 1)
    (got,) = check(executor, ops.plan("expand", x, shape=(2, 1, 4)))
    np.testing.assert_array_equal(got, np.broadcast_to(x, (2, 3, 4)))


# -- concat, pad, gather --------------------------------------------------------------------


def test_concat_of_ten_inputs_stays_within_eight_storage_buffers_per_dispatch(executor) -> None:
    parts = [np.full((2, k + 1, 3), k, np.float32) for k in range(10)]
    plan = ops.plan("concat", *parts, axis=1)
    assert len(plan.program.steps) == 2
    assert all(len(step.bindings) - 1 <= MAX_FUSED_INPUTS + 1 for step in plan.program.steps)
    (got,) = check(executor, plan)
    np.testing.assert_array_equal(got, np.concatenate(parts, axis=1))


def test_concat_promotes_and_skips_empty_inputs(executor) -> None:
    a, b, c = np.ones((2, 0), np.int32), np.arange(4, dtype=np.int32).reshape(2, 2), f32(2, 3)
    (got,) = check(executor, ops.plan("concat", a, b, c, axis=-1))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate([a, b, c], axis=-1).astype(np.float32))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_reach_past_the_edge_as_numpy_does(executor, mode: str) -> None:
    """Pads wider than the axis (reflect folds back more than once)."""
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    (got,) = check(executor, ops.plan("pad", x, pads=(5, 0, 2, 9), mode=mode, value=-1))
    kwargs = {"constant_values": -1} if mode == "constant" else {}
    np.testing.assert_array_equal(got, np.pad(x, ((5, 2), (0, 9)), mode=mode, **kwargs))


def test_gather_takes_negative_indices_of_any_shape(executor) -> None:
    table = f32(10, 4)
    ids = np.array([[0, -1, 3], [9, -10, 2]], np.int32)
    (got,) = check(executor, ops.plan("gather", table, ids, axis=0))
    np.testing.assert_array_equal(got, np.take(table, ids, axis=0))
    (got,) = check(executor, ops.plan("gather", table, np.array(-2, np.int32), axis=1))
    np.testing.assert_array_equal(got, table[:, -2])


def test_gather_reads_indices_computed_on_the_device(executor) -> None:
    """argmax gives int32 indices that never leave the device before the gather uses them."""
    g = Builder()
    scores, table = g.input("scores", f32(5, 7)), g.input("table", f32(7, 3))
    plan = ops.compile_graph([g("gather", table, g("argmax", scores, axis=1), axis=0)])
    (got,) = check(executor, plan)
    np.testing.assert_array_equal(got, table.leaf.array[np.argmax(scores.leaf.array, axis=1)])


RANK6 = (2, 3, 1, 4, 2, 3)


@pytest.mark.parametrize(
    ("op", "extra", "options"),
    [
        ("pad", [], {"pads": (1, 0, 2, 0, 1, 1, 0, 2, 0, 1, 3, 0), "mode": "reflect"}),
        ("concat", [np.ones((2, 3, 1, 2, 2, 3), np.float32)] * 8, {"axis": 3}),
        ("gather", [np.array([[1, -1], [0, 2]], np.int32)], {"axis": 1}),
        ("sum", [], {"axis": (0, 3, 5), "keepdims": True}),
        ("argmin", [], {"axis": 4}),
        ("softmax", [], {"axis": 1}),
        ("layernorm", [np.full((4, 1, 3), 2, np.float32)], {"axis": 3}),
        ("expand", [], {"shape": (5, 1, 1, 1, 1, 1, 1)}),
        ("slice", [], {"starts": (1, 2, 0, 3, 0, 2), "ends": (-1, -1, 1, 0, 2, -1), "steps": (-1, -1, 1, -2, 1, -2)}),
    ],
)
def test_rank_six_arrays_work_everywhere(executor, op: str, extra: list[np.ndarray], options: dict) -> None:
    check(executor, ops.plan(op, f32(*RANK6), *extra, **options))


def test_integer_mod_takes_the_divisors_sign_at_the_edges(executor) -> None:
    """Negative operands, the most negative int32, and 0 as divisor (numpy gives 0)."""
    a = np.array([7, -7, 7, -7, -(2**31), -(2**31), 2**31 - 1, 5, -5, 0], np.int32)
    b = np.array([3, 3, -3, -3, 7, -1, -2, 0, 0, 4], np.int32)
    (got,) = check(executor, ops.plan("mod", a, b))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(got, np.mod(a, b))


# -- comparisons, logic, where ------------------------------------------------------------------


def test_a_causal_mask_through_where_is_one_kernel_of_int32_truth(executor) -> None:
    g = Builder()
    rows, cols = g.input("rows", np.arange(6, dtype=np.int32).reshape(6, 1)), g.input("cols", np.arange(6))
    scores = g.input("scores", f32(2, 6, 6))
    allowed = g("less_equal", cols, rows)
    assert allowed.dtype == "int32"
    masked = g("where", allowed, scores, g.graph.const(-1e9, "-1e9"))
    assert len(ops.compile_graph([masked]).program.steps) == 1
    plan = ops.compile_graph([masked, g("logical_not", allowed)])
    assert len(plan.program.steps) == 3  # used twice, the mask gets a buffer of its own
    masked_got, hidden = check(executor, plan)
    np.testing.assert_array_equal(hidden, np.triu(np.ones((6, 6), np.int32), 1))
    assert (masked_got[:, hidden.astype(bool)] == np.float32(-1e9)).all()


def test_a_mask_of_minus_infinity_gives_softmax_zeros(executor) -> None:
    """Exporters mask attention with -inf: an infinite constant reaches the kernel through its uniforms."""
    g = Builder()
    scores = g.input("scores", f32(3, 5, 5))
    steps = np.arange(5, dtype=np.int32)
    allowed = g("less_equal", g.input("cols", steps), g.input("rows", steps.reshape(5, 1)))
    masked = g("where", allowed, scores, g.graph.const(-math.inf, "-inf"))
    plan = ops.compile_graph([g("softmax", masked, axis=-1), g("add", scores, g.graph.const(math.inf, "inf"))])
    probabilities, infinite = check(executor, plan)
    assert (probabilities[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0).all()
    assert np.isposinf(infinite).all()
    with pytest.raises(DtypeError, match="cannot be NaN"):
        g.graph.const(math.nan, "nan")


def test_comparisons_of_mixed_ints_and_floats_compare_as_floats(executor) -> None:
    a, b = np.array([1, 2, 3], np.int32), np.array([1.5, 2.0, 2.5], np.float32)
    for op, fn in [("less", np.less), ("equal", np.equal), ("greater_equal", np.greater_equal)]:
        (got,) = check(executor, ops.plan(op, a, b))
        np.testing.assert_array_equal(got, fn(a, b).astype(np.int32))


# -- buffers reused along a chain -------------------------------------------------------------


def layers(count: int, width: int = 32, batch: int = 8) -> tuple[list[ops.Node], ops.Node]:
    """``count`` layers of relu(h @ W + b) with a reshape round trip, from one input x."""
    g = Builder()
    x = g.input("x", f32(batch, width))
    h = x
    outputs = []
    for k in range(count):
        w = g.input(f"w{k}", (f32(width, width) / math.sqrt(width)).astype(np.float32))
        b = g.input(f"b{k}", f32(width))
        h = g("relu", g("add", g("matmul", h, w), b))
        h = g("reshape", g("reshape", h, shape=(batch, 4, width // 4)), shape=(batch, width))
        if k in (0, count // 2):
            outputs.append(h)
    outputs.append(g("add", h, x))  # x is read again at the very end: its buffer must be intact
    return outputs, x


def test_a_hundred_layers_reuse_a_few_buffers_and_still_compute_correctly(executor) -> None:
    """Dead activations give their buffers to later ones: scratch memory stays flat as layers grow."""
    outputs, _ = layers(100)
    plan = ops.compile_graph(outputs)
    nodes = len(ops.graph.topological(outputs))
    scratch = scratch_buffers(plan)
    assert nodes > 700 and len(plan.program.steps) == 201  # a matmul and one fused kernel per layer, the end
    assert len(scratch) <= 8  # three outputs, and a few in flight
    assert sum(scratch) <= 8 * 8 * 32 * 4
    check(executor, plan)


def test_scratch_memory_does_not_grow_with_depth() -> None:
    sizes = [sum(scratch_buffers(ops.compile_graph(layers(n)[0]))) for n in (10, 40, 160)]
    assert sizes[0] == sizes[1] == sizes[2]


def test_outputs_inputs_and_values_read_through_a_reshape_keep_their_buffers(executor) -> None:
    """An intermediate returned as an output, and one read later through a reshape, are never overwritten."""
    g = Builder()
    x = g.input("x", f32(16, 16))
    first = g("exp", g("mul", x, g.graph.const(0.1, "0.1")))
    kept = g("reshape", g("matmul", first, x), shape=(256,))
    h = first
    for _ in range(6):
        h = g("tanh", g("matmul", h, x))
    late = g("add", g("reshape", kept, shape=(16, 16)), h)
    check(executor, ops.compile_graph([first, late, x]))


def test_buffers_are_reused_with_float16_on_the_wire(executor) -> None:
    outputs, _ = layers(12)
    plan = ops.compile_graph(outputs, wire="f16")
    got = run_on(executor, plan)
    for value, expected in zip(got, plan.reference(), strict=True):
        np.testing.assert_allclose(value, expected, rtol=2e-2, atol=2e-2)


KERNEL_OPS = sorted(name for name, spec in ops.OPS.items() if spec.kind == "kernel" and spec.trusted)


@pytest.mark.parametrize("op", KERNEL_OPS)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_every_kernel_op_writes_all_of_a_reused_buffer(executor, op: str, data: st.DataObject) -> None:
    """A reused buffer is not zeroed: each kernel op, given one full of -7s, still gives numpy's answer."""
    arrays, options = data.draw(CASES[op](), label="arguments")
    typed = ops.call(op, *arrays, **options).args  # arrays in the dtypes the op reads: no cast takes the buffer
    g = Builder()
    args = [g.input(f"a{k}", a.astype(arg.dtype)) for k, (a, arg) in enumerate(zip(arrays, typed, strict=True))]
    y = g(op, *args, **options)
    junk = g("neg", g.input("junk", np.full(max(y.size, 1), 7, np.float32)))
    plan = ops.compile_graph([g("sum", junk), y])
    junk_buffer = plan.program.steps[0].bindings[-2]  # the kernel making -junk writes it
    assert plan.program.outputs[1].buffer == junk_buffer or not y.size
    (_, got) = run_on(executor, plan)
    assert ops.error_ratio(y, got) <= 1


# -- a transformer block, as an exporter writes it -----------------------------------------------


def decoder_block(batch: int = 2, tokens: int = 7, width: int = 16, heads: int = 4) -> list[ops.Node]:
    """Token embeddings (gather), layernorm, fused QKV split by slices, heads by reshape/transpose,
    a causal mask through where, softmax, GELU through erf, and the residuals."""
    g = Builder()
    ids = g.input("ids", rng.integers(-50, 50, (batch, tokens)).astype(np.int32))
    table, pos = g.input("table", f32(50, width)), g.input("pos", f32(tokens, width))
    qkv_w, qkv_b = g.input("qkv_w", f32(width, 3 * width) / 4), g.input("qkv_b", f32(3 * width))
    out_w, up_w = g.input("out_w", f32(width, width) / 4), g.input("up_w", f32(width, 4 * width) / 4)
    down_w = g.input("down_w", f32(4 * width, width) / 8)
    gamma, beta = g.input("gamma", f32(width)), g.input("beta", f32(width))
    steps = np.arange(tokens, dtype=np.int32)
    rows, cols = g.input("rows", steps.reshape(tokens, 1)), g.input("cols", steps)
    const = g.graph.const

    x = g("add", g("gather", table, ids, axis=0), pos)
    qkv = g("add", g("matmul", g("layernorm", x, gamma, beta), qkv_w), qkv_b)
    size = width // heads

    def head(k: int) -> ops.Node:
        part = g("slice", qkv, starts=(0, 0, k * width), ends=(batch, tokens, (k + 1) * width), steps=(1, 1, 1))
        return g("transpose", g("reshape", part, shape=(batch, tokens, heads, size)), axes=(0, 2, 1, 3))

    q, k, v = head(0), head(1), head(2)
    scores = g("mul", g("matmul", q, g("transpose", k, axes=(0, 1, 3, 2))), const(1 / math.sqrt(size), "scale"))
    masked = g("where", g("less_equal", cols, rows), scores, const(-math.inf, "-inf"))
    attended = g("matmul", g("softmax", masked, axis=-1), v)
    merged = g("reshape", g("transpose", attended, axes=(0, 2, 1, 3)), shape=(batch, tokens, width))
    x = g("add", x, g("matmul", merged, out_w))
    up = g("matmul", g("layernorm", x, gamma, beta, axis=2), up_w)
    gelu = g("mul", g("mul", up, const(0.5, "0.5")), g("add", g("erf", g("mul", up, const(1 / math.sqrt(2), "r2"))),
                                                       const(1.0, "1")))  # fmt: skip
    y = g("add", x, g("matmul", gelu, down_w))
    return [y, g("log_softmax", g("matmul", y, g("transpose", table, axes=(1, 0))), axis=-1)]


def close_to_numpy(plan: ops.Plan, got: Sequence[np.ndarray]) -> None:
    for value, expected in zip(got, plan.reference(), strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)


def test_a_decoder_block_matches_numpy(executor) -> None:
    plan = ops.compile_graph(decoder_block())
    close_to_numpy(plan, run_on(executor, plan))


# -- cut by rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs", "cut"),
    [
        ("softmax", {"axis": 1}, True),
        ("softmax", {"axis": 0}, False),
        ("log_softmax", {"axis": -1}, True),
        ("sum", {"axis": (1, 2)}, True),
        ("prod", {"axis": (0, 2)}, False),
        ("pad", {"pads": (0, 1, 2, 0, 1, 2), "mode": "reflect"}, True),
        ("pad", {"pads": (1, 0, 0, 0, 0, 0), "mode": "edge"}, False),
        ("slice", {"starts": (0, 0, 0), "ends": (12, 3, 4), "steps": (1, 1, 1)}, False),
    ],
)
def test_row_shards_cut_only_what_rows_allow(op: str, attrs: dict[str, Any], cut: bool) -> None:
    x = f32(12, 3, 4)
    node = ops.call(op, x, **attrs)
    pieces = split(node, 1 << 20, weights=(1.0, 1.0, 1.0))
    assert (len(pieces.pieces) == 3) == cut
    whole = pieces.assemble([p.plan.reference()[0] for p in pieces.pieces])
    np.testing.assert_allclose(whole, ops.evaluate([node])[0], rtol=1e-6)


def test_concat_and_gather_off_the_first_axis_are_cut_by_rows() -> None:
    a, b = f32(9, 2), f32(9, 5)
    for node in (ops.call("concat", a, b, axis=1), ops.call("gather", b, np.array([4, -1], np.int32), axis=1)):
        pieces = split(node, 1 << 20, weights=(1.0, 2.0))
        assert len(pieces.pieces) == 2
        np.testing.assert_array_equal(pieces.assemble([p.plan.reference()[0] for p in pieces.pieces]),
                                      ops.evaluate([node])[0])  # fmt: skip


# -- refused before anything is sent ----------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "arrays", "options", "error", "complaint"),
    [
        ("reshape", [(3, 4)], {"shape": (5, 2)}, ShapeError, r"cannot make \(3, 4\) \(12 elements\) into \(5, 2\)"),
        ("reshape", [(3, 4)], {"shape": (-1, 4)}, ShapeError, "concrete shape"),
        ("slice", [(5,)], {"starts": (0,), "ends": (6,)}, ShapeError, r"range\(0, 6, 1\) on axis 0 reaches outside"),
        ("slice", [(5,)], {"starts": (4,), "ends": (-2,), "steps": (-1,)}, ShapeError, "reaches outside"),
        ("slice", [(5, 2)], {"starts": (0,), "ends": (2,)}, ShapeError, "2 ints"),
        ("slice", [(5,)], {"starts": (0,), "ends": (2,), "steps": (0,)}, ShapeError, "step 0"),
        ("expand", [(3, 2)], {"shape": (4,)}, ShapeError, "do not broadcast"),
        ("concat", [(2, 3), (3, 3)], {"axis": 1}, ShapeError, r"shape \(3, 3\) does not match"),
        ("concat", [(2, 3)], {"axis": 2}, ShapeError, "out of range"),
        ("pad", [(2, 3)], {"pads": (1, -1, 0, 0)}, ShapeError, "crop with slice"),
        ("pad", [(2, 3)], {"pads": (1, 1)}, ShapeError, "4 ints"),
        ("pad", [(2, 0)], {"pads": (0, 1, 0, 1), "mode": "reflect"}, ShapeError, "empty"),
        ("pad", [(2, 3)], {"pads": (0, 0, 0, 0), "mode": "mirror"}, ShapeError, "one of constant"),
        ("sum", [(2, 3)], {"axis": (1, -1)}, ShapeError, "names an axis twice"),
        ("argmax", [(2, 3)], {"axis": (0, 1)}, ShapeError, "takes one axis"),
        ("softmax", [(2, 3)], {"axis": 2}, ShapeError, "out of range"),
        ("layernorm", [(2, 3, 4), (3, 5)], {"axis": 1}, ShapeError, r"gamma must have shape \(3, 4\)"),
        ("clip", [(2,)], {"min": "0"}, ShapeError, "must be a number or None"),
    ],
)
def test_bad_calls_are_refused_naming_the_problem(op, arrays, options, error, complaint) -> None:
    with pytest.raises(error, match=complaint):
        ops.plan(op, *[np.ones(s, np.float32) for s in arrays], **options)


def test_gather_refuses_known_indices_outside_the_axis_and_float_indices() -> None:
    with pytest.raises(ShapeError, match=r"indices in \[-6, 2\] are outside axis 0 of length 5"):
        ops.plan("gather", np.ones((5, 2)), np.array([2, -6], np.int32))
    with pytest.raises(DtypeError, match="must be integers"):
        ops.plan("gather", np.ones((5, 2)), np.array([1.0], np.float32))
    with pytest.raises(DtypeError, match="does not fit int32"):
        ops.plan("pad", np.ones(3, np.int32), pads=(1, 1), value=0.5)


# -- in the browser -----------------------------------------------------------------------------


@pytest.mark.browser
def test_a_decoder_block_and_a_long_chain_run_in_the_browser(page_worker) -> None:
    """WebGPU in Chromium: the same transformer block, and buffers reused along 30 layers."""
    for outputs in (decoder_block(), layers(30)[0]):
        plan = ops.compile_graph(outputs)
        close_to_numpy(plan, plan.finish(page_worker.submit(plan.program).future.result(120)))  # type: ignore[attr-defined]


@pytest.mark.browser
def test_concat_pad_gather_and_negative_slices_run_in_the_browser(page_worker) -> None:
    x = f32(5, 6)
    cases = [
        ops.plan("concat", *[x] * 9, axis=0),
        ops.plan("pad", x, pads=(2, 7, 1, 0), mode="reflect"),
        ops.plan("gather", x, np.array([[-1, 0], [2, -5]], np.int32), axis=1),
        ops.plan("slice", x, starts=(4, 5), ends=(-1, 0), steps=(-2, -1)),
    ]
    for plan in cases:
        (got,) = plan.finish(page_worker.submit(plan.program).future.result(120))  # type: ignore[attr-defined]
        np.testing.assert_array_equal(got, plan.reference()[0])
