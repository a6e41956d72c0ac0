"""What every op hands the client: a program to run and how to shape what comes back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..program import Program
from .operands import Operand, conversion_note


@dataclass(frozen=True)
class Plan:
    """A checked, converted op call; ``program`` is None when no device is needed (empty result)."""

    program: Program | None
    shape: tuple[int, ...]
    operands: tuple[Operand, ...]

    @property
    def note(self) -> str | None:
        """The one-line dtype-conversion warning for this call, if any operand was converted."""
        return conversion_note(list(self.operands))

    def finish(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The user's result from the worker's (already checked) outputs."""
        if self.program is None:
            return np.zeros(self.shape, np.float32)
        return np.asarray(outputs[0]).reshape(self.shape)
