"""Tensor ops that move elements rather than compute them: ``reshape slice expand concat pad gather``.

``reshape`` is free: the same buffer under another shape (or, for a value without a
buffer, a view, when the reshape only splits dimensions).  ``slice`` and ``expand``
are views: they fold into the fused elementwise kernel that reads them, as an offset
and strides (negative for negative steps, 0 for broadcast), so ``slice(x) + y`` is one
kernel.  ``concat``, ``pad`` and ``gather`` have small kernels of their own
(``concat.wgsl``, ``pad.wgsl``, ``gather.wgsl``).  Every op keeps its input's dtype
(concat promotes its inputs like arithmetic does) and is exact.

Attributes are explicit and normalized, as an importer resolves them: non-negative
axes, one entry per axis.  ``slice(x, starts=, ends=, steps=)`` takes, along each axis,
the elements ``start, start + step, ...`` while before ``end`` (Python's ``range``, not
its slice: ``end`` is not wrapped, so ``-1`` with a negative step means "through
index 0"); each taken index must lie in the axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import numpy as np

from ..errors import DtypeError, ShapeError
from ..program import Kernel
from .compiler import MAX_FUSED_INPUTS, Builder, Value, grid
from .dtypes import WGSL_TYPES
from .elementwise import exact, promote
from .graph import LIMITS, Node, OpSpec, Shape, Typed, broadcast, normalize_axis, register
from .indexing import Mapping as IndexMapping
from .indexing import broadcast as broadcast_mapping
from .indexing import contiguous, regroup, strided

CONCAT = files(__package__).joinpath("concat.wgsl").read_text()
PAD = files(__package__).joinpath("pad.wgsl").read_text()
GATHER = files(__package__).joinpath("gather.wgsl").read_text()
MAX_INPUTS = 4096  # concat's arity bound (any practical list; each dispatch reads at most MAX_FUSED_INPUTS)
#: How pad brings a coordinate ``s`` outside ``[0, n)`` back into the input (WGSL, i32).  Remainders
#: are taken of non-negative numbers only, as u32: i32 % of a negative number came out wrong on
#: NVIDIA's Vulkan driver through wgpu-native 0.32 (as if the operand were unsigned).
PAD_MODES = {
    "constant": "        if (s < 0i || s >= n) { inside = false; s = 0i; }",
    "edge": "        s = clamp(s, 0i, n - 1i);",
    "reflect": """        if (n == 1i) { s = 0i; } else {
            let period = 2i * (n - 1i);
            s = i32(u32(abs(s)) % u32(period));  // reflection about 0, then about n - 1
            if (s >= n) { s = period - s; }
        }""",
    "wrap": """        if (s < 0i) { s = n - 1i - i32(u32(-1i - s) % u32(n)); } else { s = i32(u32(s) % u32(n)); }""",
}


def _ints(value: Any, count: int, name: str, op: str) -> tuple[int, ...]:
    """``value`` as ``count`` ints, or a ShapeError naming the option."""
    items = tuple(value) if isinstance(value, tuple | list) else None
    if items is None or len(items) != count or not all(type(v) is int for v in items):
        raise ShapeError(f"{op}'s {name} must be {count} ints (one per axis), not {value!r}")
    return items


# -- reshape ----------------------------------------------------------------------------------


def _reshape_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    (x,) = args
    raw = attrs["shape"]
    shape = _ints(raw, len(raw) if isinstance(raw, tuple | list) else -1, "shape", "reshape")
    if any(s < 0 for s in shape) or math.prod(shape) != x.size:
        raise ShapeError(
            f"reshape: cannot make {x.shape} ({x.size} elements) into {shape}; give a concrete shape "
            f"with the same number of elements"
        )
    return Typed(shape, x.dtype, (x.dtype,))


def _reshape_view(node: Node, mapping: IndexMapping) -> IndexMapping | None:
    return regroup(node.args[0].shape, node.shape, mapping)


register(
    OpSpec(
        "reshape", (1, 1), "alias", _reshape_infer, lambda x, shape: np.reshape(x, shape), exact,
        "x with another shape of as many elements (free: the same buffer)", defaults={"shape": None},
        view=_reshape_view,
    )
)  # fmt: skip

# -- slice ------------------------------------------------------------------------------------


def _slice_attrs(shape: Shape, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
    """(starts, ends, steps) checked against ``shape``."""
    ndim = len(shape)
    if attrs["starts"] is None or attrs["ends"] is None:
        raise ShapeError("slice needs starts=(...) and ends=(...), one entry per axis")
    starts = _ints(attrs["starts"], ndim, "starts", "slice")
    ends = _ints(attrs["ends"], ndim, "ends", "slice")
    steps = (1,) * ndim if attrs["steps"] is None else _ints(attrs["steps"], ndim, "steps", "slice")
    for axis, (size, start, end, step) in enumerate(zip(shape, starts, ends, steps, strict=True)):
        taken = range(start, end, step) if step else None
        if taken is None:
            raise ShapeError(f"slice: step 0 on axis {axis}")
        if taken and not (0 <= taken[0] < size and 0 <= taken[-1] < size):
            raise ShapeError(
                f"slice: range({start}, {end}, {step}) on axis {axis} reaches outside its {size} elements; "
                f"starts and ends are indices as in range() (not wrapped like Python slices)"
            )
    return starts, ends, steps


def _slice_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    (x,) = args
    starts, ends, steps = _slice_attrs(x.shape, attrs)
    shape = tuple(len(range(s, e, st)) for s, e, st in zip(starts, ends, steps, strict=True))
    return Typed(shape, x.dtype, (x.dtype,))


def _slice_reference(x: np.ndarray, starts: Sequence[int], ends: Sequence[int], steps: Sequence[int] | None) -> Any:
    steps = steps or (1,) * x.ndim
    return x[np.ix_(*(np.arange(s, e, st) for s, e, st in zip(starts, ends, steps, strict=True)))] if x.ndim else x


def _slice_view(node: Node, mapping: IndexMapping) -> IndexMapping:
    starts, _, steps = _slice_attrs(node.args[0].shape, node.options)
    return strided(mapping, starts, steps)


register(
    OpSpec(
        "slice", (1, 1), "view", _slice_infer, _slice_reference, exact,
        "x[start:end:step] on every axis (ends as in range(); steps may be negative)",
        defaults={"starts": None, "ends": None, "steps": None}, view=_slice_view,
    )
)  # fmt: skip

# -- expand -----------------------------------------------------------------------------------


def _expand_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    (x,) = args
    raw = attrs["shape"]
    target = _ints(raw, len(raw) if isinstance(raw, tuple | list) else -1, "shape", "expand")
    return Typed(broadcast([x.shape, target], " (expand)"), x.dtype, (x.dtype,))


register(
    OpSpec(
        "expand", (1, 1), "view", _expand_infer,
        lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)), exact,
        "x broadcast with shape (numpy's broadcast_to of both shapes)", defaults={"shape": None},
        view=lambda node, mapping: broadcast_mapping(node.shape, node.args[0].shape, mapping),
    )
)  # fmt: skip

# -- concat -----------------------------------------------------------------------------------


def _concat_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    first = args[0].shape
    if not first:
        raise ShapeError("concat needs arrays of at least one dimension")
    axis = normalize_axis(attrs["axis"], len(first))
    for arg in args[1:]:
        off_axis = [d for d in range(len(first)) if d != axis]
        if len(arg.shape) != len(first) or any(arg.shape[d] != first[d] for d in off_axis):
            raise ShapeError(f"concat along axis {axis}: shape {arg.shape} does not match {first} off that axis")
    dtype = promote(args)
    shape = (*first[:axis], sum(a.shape[axis] for a in args), *first[axis + 1 :])
    return Typed(shape, dtype, (dtype,) * len(args))


def _concat_emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    """Groups of up to MAX_FUSED_INPUTS non-empty inputs, one dispatch each, in order along the axis."""
    axis = normalize_axis(attrs["axis"], len(out.shape))
    outer, inner = math.prod(out.shape[:axis]), math.prod(out.shape[axis + 1 :])
    placed, at = [], 0
    for value in args:
        if value.shape[axis]:
            placed.append((value, at))
        at += value.shape[axis]
    if not outer * inner:
        return
    for first in range(0, len(placed), MAX_FUSED_INPUTS):
        group = placed[first : first + MAX_FUSED_INPUTS]
        start = group[0][1]
        span = group[-1][1] + group[-1][0].shape[axis] - start
        words = [outer * span * inner, inner, span, out.shape[axis], start]
        pick = []
        for k, (value, position) in enumerate(group):
            words += [position - start, value.shape[axis]]
            begin, length = f"u({5 + 2 * k}u)", f"u({6 + 2 * k}u)"
            read = f"out[dst] = in{k}[(o * {length} + j - {begin}) * inner + e];"
            last = k == len(group) - 1
            pick.append(f"    {read}" if last else f"    if (j < {begin} + {length}) {{ {read} return; }}")
        source = (
            CONCAT.replace("{{BINDINGS}}", "\n".join(
                f"@group(0) @binding({k}) var<storage, read> in{k}: array<{WGSL_TYPES[out.dtype]}>;"
                for k in range(len(group))
            ))
            .replace("{{T}}", WGSL_TYPES[out.dtype])
            .replace("{{OUT}}", str(len(group)))
            .replace("{{PARAMS}}", str(len(group) + 1))
            .replace("{{WORDS}}", str(-(-len(words) // 4)))
            .replace("{{PICK}}", "\n".join(pick))
        )  # fmt: skip
        params = builder.uniform(*words)
        bindings = [value.buffer for value, _ in group] + [out.buffer, params]
        builder.dispatch(Kernel(source), bindings, grid(-(-words[0] // 256)))


register(
    OpSpec(
        "concat", (1, MAX_INPUTS), "kernel", _concat_infer,
        lambda *xs, axis: np.concatenate(xs, axis=axis), exact,
        "concat(x1, x2, ..., axis=): arrays joined along axis (any number of them)",
        defaults={"axis": None}, emit=_concat_emit,
    )
)  # fmt: skip

# -- pad --------------------------------------------------------------------------------------


def _pad_attrs(shape: Shape, attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], str]:
    pads = _ints(attrs["pads"], 2 * len(shape), "pads", "pad")
    if any(p < 0 for p in pads):
        raise ShapeError(f"pad's pads must be >= 0, not {pads}; crop with slice")
    mode = attrs["mode"]
    if mode not in PAD_MODES:
        raise ShapeError(f"pad's mode must be one of {', '.join(PAD_MODES)}, not {mode!r}")
    if mode != "constant":
        for axis, size in enumerate(shape):
            if size == 0 and pads[axis] + pads[axis + len(shape)]:
                raise ShapeError(f"pad: mode {mode!r} cannot extend axis {axis}, which is empty")
    return pads, mode


def _pad_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    (x,) = args
    pads, _ = _pad_attrs(x.shape, attrs)
    value = attrs["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ShapeError(f"pad's value must be a number, not {value!r}")
    if x.dtype != "float32" and not (float(value).is_integer() and LIMITS[x.dtype][0] <= value <= LIMITS[x.dtype][1]):
        raise DtypeError(f"pad's value {value!r} does not fit {x.dtype}")
    n = len(x.shape)
    return Typed(tuple(s + pads[d] + pads[d + n] for d, s in enumerate(x.shape)), x.dtype, (x.dtype,))


def _pad_emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    (x,) = args
    pads, mode = _pad_attrs(x.shape, attrs)
    n = len(x.shape)
    value = np.asarray(attrs["value"], dtype=x.dtype).reshape(1).view(np.uint32)[0]
    words: list[int] = [out.size, n, int(value), 0]
    for d, stride in enumerate(contiguous(x.shape)):
        words += [out.shape[d], x.shape[d], pads[d], stride]
    source = (
        PAD.replace("{{T}}", WGSL_TYPES[x.dtype])
        .replace("{{MODE}}", PAD_MODES[mode])
        .replace("{{WORDS}}", str(-(-len(words) // 4)))
    )
    params = builder.uniform(*words)
    builder.dispatch(Kernel(source), [x.buffer, out.buffer, params], grid(-(-out.size // 256)))


def _pad_reference(x: np.ndarray, pads: Sequence[int], mode: str, value: float) -> np.ndarray:
    n = x.ndim
    width = [(pads[d], pads[d + n]) for d in range(n)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value, x.dtype))
    return np.pad(x, width, mode=mode)


register(
    OpSpec(
        "pad", (1, 1), "kernel", _pad_infer, _pad_reference, exact,
        "pad(x, pads=(begins..., ends...), mode='constant'|'reflect'|'edge'|'wrap', value=0.0)",
        defaults={"pads": None, "mode": "constant", "value": 0.0}, emit=_pad_emit,
    )
)  # fmt: skip

# -- gather -----------------------------------------------------------------------------------


def _gather_infer(args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
    x, indices = args
    if not x.shape:
        raise ShapeError("gather needs an array of at least one dimension")
    axis = normalize_axis(attrs["axis"], len(x.shape))
    if indices.dtype == "float32":
        raise DtypeError("gather's indices must be integers (int32), not float32")
    size = x.shape[axis]
    if indices.leaf is not None and indices.size:
        known = indices.leaf.array
        low, high = int(known.min()), int(known.max())
        if low < -size or high >= size:
            raise ShapeError(f"gather: indices in [{low}, {high}] are outside axis {axis} of length {size}")
    elif indices.size and not size:
        raise ShapeError(f"gather: axis {axis} is empty, so no index is valid")
    shape = (*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :])
    return Typed(shape, x.dtype, (x.dtype, "int32"))


def _gather_emit(builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
    x, indices = args
    axis = normalize_axis(attrs["axis"], len(x.shape))
    inner = math.prod(x.shape[axis + 1 :])
    if not out.size:
        return
    params = builder.uniform(out.size, inner, indices.size, x.shape[axis])
    kernel = Kernel(GATHER.replace("{{T}}", WGSL_TYPES[x.dtype]))
    builder.dispatch(kernel, [x.buffer, indices.buffer, out.buffer, params], grid(-(-out.size // 256)))


register(
    OpSpec(
        "gather", (2, 2), "kernel", _gather_infer,
        lambda x, indices, axis: np.take(x, indices.astype(np.int64), axis=axis), exact,
        "gather(x, indices, axis=): numpy's take (int32 indices, negative ones from the end)",
        defaults={"axis": 0}, emit=_gather_emit,
    )
)  # fmt: skip
