"""Every op against numpy, on the native worker's executor (wgpu-py on lavapipe), plus the
checks an op makes before anything is sent (shapes, dtypes, options)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webnet_magic import ops
from webnet_magic.errors import DtypeError, ShapeError
from webnet_magic.ops.dtypes import to_wire

from .op_cases import CASES


def test_every_op_has_generated_cases() -> None:
    """A new op without hypothesis cases would go untested on both workers."""
    assert set(CASES) == set(ops.OPS)


@pytest.fixture(scope="module")
def executor():
    from webnet_magic.worker.gpu import WgpuExecutor

    return WgpuExecutor()


def run_on(executor, plan: ops.Plan) -> list[np.ndarray]:
    outputs, _ = executor.run(plan.program)
    return plan.finish(plan.program.check_results(outputs))


@pytest.mark.parametrize("op", sorted(CASES))
@settings(max_examples=int(os.environ.get("WEBNET_EXAMPLES", "12")), deadline=None)
@given(data=st.data())
def test_op_matches_numpy_within_its_tolerance(executor, op: str, data: st.DataObject) -> None:
    """Each op, on generated shapes and values, agrees with numpy within its stated tolerance."""
    arrays, options = data.draw(CASES[op](), label="arguments")
    plan = ops.plan(op, *arrays, **options)
    (got,) = run_on(executor, plan)
    node = plan.nodes[0]
    assert got.shape == node.shape and got.dtype == node.dtype
    assert ops.error_ratio(node, got) <= 1


@pytest.mark.parametrize(
    ("op", "shapes"),
    [("matmul", [(0, 4), (4, 5)]), ("matmul", [(3, 0), (0, 5)]), ("add", [(0, 3), (3,)]), ("sum", [(0, 3)])],
)
def test_empty_arrays_give_numpys_empty_or_zero_results(executor, op: str, shapes) -> None:
    arrays = [np.ones(s, np.float32) for s in shapes]
    (got,) = run_on(executor, ops.plan(op, *arrays))
    expected = (
        getattr(np, {"add": "add", "sum": "sum", "matmul": "matmul"}[op])(*arrays) if op != "sum" else arrays[0].sum()
    )
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("op", "arrays", "options", "complaint"),
    [
        ("matmul", [(3, 4), (5, 2)], {}, r"inner dimensions 4 and 5 must be equal"),
        ("matmul", [(2, 3, 4), (3, 4, 5)], {}, r"batch dimensions"),
        ("add", [(3, 4), (5,)], {}, r"shapes \(3, 4\) and \(5,\) do not broadcast"),
        ("sum", [(3, 4)], {"axis": 2}, r"axis 2 is out of range"),
        ("max", [(0, 4)], {"axis": 0}, r"empty axis"),
        ("transpose", [(3, 4)], {"axes": (0, 0)}, r"not a permutation"),
        ("layernorm", [(3, 4), (5,)], {}, r"gamma must have shape \(4,\)"),
        ("conv2d", [(1, 3, 8, 8), (2, 4, 3, 3)], {}, r"x has 3 channels but w expects 4"),
        ("conv2d", [(1, 1, 2, 2), (1, 1, 5, 5)], {}, r"does not fit"),
        ("conv2d", [(1, 1, 4, 4), (1, 1, 2, 2)], {"stride": 0}, r"stride must be an int >= 1"),
        ("softmax", [(3, 4)], {"dim": 0}, r"softmax has no option 'dim'"),
        ("relu", [(3,), (3,)], {}, r"relu takes 1 array arguments, got 2"),
        ("transpose", [(3, 4)], {"axes": (3, 0)}, r"not a permutation"),
        ("sum", [(3, 4)], {"keepdims": "no"}, r"keepdims must be True or False"),
        ("sum", [()], {"axis": 0}, r"axis 0 is out of range for 0 dimensions"),
    ],
)
def test_bad_calls_are_refused_before_anything_is_sent(op, arrays, options, complaint) -> None:
    with pytest.raises(ShapeError, match=complaint):
        ops.plan(op, *[np.ones(s, np.float32) for s in arrays], **options)


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (np.ones((2, 2), np.complex64), "no complex numbers"),
        (np.array([["a", "b"]]), "WGSL cannot hold"),
        (np.array([[object()]]), "WGSL cannot hold"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "WGSL cannot hold"),
        (np.array([2**40], np.int64), r"values in \[1099511627776, 1099511627776\], beyond int32"),
        (np.array([2**33], np.uint64), "beyond uint32"),
        ("not an array", "is a str"),
        (None, "is a NoneType"),
    ],
)
def test_dtypes_wgsl_cannot_hold_are_refused(value: object, complaint: str) -> None:
    with pytest.raises(DtypeError, match=complaint):
        to_wire("A", value)


@pytest.mark.parametrize(
    ("dtype", "wire", "converted"),
    [
        ("float64", "float32", "float64"),
        ("float32", "float32", None),
        ("float16", "float16", None),
        ("int64", "int32", "int64"),
        ("int32", "int32", None),
        ("uint64", "uint32", "uint64"),
        ("int8", "int32", "int8"),
        ("bool", "int32", "bool"),
    ],
)
def test_what_each_dtype_travels_as(dtype: str, wire: str, converted: str | None) -> None:
    leaf = to_wire("A", np.ones((2, 3), dtype))
    assert leaf.array.dtype == wire and leaf.converted_from == converted and leaf.array.flags.c_contiguous


def test_conversions_are_named_in_one_note() -> None:
    plan = ops.plan("matmul", np.ones((2, 2)), np.ones((2, 2), np.int64), names=("A", "B"))
    assert plan.note == (
        "webnet computes in 32 bits (WGSL has no float64 or int64): converted A from float64, B from int64"
    )
    assert ops.plan("matmul", np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)).note is None


def test_float16_travels_as_half_the_bytes_and_is_widened_on_the_device(executor) -> None:
    x = np.linspace(-4, 4, 1001).astype(np.float16)
    plan = ops.plan("exp", x)
    assert plan.program.input_bytes < x.size * 4  # the array went as float16
    (got,) = run_on(executor, plan)
    assert got.dtype == np.float32 and ops.error_ratio(plan.nodes[0], got) <= 1


def test_integer_arithmetic_stays_integer_and_wraps_like_numpy(executor) -> None:
    a = np.array([2**31 - 1, 5, -7], np.int32)
    (got,) = run_on(executor, ops.plan("add", a, np.array([1, 2, 3], np.int32)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a + np.array([1, 2, 3], np.int32))


def test_a_wgsl_compile_error_carries_the_compilers_message(executor) -> None:
    """A broken kernel raises GpuJobError('compile') with the line and the compiler's words."""
    from webnet_magic.program import Buffer, Kernel, Program, Step
    from webnet_magic.worker.gpu import GpuJobError

    program = Program(
        (), (Buffer(4),), (Step(Kernel("@compute @workgroup_size(1)\nfn main( {}"), (0,), (1, 1, 1)),), ()
    )
    with pytest.raises(GpuJobError, match="expected") as info:
        executor.run(program)
    assert info.value.kind == "compile" and "wgsl:2" in str(info.value)


def test_mixing_int32_with_uint32_is_refused_rather_than_wrapped() -> None:
    """numpy widens int32 with uint32 to int64, which WGSL lacks: say so instead of a wrong answer."""
    with pytest.raises(DtypeError, match="int32 with uint32"):
        ops.plan("maximum", np.array([4_000_000_000], np.uint32), np.array([1], np.int32))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("I + 3000000000", "does not fit int32"),
        ("X * 1e39", "does not fit float32"),
        ("U + (-1)", "does not fit uint32"),
    ],
)
def test_constants_that_do_not_fit_the_dtype_are_refused(text: str, complaint: str) -> None:
    from webnet_magic.client.expressions import namespace_resolver, parse

    ns = {"I": np.arange(3, dtype=np.int32), "U": np.arange(3, dtype=np.uint32), "X": np.ones(3, np.float32)}
    with pytest.raises(DtypeError, match=complaint):
        parse(text, ops.Graph(), namespace_resolver(ns))


@pytest.mark.parametrize(
    "text",
    ["I + 2147483647", "I + (-2147483648)", "-(-2) + I", "X * 1e-45", "sum(2)"],
)
def test_constants_compile_exactly_at_their_edges(executor, text: str) -> None:
    """Extreme, negative, signed-zero and subnormal constants, and a constant fed to a kernel op."""
    from webnet_magic.client.expressions import namespace_resolver, parse

    ns = {"I": np.arange(3, dtype=np.int32), "X": np.ones(3, np.float32)}
    with np.errstate(divide="ignore", over="ignore"):
        plan = ops.compile_graph(parse(text, ops.Graph(), namespace_resolver(ns)))
        for got, expected in zip(run_on(executor, plan), plan.reference(), strict=True):
            np.testing.assert_array_equal(got, expected)


def test_signed_zero_constants_stay_distinct() -> None:
    """0.0 == -0.0, but 1 / -0.0 is -inf: the graph must not merge them into one node."""
    graph = ops.Graph()
    assert graph.const(0.0, "0.0") is not graph.const(-0.0, "-0.0")
    assert graph.const(2.0, "2.0") is graph.const(2.0, "2.0")


def test_an_expression_reading_many_arrays_is_cut_into_kernels_within_the_binding_limit() -> None:
    """WebGPU guarantees 8 storage buffers per kernel: a sum of ten arrays becomes several kernels."""
    from webnet_magic.client.expressions import namespace_resolver, parse
    from webnet_magic.ops.compiler import MAX_FUSED_INPUTS

    ns = {name: np.full(4, i, np.float32) for i, name in enumerate("ABCDEFGHIJ")}
    plan = ops.compile_graph(parse("A+B+C+D+E+F+G+H+I+J", ops.Graph(), namespace_resolver(ns)))
    assert all(len(step.bindings) - 2 <= MAX_FUSED_INPUTS for step in plan.program.steps)
    assert len(plan.program.steps) > 1


def test_a_batch_beyond_one_dispatch_is_split_across_dispatches(executor) -> None:
    """70000 matrices in a batch: more than 65535 workgroups in z, so two dispatches."""
    a = np.random.default_rng(5).random((70000, 2, 3), np.float32)
    plan = ops.plan("matmul", a, np.ones((3, 2), np.float32))
    assert len(plan.program.steps) == 2 and plan.program.workgroups_max <= 65535
    (got,) = run_on(executor, plan)
    assert ops.error_ratio(plan.nodes[0], got) <= 1
