"""What a worker's hello may say about itself, as the broker keeps it: nothing from a device is trusted.

A device names itself and its adapter, and reports its limits.  Names reach the user's screen
(``%webnet devices``, the panel), limits reach the scheduler's arithmetic; both are cleaned here,
as pure functions, before either sees them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

#: Limits a device may report: WebGPU's names, each a positive integer a JavaScript number holds exactly.
MAX_LIMITS, MAX_LIMIT = 64, 2**53


def printable(value: Any, limit: int) -> str:
    """A device-supplied string as shown to the user: control characters (newlines, ANSI escapes) made
    visible as U+FFFD, so a name cannot forge rows in ``%webnet devices``; cut to ``limit``."""
    return "".join("\ufffd" if unicodedata.category(c).startswith("C") else c for c in str(value)[:limit])


def reported_limits(reported: Mapping[Any, Any]) -> dict[str, int]:
    """The limits kept from a hello: at most :data:`MAX_LIMITS` named ones, each an integer in [1, 2**53]."""
    return {
        name: value
        for name, value in list(reported.items())[:MAX_LIMITS]
        if isinstance(name, str) and name.isidentifier() and len(name) <= 64
        and type(value) is int and 1 <= value <= MAX_LIMIT
    }  # fmt: skip
