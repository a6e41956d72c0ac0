"""--wire f16: float data travels as float16 both ways, half the bytes, at float16's precision."""

from __future__ import annotations

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.errors import DtypeError

from .conftest import Workers, join_native


def test_f16_halves_the_bytes_of_float_inputs_and_outputs() -> None:
    x = np.random.default_rng(0).random((200, 300), np.float32)
    full, half = (ops.compile_graph([ops.call("exp", x)], wire) for wire in ("f32", "f16"))
    assert half.program.input_bytes < full.program.input_bytes / 2 + 256
    assert half.program.output_bytes == full.program.output_bytes / 2


def test_integer_data_is_left_as_it_is() -> None:
    plan = ops.compile_graph([ops.call("add", np.arange(6), np.arange(6))], "f16")
    assert plan.program.output_bytes == 6 * 4 and plan.program.outputs[0].dtype == "int32"


def test_values_beyond_float16_are_refused_rather_than_made_infinite() -> None:
    with pytest.raises(DtypeError, match="beyond float16's range"):
        ops.compile_graph([ops.call("exp", np.array([1.0, 70000.0]))], "f16")


def test_f16_results_match_numpy_to_float16_precision(broker: BrokerThread, workers: Workers) -> None:
    join_native(broker, workers)
    rng = np.random.default_rng(1)
    a, b = rng.random((64, 128), np.float32), rng.random((128, 96), np.float32)
    plan = ops.compile_graph([ops.call("matmul", a, b)], "f16")
    (got,) = plan.finish(broker.submit(plan.program).future.result(60))
    assert got.dtype == np.float32
    exact = a.astype(np.float64) @ b
    # inputs rounded to 11 bits (relative 2**-11 each), the result rounded to 11 bits again
    np.testing.assert_allclose(got, exact, rtol=3 * 2.0**-11 * 2, atol=1e-3)
    assert not np.array_equal(got, exact.astype(np.float32))  # it really went through float16


def test_large_arrays_convert_in_slices_exactly_as_numpy_casts() -> None:
    """An array of several slices (converted on threads) equals numpy's own casts both ways, inf and
    NaN included; a value beyond float16's range in its last slice still refuses the whole array."""
    from webnet_magic.ops.half import SLICE, to_float, to_half

    x = np.random.default_rng(2).standard_normal(3 * SLICE + 6).astype(np.float32) * 1000  # not whole slices
    x[[0, SLICE + 1, 2 * SLICE + 2]] = [np.inf, -np.inf, np.nan]
    half = to_half(x.reshape(-1, 6), "x")
    assert half.shape == (len(x) // 6, 6)
    np.testing.assert_array_equal(half.reshape(-1), x.astype(np.float16))
    np.testing.assert_array_equal(to_float(half), half.astype(np.float32))
    x[-1] = 65520.0  # rounds to inf in float16
    with pytest.raises(DtypeError, match="beyond float16's range"):
        ops.compile_graph([ops.call("exp", x)], "f16")
