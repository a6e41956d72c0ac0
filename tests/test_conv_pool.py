"""conv, pooling and LRN: against numpy on the native worker (lavapipe) over shapes and attributes
that reach every path (the tiled and direct conv kernels, partial tiles, depthwise, ceil_mode
windows), against onnxruntime on single-node ONNX models, and a few in Chromium."""

from __future__ import annotations

import math

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.errors import ShapeError
from webnet_magic.ops import conv
from webnet_magic.ops.compiler import Builder, ContentKeys, Value
from webnet_magic.ops.restrict import restrict

from .test_browser_ops import run_on as run_in_page
from .test_ops import run_on


@pytest.fixture(scope="module")
def executor():
    from webnet_magic.worker.gpu import WgpuExecutor

    return WgpuExecutor()


def _values(*shape: int, seed: int = 0, low: float = -1, high: float = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _conv_arrays(x: tuple[int, ...], w: tuple[int, ...], bias: bool) -> list[np.ndarray]:
    arrays = [_values(*x, seed=1), _values(*w, seed=2)]
    return [*arrays, _values(w[0], seed=3)] if bias else arrays


#: (x shape, w shape, bias, attributes, direct kernel expected)
CONVS = {
    "1x1": ((2, 64, 7, 7), (256, 64, 1, 1), True, {}, False),
    "3x3 pad 1": ((1, 32, 14, 14), (64, 32, 3, 3), True, {"pads": 1}, False),
    "resnet stem, K=147 off the tap step": ((1, 3, 32, 32), (64, 3, 7, 7), False, {"strides": 2, "pads": 3}, False),
    "stride past the kernel": ((2, 16, 11, 13), (20, 16, 2, 2), True, {"strides": (3, 4)}, False),
    "dilated": ((1, 8, 15, 15), (24, 8, 3, 3), False, {"dilations": (2, 3), "pads": (2, 3, 2, 3)}, False),
    "asymmetric pads": ((1, 5, 9, 8), (17, 5, 3, 2), True, {"pads": (0, 1, 2, 0)}, False),
    "groups=2": ((2, 32, 10, 10), (64, 16, 3, 3), True, {"groups": 2, "pads": 1}, False),
    "depthwise": ((2, 32, 10, 10), (32, 1, 3, 3), True, {"groups": 32, "pads": 1}, True),
    "depthwise x2, stride 2": ((1, 8, 9, 9), (16, 1, 5, 5), False, {"groups": 8, "strides": 2, "pads": 2}, True),
    "few filters": ((3, 7, 6, 6), (5, 7, 3, 3), True, {}, True),
    "filters past one tile": ((1, 8, 6, 6), (200, 8, 3, 3), True, {"pads": (1, 0, 0, 1)}, False),
    "batch across pixel tiles": ((5, 4, 9, 9), (16, 4, 1, 1), False, {}, False),
    "1-D": ((2, 6, 50), (32, 6, 5), True, {"strides": 2, "pads": (2, 1), "dilations": 2}, False),
    "3-D": ((1, 4, 6, 7, 8), (16, 4, 3, 3, 3), True, {"pads": (1, 1, 1, 0, 1, 2)}, False),
    "3-D direct": ((2, 3, 5, 5, 5), (4, 3, 2, 2, 2), False, {"strides": 2}, True),
    "1x1 image": ((1, 3, 1, 1), (16, 3, 1, 1), True, {}, False),
    "deep, few tiles: split along K": ((1, 256, 7, 7), (64, 256, 3, 3), True, {"pads": 1}, False),
}


@pytest.mark.parametrize("case", CONVS)
def test_conv_matches_numpy(executor, case: str) -> None:
    """Each conv, on the kernel it is planned for, is within its tolerance of numpy's float64 answer."""
    x, w, bias, attrs, direct = CONVS[case]
    arrays = _conv_arrays(x, w, bias)
    plan = ops.plan("conv", *arrays, **attrs)
    geometry = conv.geometry("conv", x, w, {**ops.OPS["conv"].defaults, **attrs})
    assert (conv.schedule(geometry).tiling is None) == direct
    (got,) = run_on(executor, plan)
    assert got.shape == plan.nodes[0].shape
    assert ops.error_ratio(plan.nodes[0], got) <= 1


def test_a_deep_conv_with_few_tiles_is_split_along_its_taps() -> None:
    """7x7 pixels and 64 filters make one tile: its K = 2304 taps are cut over workgroups, then summed."""
    x, w, bias, attrs, _ = CONVS["deep, few tiles: split along K"]
    plan = ops.plan("conv", *_conv_arrays(x, w, bias), **attrs)
    schedule = conv.schedule(conv.geometry("conv", x, w, plan.nodes[0].options))
    assert schedule.splits == 2304 // conv.MIN_SPLIT_DEPTH and len(plan.program.steps) == 2


@pytest.mark.parametrize("kernel", [*conv.TILINGS, "split", "direct"], ids=str)
def test_every_conv_kernel_handles_partial_tiles_and_split_dispatches(executor, kernel) -> None:
    """Each tiling (and one split along K into 4) and the direct kernel on filters, pixels and taps that
    fill no tile evenly, with one workgroup per dispatch dimension so the tiled kernels take a dispatch per tile."""
    x, w, b = _conv_arrays((3, 20, 17, 15), (70, 10, 3, 2), True)  # K = 60 taps: 16 + 16 + 16 + 12
    attrs = {"strides": (2, 1), "pads": (1, 0, 2, 1), "dilations": (1, 2), "groups": 2}
    node = ops.call("conv", x, w, b, **attrs)
    geometry = conv.geometry("conv", x.shape, w.shape, node.options)
    schedule = {"split": conv.Schedule(conv.TILING, 4, 16), "direct": conv.Schedule(None)}.get(kernel)
    schedule = schedule or conv.schedule(geometry, kernel)
    builder = Builder(ContentKeys())
    args = [Value(builder.input(a), a.shape, "float32") for a in (x, w, b)]
    out = builder.scratch(node.shape, "float32")
    conv.emit_conv(builder, args, out, geometry, schedule, limit=1)
    builder.output(out)
    program = builder.program()
    if schedule.tiling is not None:
        rows, cols = conv._tiles(geometry, schedule.tiling)
        assert sum(s.workgroups[:2] == (1, 1) for s in program.steps) == rows * cols >= 4
    outputs, _ = executor.run(program)
    (got,) = program.check_results(outputs)
    assert ops.error_ratio(node, np.asarray(got).reshape(node.shape)) <= 1


def test_conv2d_runs_the_conv_kernels_with_pytorchs_attributes(executor) -> None:
    """conv2d(x, w, bias, stride=, padding=) is conv with symmetric pads."""
    x, w, b = _conv_arrays((2, 3, 12, 10), (32, 3, 3, 3), True)
    plan = ops.plan("conv2d", x, w, b, stride=(2, 1), padding=1)
    (got,) = run_on(executor, plan)
    expected = ops.evaluate([ops.call("conv", x, w, b, strides=(2, 1), pads=(1, 1, 1, 1))])[0]
    assert ops.error_ratio(plan.nodes[0], got) <= 1 and got.shape == expected.shape


def test_conv_work_counts_every_multiply_add() -> None:
    """A program's work (what calibration divides by time) counts 2·K flops per conv output."""
    x, w = _conv_arrays((2, 8, 10, 10), (32, 4, 3, 3), False)
    plan = ops.plan("conv", x, w, groups=2, pads=1)
    assert plan.program.work == 2 * (2 * 32 * 10 * 10) * (4 * 3 * 3)


#: (op, x shape, attributes)
POOLS = {
    "max 3x3/2 pad 1 (resnet)": ("maxpool", (2, 8, 16, 16), {"kernel": 3, "strides": 2, "pads": 1}),
    "max ceil_mode, asymmetric pads": (
        "maxpool", (1, 3, 9, 10), {"kernel": (3, 3), "strides": 2, "pads": (1, 0, 1, 2), "ceil_mode": True},
    ),
    "max dilated": ("maxpool", (1, 2, 11, 11), {"kernel": (2, 3), "strides": (3, 1), "dilations": (2, 2)}),
    "max stride past the kernel": ("maxpool", (1, 2, 13, 13), {"kernel": 2, "strides": 5}),
    "max 1-D": ("maxpool", (2, 3, 17), {"kernel": 4, "strides": 3, "pads": (1, 2), "ceil_mode": True}),
    "max 3-D": ("maxpool", (1, 2, 5, 6, 7), {"kernel": (2, 2, 3), "strides": 2, "ceil_mode": True}),
    "avg excluding pads": ("avgpool", (2, 4, 9, 9), {"kernel": 3, "strides": 2, "pads": 1}),
    "avg including pads, ceil_mode": (
        "avgpool", (2, 4, 9, 10), {"kernel": 3, "strides": 2, "pads": (1, 0, 1, 2), "ceil_mode": True,
                                   "count_include_pad": True},
    ),
    "avg ceil_mode overhang": ("avgpool", (1, 1, 5, 5), {"kernel": 2, "strides": 2, "ceil_mode": True,
                                                         "count_include_pad": True}),
    "avg 1-D": ("avgpool", (1, 3, 20), {"kernel": 5, "strides": 2, "pads": (2, 2)}),
    "avg 3-D": ("avgpool", (1, 2, 6, 6, 6), {"kernel": 3, "strides": 2, "pads": 1, "count_include_pad": True}),
    "global avg": ("global_avgpool", (2, 16, 7, 7), {}),
    "global avg, large plane": ("global_avgpool", (1, 2, 64, 70), {}),
    "global max 1-D": ("global_maxpool", (3, 5, 11), {}),
    "global max 3-D": ("global_maxpool", (1, 4, 3, 5, 6), {}),
    "lrn (alexnet)": ("lrn", (2, 16, 5, 5), {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0}),
    "lrn even size": ("lrn", (1, 7, 3, 4), {"size": 4, "alpha": 0.5, "beta": 1.5, "bias": 1.0}),
    "lrn wider than C": ("lrn", (1, 3, 2, 2), {"size": 9, "alpha": 0.1}),
}  # fmt: skip


@pytest.mark.parametrize("case", POOLS)
def test_pooling_and_lrn_match_numpy(executor, case: str) -> None:
    op, shape, attrs = POOLS[case]
    plan = ops.plan(op, _values(*shape, low=-10, high=10), **attrs)
    (got,) = run_on(executor, plan)
    assert got.shape == plan.nodes[0].shape
    assert ops.error_ratio(plan.nodes[0], got) <= 1


def test_maxpool_of_integers_is_exact(executor) -> None:
    x = np.random.default_rng(4).integers(-(2**31), 2**31 - 1, (2, 3, 7, 7)).astype(np.int32)
    plan = ops.plan("maxpool", x, kernel=3, strides=2, pads=1)
    (got,) = run_on(executor, plan)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, plan.reference()[0])


def test_windows_with_no_tap_inside_x_give_lowest_and_zero(executor) -> None:
    """Dilation can step over all of x: maxpool gives float32's lowest value there, avgpool 0."""
    x = np.array([[[7.0]]], np.float32)
    attrs = {"kernel": 2, "dilations": 3, "pads": (2, 3)}  # windows at -2, -1 and 0: taps (-2, 1), (-1, 2), (0, 3)
    (low,) = run_on(executor, ops.plan("maxpool", x, **attrs))
    (zero,) = run_on(executor, ops.plan("avgpool", x, **attrs))
    lowest = np.finfo(np.float32).min
    np.testing.assert_array_equal(low, [[[lowest, lowest, 7.0]]])
    np.testing.assert_array_equal(zero, [[[0.0, 0.0, 7.0]]])


# -- onnxruntime ----------------------------------------------------------------------------------


def _onnxruntime(op_type: str, arrays: list[np.ndarray], attrs: dict) -> np.ndarray:
    """onnxruntime's answer for a model of one ``op_type`` node."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    names = [f"in{i}" for i in range(len(arrays))]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in zip(names, arrays, strict=True)]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["out"], **attrs)], "one", inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, arrays, strict=True)))[0]


#: (our op, x shape, w shape or None, our attributes, ONNX op, ONNX attributes)
ONNX_CASES = {
    "conv 2-D": ("conv", (2, 6, 11, 12), (32, 3, 3, 2), {"strides": (2, 1), "pads": (1, 0, 2, 1),
                 "dilations": (1, 2), "groups": 2},
                 "Conv", {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [1, 2], "group": 2}),
    "conv depthwise": ("conv", (1, 8, 9, 9), (8, 1, 3, 3), {"groups": 8, "pads": 1}, "Conv",
                       {"group": 8, "pads": [1, 1, 1, 1]}),
    "conv 1-D": ("conv", (2, 4, 30), (16, 4, 5), {"strides": 3, "pads": (2, 0)}, "Conv",
                 {"strides": [3], "pads": [2, 0]}),
    "conv 3-D": ("conv", (1, 3, 5, 6, 7), (16, 3, 2, 3, 3), {"pads": (0, 1, 1, 1, 1, 0)}, "Conv",
                 {"pads": [0, 1, 1, 1, 1, 0]}),
    "maxpool ceil dilated": ("maxpool", (1, 3, 10, 11), None, {"kernel": (3, 2), "strides": 2, "dilations": (2, 1),
                             "pads": (1, 1, 1, 0), "ceil_mode": True},
                             "MaxPool", {"kernel_shape": [3, 2], "strides": [2, 2], "dilations": [2, 1],
                                         "pads": [1, 1, 1, 0], "ceil_mode": 1}),
    "avgpool include pad, ceil": ("avgpool", (2, 3, 9, 10), None, {"kernel": 3, "strides": 2, "pads": (1, 0, 1, 2),
                                  "ceil_mode": True, "count_include_pad": True},
                                  "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2],
                                                  "ceil_mode": 1, "count_include_pad": 1}),
    "avgpool exclude pad": ("avgpool", (2, 3, 9, 10), None, {"kernel": 3, "strides": 2, "pads": 1, "ceil_mode": True},
                            "AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                            "ceil_mode": 1}),
    "global avgpool": ("global_avgpool", (2, 5, 7, 6), None, {}, "GlobalAveragePool", {}),
    "global maxpool": ("global_maxpool", (2, 5, 7, 6), None, {}, "GlobalMaxPool", {}),
    "lrn": ("lrn", (2, 10, 4, 5), None, {"size": 5, "alpha": 0.01, "beta": 0.75, "bias": 2.0}, "LRN",
            {"size": 5, "alpha": 0.01, "beta": 0.75, "bias": 2.0}),
}  # fmt: skip


@pytest.mark.parametrize("case", ONNX_CASES)
def test_device_and_onnxruntime_agree_with_the_reference(executor, case: str) -> None:
    """The device's result and onnxruntime's are both within the op's tolerance of numpy's float64 answer,
    so our reading of each ONNX attribute is onnxruntime's."""
    op, x_shape, w_shape, attrs, onnx_op, onnx_attrs = ONNX_CASES[case]
    arrays = [_values(*x_shape, seed=5, low=-3, high=3)] + ([_values(*w_shape, seed=6)] if w_shape else [])
    plan = ops.plan(op, *arrays, **attrs)
    (got,) = run_on(executor, plan)
    theirs = _onnxruntime(onnx_op, arrays, onnx_attrs)
    assert theirs.shape == got.shape
    assert ops.error_ratio(plan.nodes[0], got) <= 1
    assert ops.error_ratio(plan.nodes[0], theirs) <= 1


# -- expressions, sharding, refusals --------------------------------------------------------------


def test_a_conv_net_expression_runs_as_one_program(executor) -> None:
    from webnet_magic.client.expressions import namespace_resolver, parse

    rng = np.random.default_rng(7)
    ns = {"X": rng.standard_normal((2, 3, 16, 16)), "W1": rng.standard_normal((16, 3, 3, 3)),
          "b1": rng.standard_normal(16), "W2": rng.standard_normal((32, 16, 1, 1))}  # fmt: skip
    text = "global_avgpool(conv(maxpool(relu(conv(X, W1, b1, pads=1)), kernel=2, strides=2), W2, groups=1))"
    plan = ops.compile_graph(parse(text, ops.Graph(), namespace_resolver(ns)))
    got = run_on(executor, plan)
    np.testing.assert_allclose(got[0], plan.reference()[0], rtol=1e-4, atol=1e-4)
    assert got[0].shape == (2, 32, 1, 1)


@pytest.mark.parametrize("op", ["conv", "maxpool", "lrn"])
def test_images_are_cut_for_shards_and_spot_checks(op: str) -> None:
    """A batch's images are independent: rows 1:3 of the result are the op on images 1:3."""
    x = _values(4, 8, 6, 6)
    args = [x, _values(16, 8, 3, 3)] if op == "conv" else [x]
    attrs = {"conv": {"pads": 1}, "maxpool": {"kernel": 2}, "lrn": {"size": 3}}[op]
    node = ops.call(op, *args, **attrs)
    cut = restrict(node, slice(1, 3))
    assert cut is not None
    np.testing.assert_allclose(ops.evaluate([cut])[0], ops.evaluate([node])[0][1:3])


@pytest.mark.parametrize(
    ("op", "shapes", "attrs", "complaint"),
    [
        ("conv", [(1, 6, 8, 8), (4, 4, 3, 3)], {"groups": 2}, r"x has 6 channels but w expects 4 x 2 groups = 8"),
        ("conv", [(1, 6, 8, 8), (5, 3, 3, 3)], {"groups": 2}, r"5 filters do not split into 2 groups"),
        ("conv", [(1, 3, 8, 8), (4, 3, 3, 3)], {"pads": (1, 1)}, r"pads must be 4 ints >= 0"),
        ("conv", [(1, 3, 8, 8), (4, 3, 3, 3)], {"dilations": (1, 0)}, r"dilations must be 2 ints >= 1"),
        ("conv", [(1, 3, 8, 8), (4, 3, 3)], {}, r"as many spatial axes"),
        ("conv", [(1, 3, 2, 2), (4, 3, 3, 3)], {"dilations": 2}, r"does not fit"),
        ("conv", [(1, 1, 2, 2, 2, 2), (1, 1, 1, 1, 1, 1)], {}, r"1 to 3 spatial axes"),
        ("conv", [(1, 3, 8, 8), (4, 3, 3, 3), (3,)], {}, r"bias must have shape \(4,\)"),
        ("maxpool", [(1, 3, 8, 8)], {}, r"needs kernel="),
        ("avgpool", [(1, 3, 8, 8)], {"kernel": 2, "count_include_pad": 1}, r"count_include_pad must be True or False"),
        ("maxpool", [(3, 8)], {"kernel": 2}, r"\(N, C, \*spatial\)"),
        ("lrn", [(1, 3, 8, 8)], {}, r"needs size="),
        ("lrn", [(1, 3, 8, 8)], {"size": 3, "bias": 0.0}, r"bias > 0"),
    ],
)
def test_bad_windows_are_refused_before_anything_is_sent(op, shapes, attrs, complaint) -> None:
    arrays = [np.ones(s, np.float32) for s in shapes]
    with pytest.raises(ShapeError, match=complaint):
        ops.call(op, *arrays, **attrs)


# -- Chromium ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        *("1x1", "resnet stem, K=147 off the tap step", "depthwise", "1-D", "3-D", "deep, few tiles: split along K"),
        *("max ceil_mode, asymmetric pads", "avg including pads, ceil_mode", "global avg", "lrn (alexnet)"),
    ],
)
def test_in_the_browser(page_worker, case: str) -> None:
    """The same kernels on the browser worker: WebGPU on SwiftShader in headless Chromium."""
    if case in CONVS:
        x, w, bias, attrs, _ = CONVS[case]
        plan = ops.plan("conv", *_conv_arrays(x, w, bias), **attrs)
    else:
        op, shape, attrs = POOLS[case]
        plan = ops.plan(op, _values(*shape, low=-10, high=10), **attrs)
    (got,) = run_in_page(page_worker, plan)
    assert ops.error_ratio(plan.nodes[0], got) <= 1
    assert math.prod(got.shape) == plan.nodes[0].size
