"""Custom kernels from a cell: defined as ops, compiled on a device at once, errors shown against the cell."""

from __future__ import annotations

import numpy as np
import pytest

from webnet_magic.errors import ShapeError
from webnet_magic.ops import OPS

SAXPY = """%%webnet kernel saxpy(x, y, a: f32) -> out[x.shape] --workgroups auto
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { a: f32 }
@group(0) @binding(3) var<uniform> params: Params;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&out)) { out[id.x] = params.a * x[id.x] + y[id.x]; }
}
"""

# Row sums into uint32 counts, with explicit workgroup counts: one workgroup per row.
COUNT_POSITIVE = """%%webnet kernel count_positive(m) -> out[m.shape[0]] --workgroups m.shape[0]
@group(0) @binding(0) var<storage, read> m: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) row: vec3<u32>) {
    let width = arrayLength(&m) / arrayLength(&out);
    var n = 0u;
    for (var i = 0u; i < width; i++) { n += select(0u, 1u, m[row.x * width + i] > 0.0); }
    out[row.x] = n;
}
"""

BROKEN = """%%webnet kernel broken(x) -> out[x.shape]
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    out[id.x] = x[id.x] +;
}
"""


@pytest.fixture
def notebook(joined):
    shell = joined
    shell.run_cell("import numpy as np\nX = np.arange(1000, dtype=np.float32)\nY = np.ones(1000, np.float32)")
    yield shell
    for name in ("saxpy", "count_positive", "broken"):
        OPS.pop(name, None)


def test_a_kernel_cell_defines_an_op_compiled_on_the_device(notebook, capsys) -> None:
    assert notebook.run_cell(SAXPY).success
    assert "saxpy(x, y, a: f32) -> out[x.shape] defined and compiled on d1" in capsys.readouterr().out
    assert notebook.run_cell("%webnet saxpy(X, Y, a=2.0) -> Z").success
    np.testing.assert_array_equal(notebook.user_ns["Z"], 2 * np.arange(1000) + 1)
    # ... and is an op like any other inside expressions (one job: fused tail after the custom kernel).
    assert notebook.run_cell("%webnet relu(saxpy(X - 500, Y, a=1.5)) -> W").success
    np.testing.assert_allclose(notebook.user_ns["W"], np.maximum(1.5 * (np.arange(1000) - 500) + 1, 0))


def test_output_dtype_and_workgroup_counts_come_from_the_cell(notebook) -> None:
    assert notebook.run_cell(COUNT_POSITIVE).success
    notebook.run_cell("M = np.array([[1, -1, 2], [-3, -4, 0.5]], np.float32)")
    assert notebook.run_cell("%webnet count_positive(M) -> N").success
    n = notebook.user_ns["N"]
    assert n.dtype == np.uint32
    np.testing.assert_array_equal(n, [2, 1])


def test_a_compile_error_points_at_the_cell_line_and_column(notebook) -> None:
    result = notebook.run_cell(BROKEN)
    message = str(result.error_in_exec)
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "kernel broken does not compile, cell line 6 column 26: expected expression" in message
    assert "out[id.x] = x[id.x] +;" in message and message.endswith("^")
    assert "broken" not in OPS  # a kernel that does not compile is not left defined


@pytest.mark.parametrize(
    ("cell", "complaint"),
    [
        ("%%webnet kernel f(x) out[x.shape]\nfn main() {}", "write the first line as"),
        ("%%webnet kernel matmul(x) -> out[x.shape]\n@compute @workgroup_size(1) fn main() {}", "built-in op"),
        (
            "%%webnet kernel f(a: f32, x) -> out[x.shape]\n@compute @workgroup_size(1) fn main() {}",
            "array inputs first",
        ),
        ("%%webnet kernel f(x: f64) -> out[x.shape]\n@compute @workgroup_size(1) fn main() {}", "not a scalar type"),
        ("%%webnet kernel f(x) -> out[x.shape]\nfn helper() {}", "exactly one @compute entry point"),
        (
            "%%webnet kernel f(x) -> out[x.shape]\n"
            "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n"
            "@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n"
            "@compute @workgroup_size(1) fn main() {}",
            r"binding 0 \(x\) must be var<storage, read>, but the WGSL has var<storage, read_write>",
        ),
        (
            "%%webnet kernel f(x) -> out[x.shape]\n"
            "@group(0) @binding(0) var<storage, read> x: array<f32>;\n"
            "@compute @workgroup_size(1) fn main() {}",
            r"binding 1 \(out\) must be var<storage, read_write>, but the WGSL has nothing",
        ),
        ("%%webnet kernel f(x) -> out[x.shape]\n", "needs the WGSL source"),
        (
            "%%webnet kernel f(x) -> out[x.shape]\n"
            "// @group(0) @binding(0) var<storage, read> x: array<f32>;\n"
            "@binding(0) @group(0) var<storage, read_write> x: array<f32>;\n"
            "@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n"
            "@compute @workgroup_size(1) fn main() {}",
            "declare every binding as",
        ),
    ],
)
def test_a_kernel_line_that_does_not_fit_its_wgsl_is_refused(shell, cell: str, complaint: str) -> None:
    import re

    result = shell.run_cell(cell)
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert re.search(complaint, str(result.error_in_exec)), str(result.error_in_exec)


def test_calls_are_checked_before_anything_is_sent(notebook) -> None:
    notebook.run_cell(SAXPY)
    for line, complaint in [
        ("%webnet saxpy(X, Y) -> Z", "saxpy needs a=..."),
        ("%webnet saxpy(X, Y, b=1.0) -> Z", "saxpy has no option 'b'"),
        ("%webnet saxpy(X, a=1.0) -> Z", "saxpy takes 2 array arguments, got 1"),
        ("%webnet saxpy(X, Y, a=1.0) --local -> Z", "runs on devices only"),
    ]:
        result = notebook.run_cell(line)
        assert complaint in str(result.error_in_exec), (line, result.error_in_exec)


def test_without_a_device_the_kernel_compiles_on_first_use(shell, capsys) -> None:
    shell.run_cell("%webnet start")
    assert shell.run_cell(SAXPY).success
    assert "compiles on first use" in capsys.readouterr().out
    OPS.pop("saxpy")


def test_auto_workgroups_beyond_one_dimension_are_refused(notebook) -> None:
    """--workgroups auto numbers invocations in x only: past 65535 workgroups it says what to do."""
    one = SAXPY.replace("@workgroup_size(64)", "@workgroup_size(1)")
    assert notebook.run_cell(one).success
    notebook.run_cell("Big = np.ones(70000, np.float32)")
    result = notebook.run_cell("%webnet saxpy(Big, Big, a=1.0) -> Z")
    assert "needs 70000 workgroups in x" in str(result.error_in_exec)


def test_a_custom_kernels_inputs_are_not_kept_on_workers() -> None:
    """Its WGSL is the notebook's: were it to write its input, later jobs must not read that."""
    from webnet_magic import ops
    from webnet_magic.ops.custom import define, install, restore

    custom = define("saxpy(x, y, a: f32) -> out[x.shape]", SAXPY.split("\n", 1)[1])
    previous = install(custom)
    try:
        x = np.ones(100_000, np.float32)
        plan = ops.compile_graph([ops.call("saxpy", x, x, a=2.0)])
        assert all(b.key is None for b in plan.program.buffers)
    finally:
        restore("saxpy", previous)


def test_a_failed_redefinition_keeps_the_working_kernel(notebook) -> None:
    assert notebook.run_cell(SAXPY).success
    broken = SAXPY.replace("params.a * x[id.x]", "params.a * x[id.x] +")
    assert not notebook.run_cell(broken).success
    assert notebook.run_cell("%webnet saxpy(X, Y, a=2.0) -> Z").success


def test_a_compile_position_outside_the_source_builds_no_caret_line() -> None:
    """The worker's line and column are not trusted: a column of 300,000,000 (or a line past the end) gives
    the message without a caret line, not a 300 MB string (hardening item 7)."""
    from webnet_magic.ops.custom import compile_error, define

    custom = define(
        "f(x) -> out[x.shape]",
        "@group(0) @binding(0) var<storage, read> x: array<f32>;\n"
        "@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n"
        "@compute @workgroup_size(1) fn main() {}",
    )
    for position in ("wgsl:2:300000000", "wgsl:99:1", "wgsl:0:1"):
        message = compile_error(custom, f"error: expected expression\n  {position}\n" + "x" * 100_000)
        assert len(message) < 3000 and "^" not in message and "expected expression" in message
    assert compile_error(custom, "error: bad token\n  wgsl:3:1").endswith("^")


IDENTITY = """@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64) fn main() {}"""


def test_shape_and_count_expressions_are_arithmetic_on_the_inputs_dims() -> None:
    """Tuples, indexing, + - * / //, ceil/min/max over x.shape, x.size, x.ndim: evaluated without eval."""
    from webnet_magic.ops.custom import define

    custom = define("f(x) -> out[x.shape[:-1] + (2 * x.ndim,)]", IDENTITY, "ceil(x.size / 64), max(1, x.shape[0] // 8)")
    assert custom.shape_of([(40, 3)]) == (40, 4)
    assert custom.counts([(40, 3)], 160) == (2, 5, 1)
    huge = define("f(x) -> out[x.shape]", IDENTITY, "x.size ** 10 ** 10")
    with pytest.raises(ShapeError, match="too large a power"):  # not hours of arithmetic
        huge.counts([(40, 3)], 160)


@pytest.mark.parametrize(
    ("signature", "workgroups", "complaint"),
    [
        ("f(x) -> out[__import__('pathlib').Path(MARK).touch() or x.shape]", "auto", "is not allowed"),
        ("f(x) -> out[x.shape.__class__]", "auto", "attributes starting with '_'"),
        ("f(x) -> out[open(MARK, 'w') and x.shape]", "auto", "is not allowed"),
        ("f(x) -> out[x.shape]", "open(MARK, 'w')", r"only ceil, max, min can be called here"),
        ("f(x) -> out[(lambda: x.shape)()]", "auto", "only a plain call"),
        ("f(x) -> out[[d for d in x.shape]]", "auto", "a comprehension is not allowed"),
        ("f(x) -> out[y.shape]", "auto", "uses 'y', which is not an input"),
        ("f(x) -> out[x.dtype]", "auto", r"reads .dtype; an input has shape, size, ndim"),
    ],
)
def test_a_shape_expression_that_is_more_than_arithmetic_is_refused_when_defined(
    tmp_path, signature: str, workgroups: str, complaint: str
) -> None:
    """Code in a kernel line is refused at definition with the reason, and does not run (the file is not made)."""
    import re

    from webnet_magic.ops.custom import KernelDefinitionError, define

    mark = tmp_path / "ran"
    with pytest.raises(KernelDefinitionError) as raised:
        custom = define(
            signature.replace("MARK", repr(str(mark))), IDENTITY, workgroups.replace("MARK", repr(str(mark)))
        )
        custom.shape_of([(4,)]), custom.counts([(4,)], 4)
    assert re.search(complaint, str(raised.value)), str(raised.value)
    assert not mark.exists()


def test_a_kernel_line_with_code_in_it_is_a_usage_error_and_defines_nothing(shell, tmp_path) -> None:
    """`%%webnet kernel f(x) -> out[__import__(...)...]`: one line, nothing ran, no op named f."""
    mark = tmp_path / "ran"
    cell = f"%%webnet kernel f(x) -> out[__import__('pathlib').Path({str(mark)!r}).touch() or x.shape]\n{IDENTITY}"
    result = shell.run_cell(cell)
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert str(result.error_in_exec).startswith("webnet: the shape of out") and "\n" not in str(result.error_in_exec)
    assert not mark.exists() and "f" not in OPS


def test_workgroups_is_an_option_like_any_other(shell) -> None:
    """--workgroups goes through argparse like every other option: one it does not know is named."""
    result = shell.run_cell(f"%%webnet kernel f(x) -> out[x.shape] --groups 4\n{IDENTITY}")
    assert "unrecognized arguments: --groups 4" in str(result.error_in_exec)
    assert "f" not in OPS
