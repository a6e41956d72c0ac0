"""``conv2d(x, w, bias=None, stride=1, padding=0)``: 2-D convolution in NCHW, as in PyTorch.

``x`` is (N, C, H, W), ``w`` is (F, C, KH, KW), ``bias`` (F,); ``stride`` and ``padding``
are an int or a pair (height, width); padding is with zeros.  The output is
(N, F, (H + 2·pad_h - KH) // stride_h + 1, (W + 2·pad_w - KW) // stride_w + 1), float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..program import Kernel
from .compiler import Builder, Value, grid
from .dtypes import EPS32
from .graph import Node, OpSpec, Shape, Typed, register

KERNEL = Kernel(files(__package__).joinpath("conv2d.wgsl").read_text())


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(value) if isinstance(value, tuple | list) else ()
    if len(pair) != 2 or not all(type(v) is int and v >= minimum for v in pair):
        raise ShapeError(f"conv2d's {name} must be an int >= {minimum} or a pair of them, not {value!r}")
    return pair  # type: ignore[return-value]


def _geometry(x: Shape, w: Shape, attrs: Mapping[str, Any]) -> tuple[Shape, tuple[int, ...]]:
    """The output shape and the kernel's parameters, or a ShapeError naming what does not fit."""
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"conv2d takes x of shape (N, C, H, W) and w of shape (F, C, KH, KW), not {x} and {w}")
    (n, c, h, width), (f, c2, kh, kw) = x, w
    if c != c2:
        raise ShapeError(f"conv2d: x has {c} channels but w expects {c2} (shapes {x} and {w})")
    sh, sw = _pair(attrs["stride"], "stride", 1)
    ph, pw = _pair(attrs["padding"], "padding", 0)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"conv2d: a {kh}x{kw} kernel does not fit a {h}x{width} image padded by {(ph, pw)}")
    return (n, f, oh, ow), (c, h, width, f, kh, kw, oh, ow, sh, sw, ph, pw)


def infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    shape, _ = _geometry(args[0].shape, args[1].shape, attrs)
    if len(args) == 3 and args[2].shape != (args[1].shape[0],):
        raise ShapeError(f"conv2d's bias must have shape ({args[1].shape[0]},), not {args[2].shape}")
    return Typed(shape, "float32", ("float32",) * len(args))


def emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    x, w = args[0], args[1]
    bias = args[2] if len(args) == 3 else x
    shape, geometry = _geometry(x.shape, w.shape, attrs)
    params = builder.uniform(math.prod(shape), *geometry, int(len(args) == 3))
    builder.dispatch(KERNEL, [x.buffer, w.buffer, bias.buffer, out.buffer, params], grid(-(-math.prod(shape) // 256)))


def reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: Any = 1,
              padding: Any = 0) -> np.ndarray:  # fmt: skip
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]
    y = np.einsum("nchwij,fcij->nfhw", windows, w.astype(np.float64))
    return y if bias is None else y + bias.astype(np.float64)[None, :, None, None]


def tolerance(result: np.ndarray, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
              stride: Any = 1, padding: Any = 0) -> np.ndarray:  # fmt: skip
    """Like a dot product of length C·KH·KW: that many ULPs of the sum of |products|."""
    terms = w.shape[1] * w.shape[2] * w.shape[3] + 1
    magnitude = reference(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), stride, padding)
    return 2 * terms * EPS32 * magnitude + 1e-30


register(
    OpSpec("conv2d", (2, 3), "kernel", infer, reference, tolerance,
           "conv2d(x, w, bias, stride=1, padding=0), NCHW", defaults={"stride": 1, "padding": 0}, emit=emit)
)  # fmt: skip
