"""Op planning (shapes, dtypes) on arrays alone, and the matmul kernel on a real GPU adapter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webnet_magic.errors import DtypeError, ShapeError
from webnet_magic.ops import matmul
from webnet_magic.ops.operands import conversion_note


@pytest.mark.parametrize(
    ("a", "b"),
    [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((0, 4), (4, 5)), ((3, 0), (0, 5))],
)
def test_result_shapes_follow_numpy(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    """1-D operands are promoted and squeezed as numpy's @ does."""
    assert matmul.plan(np.ones(a), np.ones(b)).shape == np.matmul(np.ones(a), np.ones(b)).shape


def test_empty_products_need_no_device() -> None:
    """A zero-sized dimension yields numpy's zeros without a program to run."""
    plan = matmul.plan(np.ones((3, 0)), np.ones((0, 5)))
    assert plan.program is None
    np.testing.assert_array_equal(plan.finish([]), np.zeros((3, 5), np.float32))


def test_mismatched_inner_dimensions_name_both_operands() -> None:
    with pytest.raises(ShapeError, match=r"A has shape \(3, 4\) and B has shape \(5, 2\).*4 and 5"):
        matmul.plan(np.ones((3, 4)), np.ones((5, 2)), names=("A", "B"))


def test_three_dimensional_operands_are_refused_for_now() -> None:
    with pytest.raises(ShapeError, match="1-D or 2-D"):
        matmul.plan(np.ones((2, 3, 4)), np.ones((4, 5)))


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (np.ones((2, 2), np.complex64), "no complex numbers"),
        (np.array([["a", "b"]]), "WGSL cannot hold"),
        (np.array([[object()]]), "WGSL cannot hold"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "WGSL cannot hold"),
        ("not an array", "is a str"),
        (None, "is a NoneType"),
    ],
)
def test_dtypes_wgsl_cannot_hold_are_refused(value: object, complaint: str) -> None:
    with pytest.raises(DtypeError, match=complaint):
        matmul.plan(value, np.ones((2, 2)))


def test_float64_int_and_bool_are_converted_and_reported_once() -> None:
    """Conversions to float32 are named in one short note; float32 input needs none."""
    plan = matmul.plan(np.ones((2, 2)), np.ones((2, 2), np.int64), names=("A", "B"))
    assert (
        plan.note
        == "webnet computes in float32 (WGSL has no float64): converted A from float64, B from int64"
    )
    assert all(o.array.dtype == np.float32 for o in plan.operands)
    assert matmul.plan(np.ones((2, 2), np.float32), np.ones((2, 2), bool)).note.endswith("from bool")
    assert (
        conversion_note(list(matmul.plan(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)).operands))
        is None
    )


def test_non_contiguous_operands_are_made_contiguous() -> None:
    a = np.arange(20, dtype=np.float32).reshape(4, 5).T
    plan = matmul.plan(a, np.ones((4, 3), np.float32))
    assert plan.operands[0].array.flags.c_contiguous
    np.testing.assert_array_equal(plan.operands[0].array, a)


@pytest.fixture(scope="module")
def executor():
    from webnet_magic.worker.gpu import WgpuExecutor

    return WgpuExecutor()


def run_matmul(executor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    plan = matmul.plan(a, b)
    if plan.program is None:
        return plan.finish([])
    outputs, _ = executor.run(plan.program)
    return plan.finish(plan.program.check_results(outputs))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 150), st.integers(1, 150), st.integers(1, 150), st.integers(0, 2**32 - 1))
def test_matmul_kernel_matches_numpy_for_any_size(executor, m: int, k: int, n: int, seed: int) -> None:
    """The tiled WGSL kernel on lavapipe agrees with numpy for sizes on and off the 64-tile grid."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = run_matmul(executor, a, b)
    assert c.shape == (m, n) and c.dtype == np.float32
    np.testing.assert_allclose(c, matmul.reference(a, b), rtol=0, atol=matmul.tolerance(a, b))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (64, 64, 64), (65, 16, 63), (1, 300, 1), (200, 1, 129)])
def test_matmul_kernel_edge_sizes(executor, m: int, k: int, n: int) -> None:
    """One-element, exact-tile and one-past-tile sizes; vectors in either position."""
    rng = np.random.default_rng(m * k * n)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    np.testing.assert_allclose(run_matmul(executor, a, b), a @ b, rtol=0, atol=matmul.tolerance(a, b))
    v = rng.random(k, np.float32)
    np.testing.assert_allclose(run_matmul(executor, v, b), v @ b, rtol=0, atol=matmul.tolerance(v[None], b))
    np.testing.assert_allclose(
        run_matmul(executor, a, v), a @ v, rtol=0, atol=matmul.tolerance(a, v[:, None])
    )


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
