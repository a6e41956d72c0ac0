"""The network ops of ONNX (convolution, pooling, normalization, Gemm, softmax, reductions) as graph ops.

Where a weight is a constant, the host does the once-per-model work: Gemm's
transposed B is stored transposed, a BatchNormalization that could not be folded
into a convolution becomes one scale and one shift per channel.
"""

from __future__ import annotations

import math

import numpy as np

from ..ops import Node
from .lowering import Host, Lowering, Value, handles
from .onnx_ops import Args, _axes, _f
from .source import ModelError, OnnxNode


def _window(cx: Lowering, n: OnnxNode, x: Node, kernel: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Strides, pads (begin..., end...) and dilations of a conv or pool, with ``auto_pad`` resolved."""
    spatial = x.shape[2:]
    if len(kernel) != len(spatial):
        raise ModelError(f"{n.describe()}: a {len(kernel)}-D window on {len(spatial)}-D input of shape {x.shape}")
    strides = tuple(n.attrs.get("strides", (1,) * len(kernel)))
    dilations = tuple(n.attrs.get("dilations", (1,) * len(kernel)))
    auto = n.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        pads = (*begin, *end)
    elif auto == "VALID":
        pads = (0,) * (2 * len(kernel))
    else:
        pads = tuple(n.attrs.get("pads", (0,) * (2 * len(kernel))))
    return {"strides": strides, "pads": pads, "dilations": dilations}


@handles("Conv")
def _conv(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    w = cx.device(xs[1], n.inputs[1])  # type: ignore[arg-type]
    kernel = tuple(n.attrs.get("kernel_shape", w.shape[2:]))
    args = [x, w] + ([cx.device(xs[2], n.inputs[2])] if len(xs) > 2 and xs[2] is not None else [])
    return cx.apply("conv", args, n, groups=int(n.attrs.get("group", 1)), **_window(cx, n, x, kernel))


@handles("MaxPool", "AveragePool")
def _pool(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    if len(n.outputs) > 1 and n.outputs[1]:
        raise ModelError(f"{n.describe()} asks for the indices of its maxima, which are not supported")
    if n.attrs.get("storage_order", 0):
        raise ModelError(f"{n.describe()}: storage_order=1 is not supported")
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    kernel = tuple(n.attrs["kernel_shape"])
    window = _window(cx, n, x, kernel)
    ceil = bool(n.attrs.get("ceil_mode", 0))
    if n.op == "MaxPool":
        return cx.apply("maxpool", [x], n, kernel=kernel, ceil_mode=ceil, **window)
    return cx.apply("avgpool", [x], n, kernel=kernel, ceil_mode=ceil,
                    count_include_pad=bool(n.attrs.get("count_include_pad", 0)), **window)  # fmt: skip


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    op = "global_avgpool" if n.op == "GlobalAveragePool" else "global_maxpool"
    return cx.apply(op, [cx.device(xs[0], n.inputs[0])], n)  # type: ignore[arg-type]


@handles("LRN")
def _lrn(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    options = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0}
    options = {k: float(n.attrs.get(k, v)) for k, v in options.items()}
    return cx.apply("lrn", [cx.device(xs[0], n.inputs[0])], n, size=int(n.attrs["size"]), **options)  # type: ignore[arg-type]


@handles("BatchNormalization")
def _batchnorm(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """Inference: (x - mean) / sqrt(var + eps) * scale + shift, per channel (axis 1)."""
    if len(n.outputs) > 1 and any(n.outputs[1:]):
        raise ModelError(f"{n.describe()} is in training mode (it outputs running statistics); export for inference")
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    eps = float(n.attrs.get("epsilon", 1e-5))
    per_channel = (-1,) + (1,) * (len(x.shape) - 2)
    if all(isinstance(v, Host) for v in xs[1:5]):
        scale, shift, mean, var = (v.array.astype(np.float64) for v in xs[1:5])  # type: ignore[union-attr]
        factor = scale / np.sqrt(var + eps)
        key = n.outputs[0]
        a = cx.model.weight(key, "bn-scale", lambda: (factor.reshape(per_channel)).astype(np.float32))
        b = cx.model.weight(key, "bn-shift", lambda: ((shift - mean * factor).reshape(per_channel)).astype(np.float32))
        return cx.elementwise("add", n, [cx.elementwise("mul", n, [x, Host(a)]), Host(b)])
    scale, shift, mean, var = (cx.apply("reshape", [cx.device(v, name)], n, shape=(x.shape[1], *per_channel[1:]))
                               for v, name in zip(xs[1:5], n.inputs[1:5], strict=True))  # type: ignore[arg-type]  # fmt: skip
    centred = cx.elementwise("sub", n, [x, mean])
    spread = cx.apply("sqrt", [cx.elementwise("add", n, [var, _f(eps)])], n)
    return cx.elementwise("add", n, [cx.elementwise("mul", n, [cx.elementwise("div", n, [centred, spread]), scale]),
                                     shift])  # fmt: skip


@handles("InstanceNormalization")
def _instancenorm(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """Per sample and channel over the spatial axes: a layer norm of (N·C, H·W), then scale and shift."""
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    rows = cx.apply("reshape", [x], n, shape=(x.shape[0] * x.shape[1], math.prod(x.shape[2:])))
    normed = cx.apply("layernorm", [rows], n, eps=float(n.attrs.get("epsilon", 1e-5)))
    back = cx.apply("reshape", [normed], n, shape=x.shape)
    per_channel = (x.shape[1],) + (1,) * (len(x.shape) - 2)
    scale, shift = (cx.apply("reshape", [cx.device(v, name)], n, shape=per_channel)
                    for v, name in zip(xs[1:3], n.inputs[1:3], strict=True))  # type: ignore[arg-type]  # fmt: skip
    return cx.elementwise("add", n, [cx.elementwise("mul", n, [back, scale]), shift])


#: WebGPU's default maxStorageBufferBindingSize: a buffer every device can bind.
BINDING_LIMIT = 128 << 20


def _times(cx: Lowering, n: OnnxNode, a: Value, b: Value, b_name: str) -> Node:
    """``a @ b``; a constant matrix too large for one binding is cut into column blocks, once per model,
    each multiplied on its own and the products joined (VGG's 411 MB fc6 becomes four blocks)."""
    x = cx.device(a, n.inputs[0])
    if not isinstance(b, Host) or b.array.ndim != 2 or b.array.nbytes <= BINDING_LIMIT:
        return cx.apply("matmul", [x, cx.device(b, b_name)], n)
    weight = b.array
    parts = math.ceil(weight.nbytes / BINDING_LIMIT)
    width = -(-weight.shape[1] // parts // 4) * 4  # whole vec4 columns keep the fast kernel
    products = []
    for start in range(0, weight.shape[1], width):
        block = cx.model.weight(b_name, f"cols{start}", lambda start=start: weight[:, start : start + width])
        products.append(cx.apply("matmul", [x, cx.device(Host(block), b_name)], n))
    return cx.apply("concat", products, n, axis=len(products[0].shape) - 1)


@handles("MatMul")
def _matmul(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    return _times(cx, n, xs[0], xs[1], n.inputs[1])  # type: ignore[arg-type]


@handles("Gemm")
def _gemm(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """alpha · A' @ B' + beta · C; a constant B that is transposed is stored transposed once."""
    a, b = xs[0], xs[1]
    if n.attrs.get("transA", 0):
        a = cx.apply("transpose", [cx.device(a, n.inputs[0])], n) if isinstance(a, Node) else Host(a.array.T)  # type: ignore[union-attr]
    if n.attrs.get("transB", 0):
        if isinstance(b, Host):
            array = b.array
            b = Host(cx.model.weight(n.inputs[1], "T", lambda: array.T))
        else:
            b = cx.apply("transpose", [b], n)  # type: ignore[list-item]
    y: Value = _times(cx, n, a, b, n.inputs[1])  # type: ignore[arg-type]
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    if alpha != 1.0:
        y = cx.elementwise("mul", n, [y, _f(alpha)])
    if len(xs) > 2 and xs[2] is not None and beta != 0.0:
        c = xs[2]
        if beta != 1.0:
            c = cx.elementwise("mul", n, [c, _f(beta)])
        y = cx.elementwise("add", n, [y, c])
    return y


@handles("Softmax", "LogSoftmax")
def _softmax(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    """Opset 13 on: over one axis (default -1).  Before: over the flattened axes from ``axis`` (default 1)."""
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    op = "softmax" if n.op == "Softmax" else "log_softmax"
    rank = len(x.shape)
    if cx.opset >= 13:
        return cx.apply(op, [x], n, axis=n.attrs.get("axis", -1) % rank)
    axis = n.attrs.get("axis", 1) % rank
    if axis == rank - 1:
        return cx.apply(op, [x], n, axis=axis)
    flat = cx.apply("reshape", [x], n, shape=(math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))
    return cx.apply("reshape", [cx.apply(op, [flat], n, axis=1)], n, shape=x.shape)


@handles("LayerNormalization")
def _layernorm(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    axis = n.attrs.get("axis", -1) % len(x.shape)
    eps = float(n.attrs.get("epsilon", 1e-5))
    extra = [cx.device(v, name) for v, name in zip(xs[1:3], n.inputs[1:3], strict=False) if v is not None]
    y = cx.apply("layernorm", [x, *extra], n, eps=eps, axis=axis)
    if len(n.outputs) == 1 or not any(n.outputs[1:]):
        return y
    # The statistics (for training graphs): mean, and 1 / sqrt(var + eps), over the normalized axes.
    axes = tuple(range(axis, len(x.shape)))
    mean = cx.apply("mean", [x], n, axis=axes, keepdims=True)
    centred = cx.elementwise("sub", n, [x, mean])
    var = cx.apply("mean", [cx.elementwise("mul", n, [centred, centred])], n, axis=axes, keepdims=True)
    inverse = cx.apply("reciprocal", [cx.apply("sqrt", [cx.elementwise("add", n, [var, _f(eps)])], n)], n)
    return [y, mean, inverse]


REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@handles(*REDUCE)
def _reduce(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    axes = _axes(cx, n, xs, len(x.shape))
    keepdims = bool(n.attrs.get("keepdims", 1))
    if axes is None or axes == ():
        if n.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = tuple(range(len(x.shape)))
    return cx.apply(REDUCE[n.op], [x], n, axis=tuple(sorted(set(axes))), keepdims=keepdims)


@handles("ArgMax", "ArgMin")
def _arg(cx: Lowering, n: OnnxNode, xs: Args) -> Value:
    x = cx.device(xs[0], n.inputs[0])  # type: ignore[arg-type]
    axis = n.attrs.get("axis", 0) % len(x.shape)
    keepdims = bool(n.attrs.get("keepdims", 1))
    if not n.attrs.get("select_last_index", 0):
        return cx.apply(n.op.lower(), [x], n, axis=axis, keepdims=keepdims)
    # The last of equal extremes: the first one in the reversed axis, counted from the end.
    length = x.shape[axis]
    reverse = [(0, s, 1) if a != axis else (s - 1, -1, -1) for a, s in enumerate(x.shape)]
    flipped = cx.apply("slice", [x], n, starts=tuple(r[0] for r in reverse), ends=tuple(r[1] for r in reverse),
                       steps=tuple(r[2] for r in reverse))  # fmt: skip
    first = cx.apply(n.op.lower(), [flipped], n, axis=axis, keepdims=keepdims)
    return cx.elementwise("sub", n, [Host(np.asarray(length - 1, np.int32)), first])
