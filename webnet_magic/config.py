"""Every setting the broker, its scheduler, its workers and the notebook side share, with its default.

One frozen object, made once per session: ``Session(...)`` and ``webnet_magic.start(...)`` take any
field as a keyword (``start(heartbeat=1.0)``), ``%webnet start`` passes the magics' settings
(``%config WebnetMagics.heartbeat``) and its own options, and everything below reads the one
:class:`Config` it was given.  The workers keep to the broker's timings because its welcome tells
them (``heartbeat``, ``silence``), rather than from defaults of their own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .protocol import DEFAULT_CHUNK


@dataclass(frozen=True)
class Config:
    """A session's settings.

    Parameters
    ----------
    heartbeat
        Seconds between pings to each worker (a round trip is measured with each).
    silence_limit
        Seconds of silence after which a worker is declared lost (its running task then runs
        elsewhere), after which a worker gives up on a silent broker, and which a worker is given
        to acknowledge a cancelled task.
    lease
        The base of every task's lease in seconds; the expected run and transfer times are added.
    attempts
        How many times a task may fail on a device before its job fails.
    calibrate
        Run a short matmul on each device as it joins, to size shards by speed.
    depth
        Tasks each device holds at once: None sizes it from the device's link and speed, 1 turns
        pipelining off.
    hold_bytes
        Bytes of tasks a device holds at once (inputs and outputs), pipelining or not.
    chunk_size
        The largest WebSocket frame the broker sends (bytes); large arrays go as several.
    timeout
        Seconds an op waits for a device and its result (also for devices to be ready).
    progress_after
        Seconds a blocking job runs before a progress bar shows under the cell.
    """

    heartbeat: float = 3.0
    silence_limit: float = 30.0
    lease: float = 60.0
    attempts: int = 3
    calibrate: bool = True
    depth: int | None = None
    hold_bytes: int = 256 << 20
    chunk_size: int = DEFAULT_CHUNK
    timeout: float = 60.0
    progress_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("heartbeat", "silence_limit", "lease", "timeout"):
            _positive(name, getattr(self, name))
        if not (_number(self.progress_after) and self.progress_after >= 0):
            raise ValueError(f"progress_after must be a number of seconds, 0 or more, not {self.progress_after!r}")
        for name in ("attempts", "hold_bytes", "chunk_size"):
            _count(name, getattr(self, name))
        if self.depth is not None:
            _count("depth", self.depth, "a positive number of jobs (or None)")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate must be True or False, not {self.calibrate!r}")

    def updated(self, **changes: Any) -> Config:
        """A copy with ``changes`` (any of the fields), checked as a new one is."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))}; the settings are {known}")
        return dataclasses.replace(self, **changes) if changes else self


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: Any) -> None:
    if not (_number(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _count(name: str, value: Any, what: str = "a whole number, 1 or more") -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be {what}, not {value!r}")


#: The settings of a session that sets none.
DEFAULTS = Config()
