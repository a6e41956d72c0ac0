"""``--verify``: checking a device's answer in the notebook for much less than computing it.

A matmul ``C = A @ B`` is checked with Freivalds' test: for a random vector ``r`` of
±1, ``C @ r`` must equal ``A @ (B @ r)``, which costs O(n²) rather than O(n³).  A wrong
``C`` passes one vector with probability at most 1/2, so :data:`FREIVALDS_ROUNDS`
vectors bring the chance of missing it to 2⁻²⁰.

"Equal" must allow for rounding.  Each element of an honest float32 ``C`` is within
about ``√K·u·‖a‖·‖b‖`` of the exact dot product (u = 2⁻²⁴; Higham and Mary's
probabilistic bound; sequential float32 accumulation, the worst case for a GPU kernel,
stayed within 0.72 of it for K = 256 to 4096 on normal and on all-positive data), and
a ±1 combination of N such errors exceeds :data:`SIGMAS` times their root-sum-square
with probability below 2·e⁻¹⁸ (Hoeffding).  An error larger than that in any row is
caught: for a 1024-square matmul of normal data, 1.5% of a typical element of ``C``.

Anything else is checked by recomputing a random sample of its rows with numpy (see
:mod:`.restrict`) and comparing them within :data:`SAMPLE_RTOL` of the result's
scale, or all of it where the rows cannot be separated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .compiler import Plan
from .graph import Node, evaluate
from .restrict import restrict

FREIVALDS_ROUNDS = 20
#: Freivalds' threshold, in root-sum-squares of the elements' rounding bounds.
SIGMAS = 6.0
#: Rows recomputed per output (all of them when there are fewer).
SAMPLE_ROWS = 32
#: How far a sampled element may be from numpy's, relative to its own size plus the sample's mean size.
SAMPLE_RTOL = {"f32": 1e-3, "f16": 4e-3}
U32 = 2.0**-24  # float32's unit roundoff
U16 = 2.0**-11


def checker(plan: Plan, wire: str = "f32", seed: int | None = None) -> Callable[[list[np.ndarray]], str | None]:
    """A check of ``plan``'s outputs: None when they pass, else what is wrong (for the device's ban)."""

    def check(outputs: list[np.ndarray]) -> str | None:
        rng = np.random.default_rng(seed)
        for node, result in zip(plan.nodes, plan.finish(outputs), strict=True):
            problem = freivalds(node, result, wire, rng) if _plain_matmul(node) else sampled(node, result, wire, rng)
            if problem is not None:
                return f"{node.text}: {problem}"
        return None

    return check


def _operand(node: Node, wire: str) -> np.ndarray | None:
    """A matmul operand as the device received it (through float16 for ``--wire f16``), if an input."""
    leaf = node.args[0].leaf if node.op == "cast" and node.args[0].op == "input" else node.leaf
    if leaf is None:
        return None
    array = leaf.array
    if wire == "f16" and array.dtype == np.float32:
        array = array.astype(np.float16)
    return array.astype(np.float64)


def _plain_matmul(node: Node) -> bool:
    return (
        node.op == "matmul"
        and len(node.shape) == 2
        and all(len(a.shape) == 2 for a in node.args)
        and node.dtype == "float32"
        and all((a.op == "input") or (a.op == "cast" and a.args[0].op == "input") for a in node.args)
    )


def freivalds(node: Node, c: np.ndarray, wire: str, rng: np.random.Generator) -> str | None:
    """Freivalds' test of ``c`` as ``node``'s matmul, with :data:`FREIVALDS_ROUNDS` random ±1 vectors."""
    a, b = (_operand(arg, wire) for arg in node.args)
    assert a is not None and b is not None
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return sampled(node, c, wire, rng)  # inf/nan inputs: no identity to test, recompute instead
    k = a.shape[1]
    r = rng.choice(np.array([-1.0, 1.0]), size=(b.shape[1], FREIVALDS_ROUNDS))
    c64 = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(c64 @ r - a @ (b @ r))
    # Root-sum-square over a row of C of its elements' rounding bounds (Cauchy-Schwarz for |a|.|b|).
    spread = np.sqrt(k) * U32 * np.linalg.norm(a, axis=1) * np.linalg.norm(b)
    if wire == "f16":  # the result itself travelled as float16
        spread = spread + U16 * np.linalg.norm(c64, axis=1)
    bound = SIGMAS * spread
    bad = ~(difference <= bound[:, None] + 1e-30)
    if not bad.any():
        return None
    rows = np.unique(np.nonzero(bad)[0])
    return (
        f"Freivalds' test failed for {len(rows)} of {c.shape[0]} rows (first: row {rows[0]}); "
        f"C @ r differs from A @ (B @ r) beyond float32 rounding"
    )


def sampled(node: Node, result: np.ndarray, wire: str, rng: np.random.Generator) -> str | None:
    """``result`` compared with numpy on a random sample of rows (on all of it if rows cannot be cut)."""
    rows = None
    if node.shape and node.shape[0] > 0:
        count = min(node.shape[0], SAMPLE_ROWS if len(node.shape) > 1 else 32 * SAMPLE_ROWS)
        rows = np.sort(rng.choice(node.shape[0], size=count, replace=False))
    part = restrict(node, rows) if rows is not None else None
    if part is None:
        rows, part = None, node
    got = result if rows is None else result[rows]
    (exact,) = evaluate([part])
    return _compare(node, got, exact, SAMPLE_RTOL[wire], rows)


def _compare(node: Node, got: np.ndarray, exact: np.ndarray, rtol: float, rows: np.ndarray | None) -> str | None:
    got64, exact64 = got.astype(np.float64), exact.astype(np.float64)
    finite = np.abs(exact64[np.isfinite(exact64)])
    scale = float(finite.mean()) if finite.size else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        same = (got64 == exact64) | (np.isnan(got64) & np.isnan(exact64))
        close = np.abs(got64 - exact64) <= rtol * (np.abs(exact64) + scale)
    if node.op == "argmax":  # ties (within rounding) may go either way
        close = _argmax_close(node, got, rows, rtol) if not (same | close).all() else close
    bad = ~(same | close)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    row = where if rows is None else (int(rows[where[0]]), *where[1:])
    checked = "all" if rows is None else f"{len(rows)} sampled rows"
    return (
        f"{int(bad.sum())} element(s) of {checked} differ from numpy's answer "
        f"(first at {row}: {got64[where]!r} instead of {exact64[where]!r})"
    )


def _argmax_close(node: Node, got: np.ndarray, rows: np.ndarray | None, rtol: float) -> np.ndarray:
    """Whether each index picked is a maximum within rounding of the true one."""
    source = node.args[0]
    axis = node.options["axis"]
    part = source if rows is None else restrict(source, rows)
    assert part is not None  # argmax's rows were cut, so its argument's are too
    (values,) = evaluate([part])
    values = values.astype(np.float64)
    if axis is None:
        values, axis = values.reshape(-1), 0
    index = np.expand_dims(got.astype(np.int64), axis) if not node.options["keepdims"] else got.astype(np.int64)
    if (index < 0).any() or (index >= values.shape[axis]).any():
        return np.zeros(got.shape, bool)
    picked = np.take_along_axis(values, index, axis)
    best = np.max(values, axis=axis, keepdims=True)
    ok = picked >= best - rtol * (np.abs(best) + np.abs(values).mean())
    return ok.reshape(got.shape)
