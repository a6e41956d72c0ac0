"""What the notebook side knows of a device at one moment: a typed record, and the panel's view of it.

The scheduler's :class:`~webnet_magic.broker.fleet.Device` lives on the broker's thread; the
notebook gets a frozen :class:`DeviceRecord` of it and decides from that (which devices may run
a job, how fast each is, what buffers it takes), never from the text shown for it.  The panel,
``%webnet devices`` and ``Session.devices()`` show :meth:`DeviceRecord.display`, made here only:
its speed and link figures rounded for reading, its state as words.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class DeviceState(enum.StrEnum):
    """What a device is doing, as the notebook sees it (the values are the words the panel shows)."""

    IDLE = "idle"
    BUSY = "busy"
    CALIBRATING = "calibrating"  # its join-time runs are not finished: its speed is not known yet
    BANNED = "banned"  # it returned wrong numbers: no more work this session
    NO_WEBGPU = "no WebGPU"  # it joined without WebGPU (its reason says why)
    CLOSING = "closing"  # its link is gone


#: States in which a device takes no work.
UNUSABLE = frozenset({DeviceState.BANNED, DeviceState.NO_WEBGPU, DeviceState.CLOSING})


@dataclass(frozen=True)
class DeviceRecord:
    """One device at one moment.  ``speed`` is in flop/s as measured (None until calibrated),
    ``backlog`` the seconds of work it holds and has not done, ``rate`` its link's measured
    bytes/s and ``round_trip`` its seconds (None until measured)."""

    id: str
    name: str = ""
    runtime: str = ""
    adapter: str = ""
    state: DeviceState = DeviceState.IDLE
    reason: str = ""
    speed: float | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    backlog: float = 0.0
    rate: float | None = None
    round_trip: float | None = None
    jobs_done: int = 0
    failures: int = 0
    last_job_ms: float | None = None
    job: str | None = None  # the notebook's task it runs now
    group: str | None = None  # the job that task is part of
    queued: int = 0  # tasks it holds behind the running one
    bytes_in: int = 0
    bytes_out: int = 0
    returns: int = 0  # times it came back after losing its link
    cached: int = 0  # arrays it keeps between jobs

    @property
    def usable(self) -> bool:
        """Whether it takes work (now, or once it has calibrated)."""
        return self.state not in UNUSABLE

    @property
    def ready(self) -> bool:
        """Whether it takes work and its speed is known (calibration done)."""
        return self.usable and self.state is not DeviceState.CALIBRATING

    def display(self) -> dict[str, Any]:
        """The panel's row (also ``%webnet devices`` and ``Session.devices()``): JSON-able, rounded for reading."""
        return {
            "link_mbps": _rounded(self.rate, 1e6),
            "rtt_ms": _rounded(self.round_trip, 1e-3),
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "adapter": self.adapter,
            "state": str(self.state),
            "reason": self.reason,
            "jobs_done": self.jobs_done,
            "failures": self.failures,
            "banned": self.state is DeviceState.BANNED,
            "gflops": _rounded(self.speed, 1e9),
            "last_job_ms": self.last_job_ms,
            "job": self.job,
            "group": self.group,
            "queued": self.queued,
            "backlog_s": round(self.backlog, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "returns": self.returns,
            "cached": self.cached,
            "limits": dict(self.limits),
        }


def _rounded(value: float | None, unit: float) -> float | None:
    """``value`` in ``unit``s to three significant digits, for reading."""
    return None if value is None else float(f"{value / unit:.3g}")
