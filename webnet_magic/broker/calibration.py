"""The short job every device runs as it joins: its speed, and a first check of its results.

A 256 x 256 x 256 matmul (34 Mflop) takes milliseconds on a phone GPU and well under
a second on lavapipe, yet is large enough for the time to reflect arithmetic rather than
dispatch overhead alone.  Its inputs are the same on every run, so a device that comes
back with them cached is not sent them again.  A device whose answer is outside the
matmul's stated tolerance is banned before it is given any of the notebook's work.
"""

from __future__ import annotations

import functools

import numpy as np

from ..ops import call, compile_graph, error_ratio
from ..program import Program
from .scheduler import Check

SIZE = 256


@functools.cache
def calibration() -> tuple[Program, Check]:
    """The calibration program, and the check of its one output."""
    a, b = np.random.default_rng(20261126).standard_normal((2, SIZE, SIZE), dtype=np.float32)
    node = call("matmul", a, b, names=("calibration_a", "calibration_b"))
    plan = compile_graph([node])

    def check(outputs: list[np.ndarray]) -> str | None:
        ratio = error_ratio(node, plan.finish(outputs)[0])
        return None if ratio <= 1 else f"its {SIZE}x{SIZE} matmul is off by {ratio:.3g} times the tolerance"

    return plan.program, check
