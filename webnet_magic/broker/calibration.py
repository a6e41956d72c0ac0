"""The short job every device runs as it joins: its speed, and a first check of its results.

A 256 x 256 x 256 matmul (34 Mflop) takes milliseconds on a phone GPU and well under
a second on lavapipe, yet is large enough for the time to reflect arithmetic rather than
dispatch overhead alone.  The scheduler runs it twice and times the second (the first
pays for a lazy shader compile and first allocations).  Its inputs are not kept in the
worker's cache: a device calibrates once per connection (one that resumes keeps its
speed), and the cache, with what the panel counts in it, is the notebook's.  A device
whose answer is outside the matmul's stated tolerance is banned before it is given any
of the notebook's work.
"""

from __future__ import annotations

import dataclasses
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

    program = plan.program
    uncached = tuple(dataclasses.replace(b, key=None) for b in program.buffers)
    return dataclasses.replace(program, buffers=uncached), check
