"""The scheduler's records: devices that joined, tasks to run, and attempts of tasks on devices.

Plain data with the little each knows about itself (a device's limits, what it holds, its
record for the notebook side); :mod:`~webnet_magic.broker.scheduler` pairs them up and
:mod:`~webnet_magic.broker.placement` decides where each task goes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..program import Program
from ..protocol import MAX_MESSAGE_BYTES, Message
from .link import LinkEstimate
from .origin import Origin
from .records import DeviceRecord, DeviceState

#: The limits a program is checked against before it is sent, with what each bounds.  Device
#: limits come from the worker's hello; the message limit is the wire protocol's own.
LIMIT_CHECKS: tuple[tuple[str, str, Callable[[Program], int]], ...] = (
    ("maxStorageBufferBindingSize", "largest buffer (bytes)", lambda p: p.largest_buffer),
    ("maxBufferSize", "largest buffer (bytes)", lambda p: p.largest_buffer),
    ("maxComputeWorkgroupsPerDimension", "workgroups in one dimension", lambda p: p.workgroups_max),
    ("maxMessageBytes", "input bytes in one message", lambda p: p.input_bytes),
    ("maxMessageBytes", "output bytes in one message", lambda p: p.output_bytes),
)
WIRE_LIMITS = {"maxMessageBytes": MAX_MESSAGE_BYTES}


@dataclass
class Progress:
    """How one task is going.  Written on the broker thread; the notebook thread only reads it."""

    state: str = "queued"  # queued, running, verifying, done, failed, cancelled
    device: str | None = None
    attempts: int = 0
    sent: int = 0  # payload bytes sent to devices (cached inputs are not)
    received: int = 0
    failures: list[str] = field(default_factory=list)  # "d2 (Safari on iOS): disconnected", ...
    timings: dict[str, float] = field(default_factory=dict)  # what the device reported, milliseconds


@dataclass
class Device:
    """A connected worker, as the scheduler and the device panel see it.

    ``resume`` is the secret a worker sends back in its next hello to come back as this
    device (same id, speed, counters and ban) after its link dropped.  One that comes back
    without it is known again only by its :attr:`identity` (see :mod:`~webnet_magic.broker.origin`).
    """

    id: str
    name: str
    runtime: str
    adapter: dict[str, Any]
    limits: dict[str, int]
    features: list[str]
    send: Callable[[Message], Coroutine[Any, Any, None]]
    close: Callable[[int, str], None]
    webgpu: bool = True
    reason: str = ""
    resume: str = ""
    origin: Origin = field(default_factory=lambda: Origin("", ""))
    state: str = "idle"
    attempts: list[Attempt] = field(default_factory=list)  # held, in the order sent; the first runs
    cache: set[str] = field(default_factory=set)  # content keys the worker says it keeps
    link: LinkEstimate = field(default_factory=LinkEstimate)
    outbox: asyncio.Future[None] | None = None  # the last job being sent: the next one's data follows it
    calibrating: set[str] = field(default_factory=set)  # its calibration tasks not yet finished
    last_seen: float = field(default_factory=time.monotonic)
    joined: float = field(default_factory=time.monotonic)
    # -- history, carried over when the device comes back ---------------------------------
    jobs_done: int = 0
    failures: int = 0
    verified: int = 0  # the notebook's jobs whose results it returned passed --verify
    banned: str = ""  # why the device gets no more work this session
    speed: float | None = None  # flop/s: calibration, then a running average of real jobs
    last_job_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    returns: int = 0  # times it came back after losing its link
    recent: OrderedDict[str, int] = field(default_factory=OrderedDict)  # attempt id -> output bytes

    HISTORY = ("jobs_done", "failures", "verified", "banned", "speed", "last_job_ms", "bytes_in", "bytes_out", "recent")

    @property
    def usable(self) -> bool:
        return self.webgpu and self.state != "closing"

    @property
    def adapter_name(self) -> str:
        """The adapter as the panel names it."""
        adapter = self.adapter
        return adapter.get("description") or " ".join(
            filter(None, (adapter.get(k) for k in ("vendor", "architecture", "device")))
        )

    @property
    def identity(self) -> str:
        """What a device that reconnects without its secret shares with its old self (empty: unknown)."""
        if not self.origin.address:
            return ""
        return "\n".join((self.origin.address, self.origin.agent, self.runtime, self.adapter_name))

    @property
    def attempt(self) -> Attempt | None:
        """The attempt the device is running (the head of its line), if any."""
        return self.attempts[0] if self.attempts else None

    def backlog(self, now: float) -> float:
        """Seconds of work the device holds that it has not done yet, as expected when each was sent."""
        ahead = sum(a.cost for a in self.attempts)
        if self.attempts:  # the head has been at it for a while
            head = self.attempts[0]
            ahead -= min(head.cost, now - head.started)
        return ahead

    def holds(self, keys: set[str]) -> set[str]:
        """The worker's cache as it will be: what it listed, and keyed inputs on their way in held jobs."""
        return keys | {k for a in self.attempts for k in a.keys}

    def inherit(self, old: Device) -> None:
        """Become ``old`` again (a worker that reconnected): same id, secret and history."""
        self.id, self.resume, self.returns = old.id, old.resume, old.returns + 1
        for name in self.HISTORY:
            setattr(self, name, getattr(old, name))

    def refusal(self, program: Program) -> str | None:
        """Why this device cannot run ``program`` (naming the limit), or None if it can."""
        for limit, what, measure in LIMIT_CHECKS:
            have, need = self.limits.get(limit, WIRE_LIMITS.get(limit)), measure(program)
            if have is not None and need > have:
                return f"{what} is {need}, above device {self.id}'s {limit} of {have}"
        return None

    def reply_budget(self, attempt_id: str) -> int:
        """Result bytes this device may send for ``attempt_id`` (one of its recent attempts), else 0."""
        return self.recent.get(attempt_id, 0)

    def describe(self) -> str:
        return f"{self.id} ({self.name})"

    def record(self) -> DeviceRecord:
        """What the notebook side knows of this device now (see :mod:`~webnet_magic.broker.records`)."""
        attempt = self.attempt
        mine = attempt is not None and not attempt.task.internal  # (a calibration run is not the notebook's)
        state = DeviceState(self.state) if self.webgpu else DeviceState.NO_WEBGPU
        if self.banned:
            state = DeviceState.BANNED
        elif self.calibrating:  # between its two runs too: ready means its speed is known
            state = DeviceState.CALIBRATING
        return DeviceRecord(
            id=self.id,
            name=self.name,
            runtime=self.runtime,
            adapter=self.adapter_name,
            state=state,
            reason=self.banned or self.reason,
            speed=self.speed,
            limits=dict(self.limits),
            backlog=self.backlog(time.monotonic()),
            rate=self.link.rate,
            round_trip=self.link.round_trip,
            jobs_done=self.jobs_done,
            failures=self.failures,
            last_job_ms=self.last_job_ms,
            job=attempt.task.id if mine else None,  # type: ignore[union-attr]
            group=attempt.task.group if mine else None,  # type: ignore[union-attr]
            queued=max(0, len(self.attempts) - 1),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            returns=self.returns,
            cached=len(self.cache),
        )


#: A task's check of its outputs (``--verify``): None if they are right, else what is wrong.
Check = Callable[[list[np.ndarray]], str | None]


@dataclass
class Task:
    """One program on its way to a device and back, over as many attempts as it takes."""

    id: str
    program: Program
    future: asyncio.Future[list[np.ndarray]]
    devices: frozenset[str] | None = None  # the devices it may run on; None: any
    prefer: str | None = None  # the device its shard was sized for
    check: Check | None = None
    group: str = ""  # the job this task is a shard of (its own id if it is a whole job)
    internal: bool = False  # a calibration run, not the notebook's
    progress: Progress = field(default_factory=Progress)
    tried: set[str] = field(default_factory=set)
    resent: bool = False  # sent again with all its inputs after a worker had dropped some
    misled: bool = False  # a device's result for it failed verification: retries go to proven devices
    attempts: int = 0
    declined: int = 0  # times a device that lost its GPU for good handed it back unrun (see Scheduler.error)


@dataclass
class Attempt:
    """One try of a task on one device; ``live`` until the task gives up on it or it answers."""

    id: str
    task: Task
    device: Device
    started: float
    expected: float  # seconds the scheduler expects it to compute
    transfer: float = 0.0  # seconds it expects its bytes to take on the link, both ways
    payload: int = 0  # input bytes it carries (inputs the worker holds are not sent)
    keys: frozenset[str] = frozenset()  # content keys of the inputs it carries, kept by the worker
    sent_at: float | None = None  # when its first frame went out
    quiet: bool = False  # sent while the device held nothing else: its timing measures the link
    timer: asyncio.TimerHandle | None = None
    live: bool = True

    @property
    def cost(self) -> float:
        return self.expected + self.transfer


@dataclass
class Group:
    """The shards of one job, for the panel's jobs-in-flight list, while any of them is pending.

    ``total`` is the count the job announced; a job that fails early (or a model whose later
    stages are never submitted) ends when its last submitted task does, whatever the count says.
    """

    total: int
    done: int = 0
    pending: int = 0  # submitted and not yet finished, failed or cancelled
