"""Devices that joined, tasks waiting for them, and the pairing of the two.

Everything here runs on the broker's event loop thread and knows nothing of
sockets: a :class:`Device` is given a ``send`` coroutine function and a
``close`` callable by whoever accepted its connection.

A *task* is one program to run (a whole job, or one shard of a sharded job).
Each time it is given to a device that is an *attempt*, with a wire id of its own
(``j7~2``) and a lease.  Phones are unreliable, so an attempt may end without an
answer: its device disconnects, goes silent, outlives its lease, loses its GPU,
or returns a result that fails verification.  The task then goes back to the
queue and runs elsewhere, up to ``attempts`` times, and only then fails with an
error that names every device it failed on and why.  Replies are matched by
attempt id, so a late or duplicate result from an attempt that was given up on is
dropped and never mixed into an answer.

The futures handed out by :meth:`Scheduler.submit` resolve to the checked output
arrays, or fail with an error from :mod:`webnet_magic.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._threads import in_daemon_thread
from ..errors import (
    BrokerStopped,
    DeviceLimitError,
    DeviceNotFound,
    VerificationFailed,
    WebnetError,
    WorkerError,
    WorkerLost,
)
from ..program import Program
from ..protocol import CLOSE_SILENT, MAX_MESSAGE_BYTES, Message, ProtocolError

log = logging.getLogger(__name__)

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

#: Failures that say something about the device, not the program: another device (or the same
#: one, back from sleep) may well succeed.  Compile, validation and protocol errors are the
#: program's own and fail the task at once.
RETRIED = frozenset({"disconnected", "lease", "device-lost", "out-of-memory", "internal", "bad-result", "verify"})

#: Jobs with less work than this (in flops) say little about a device's speed.
MIN_MEASURED_WORK = 1e6
#: Weight of the newest job in a device's speed estimate.
SPEED_SMOOTHING = 0.5
#: A lease allows this many times the expected run time, plus the base lease and the transfer time
#: at LINK_FLOOR bytes per second (a slow phone link).
LEASE_FACTOR = 4.0
LINK_FLOOR = 1e6
#: Reply budgets are kept for a device's last few attempts, so a late duplicate can be read and dropped.
RECENT_ATTEMPTS = 16
#: Devices that left are remembered this many at a time, to come back as themselves.
DEPARTED_KEPT = 256


@dataclass
class Progress:
    """How one task is going.  Written on the broker thread; the notebook thread only reads it."""

    state: str = "queued"  # queued, running, verifying, done, failed, cancelled
    device: str | None = None
    attempts: int = 0
    sent: int = 0  # payload bytes sent to devices (cached inputs are not)
    received: int = 0
    failures: list[str] = field(default_factory=list)  # "d2 (Safari on iOS): disconnected", ...


@dataclass
class Device:
    """A connected worker, as the scheduler and the device panel see it.

    ``resume`` is the secret a worker sends back in its next hello to come back as this
    device (same id, speed, counters and ban) after its link dropped.
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
    state: str = "idle"
    attempt: Attempt | None = None
    cache: set[str] = field(default_factory=set)  # content keys the worker says it keeps
    calibrating: set[str] = field(default_factory=set)  # its calibration tasks not yet finished
    last_seen: float = field(default_factory=time.monotonic)
    # -- history, carried over when the device comes back ---------------------------------
    jobs_done: int = 0
    failures: int = 0
    banned: str = ""  # why the device gets no more work this session
    speed: float | None = None  # flop/s: calibration, then a running average of real jobs
    last_job_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    returns: int = 0  # times it came back after losing its link
    recent: OrderedDict[str, int] = field(default_factory=OrderedDict)  # attempt id -> output bytes

    HISTORY = ("jobs_done", "failures", "banned", "speed", "last_job_ms", "bytes_in", "bytes_out", "recent")

    @property
    def usable(self) -> bool:
        return self.webgpu and self.state != "closing"

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

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for the widget, ``%webnet devices`` and tests."""
        attempt = self.attempt
        state = self.state if self.webgpu else "no WebGPU"
        if self.banned:
            state = "banned"
        elif self.calibrating:  # between its two runs too: ready means its speed is known
            state = "calibrating"
        return {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "adapter": self.adapter.get("description")
            or " ".join(filter(None, (self.adapter.get(k) for k in ("vendor", "architecture", "device"))))
            or "",
            "state": state,
            "reason": self.banned or self.reason,
            "jobs_done": self.jobs_done,
            "failures": self.failures,
            "banned": bool(self.banned),
            "gflops": None if self.speed is None else float(f"{self.speed / 1e9:.3g}"),
            "last_job_ms": self.last_job_ms,
            "job": attempt.task.id if attempt is not None and not attempt.task.internal else None,
            "group": attempt.task.group if attempt is not None and not attempt.task.internal else None,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "returns": self.returns,
            "cached": len(self.cache),
            "limits": dict(self.limits),
        }


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
    attempts: int = 0


@dataclass
class Attempt:
    """One try of a task on one device; ``live`` until the task gives up on it or it answers."""

    id: str
    task: Task
    device: Device
    started: float
    expected: float  # seconds the scheduler expects it to take
    timer: asyncio.TimerHandle | None = None
    live: bool = True


@dataclass
class Group:
    """The shards of one job, for the panel's jobs-in-flight list."""

    total: int
    done: int = 0


class Scheduler:
    """Pairs queued tasks with idle devices; ``on_change`` is called after every visible change.

    ``cancel_grace`` is how long a device may take to acknowledge a cancelled attempt before
    it is dropped: a worker that answers pings but never finishes would otherwise stay busy
    forever.  ``lease`` is the base of every attempt's lease (seconds), to which the
    expected run and transfer times are added.  ``calibrate`` runs a short matmul on each
    device as it joins, to measure its speed before real work is sized for it.
    """

    def __init__(
        self,
        on_change: Callable[[], None] = lambda: None,
        *,
        cancel_grace: float = 30.0,
        lease: float = 60.0,
        attempts: int = 3,
        calibrate: bool = True,
    ) -> None:
        self.devices: dict[str, Device] = {}
        self.departed: OrderedDict[str, Device] = OrderedDict()  # resume secret -> device
        self.queue: deque[Task] = deque()
        self.tasks: dict[str, Task] = {}
        self.groups: dict[str, Group] = {}
        self.cancel_grace = cancel_grace
        self.lease = lease
        self.max_attempts = attempts
        self.calibrate = calibrate
        self.stopping = False  # set by stop(): sends that fail from then on are expected
        self._on_change = on_change
        self._task_ids = itertools.count(1)
        self._device_ids = itertools.count(1)

    def new_device_id(self) -> str:
        return f"d{next(self._device_ids)}"

    def new_task_id(self) -> str:
        """A fresh task id; safe to call from any thread (``next`` on a count is atomic)."""
        return f"j{next(self._task_ids)}"

    # -- devices ---------------------------------------------------------------------------

    def join(self, device: Device) -> None:
        self.devices[device.id] = device
        log.info("device %s %s: %s (%s)", device.id, "is back" if device.returns else "joined", device.name,
                 device.runtime)  # fmt: skip
        if self.calibrate and device.usable and not device.banned and device.speed is None:
            self._calibrate(device)
        self._pump()
        self._changed()

    def returning(self, secret: str) -> Device | None:
        """The device a worker was, by the resume secret it offers (connected or departed), if any."""
        for device in self.devices.values():
            if secret and device.resume == secret:
                return device
        return self.departed.pop(secret, None)

    def leave(self, device: Device, reason: str) -> None:
        """Forget a connection; the attempt it was running goes back to the queue.

        The device is remembered (by its resume secret) so a worker that reconnects comes
        back as itself.  A stale connection of a device that has since come back is ignored.
        """
        if self.devices.get(device.id) is not device:
            return
        del self.devices[device.id]
        device.state = "closing"
        log.info("device %s left: %s", device.id, reason)
        if device.resume:
            self.departed[device.resume] = device
            while len(self.departed) > DEPARTED_KEPT:
                self.departed.popitem(last=False)
        attempt, device.attempt = device.attempt, None
        if attempt is not None and attempt.live:
            self._end(attempt)
            self._failed(attempt.task, device, "disconnected", reason)
        self._pump()
        self._changed()

    # -- tasks -----------------------------------------------------------------------------

    def submit(
        self,
        program: Program,
        *,
        task_id: str | None = None,
        devices: frozenset[str] | None = None,
        prefer: str | None = None,
        check: Check | None = None,
        group: str | None = None,
        shards: int = 1,
        progress: Progress | None = None,
        internal: bool = False,
    ) -> Task:
        """Queue ``program``; the returned task's future resolves to its outputs.

        ``devices`` limits where it may run; ``prefer`` names the device its shard was sized
        for; ``check`` verifies its outputs (a failure bans the device and reruns the task);
        ``group`` and ``shards`` name the job it is one of ``shards`` shards of.
        """
        task_id = task_id or self.new_task_id()
        task = Task(task_id, program, asyncio.get_running_loop().create_future(), devices, prefer, check,
                    group or task_id, internal, progress or Progress())  # fmt: skip
        self.tasks[task.id] = task
        if not internal:
            self.groups.setdefault(task.group, Group(shards))
        (self.queue.appendleft if internal else self.queue.append)(task)
        self._pump()
        self._changed()
        return task

    def cancel(self, task_id: str) -> None:
        """Stop a task: drop it from the queue, or tell its device to drop it; nothing is bound.

        A device told to drop its attempt stays busy until it says it has; one that does not
        within ``cancel_grace`` seconds is disconnected.
        """
        task = self.tasks.get(task_id)
        if task is None:
            return
        if task in self.queue:
            self.queue.remove(task)
        for device in self.devices.values():
            if device.attempt is not None and device.attempt.task is task and device.attempt.live:
                self._abandon(device.attempt)
        self._finish(task, cancelled=True)
        self._pump()

    def result(self, device: Device, attempt_id: str, arrays: list[np.ndarray], timings: dict[str, Any]) -> None:
        attempt = self._reply(device, attempt_id)
        if attempt is not None:
            task = attempt.task
            try:
                outputs = task.program.check_results(arrays)
            except ProtocolError as exc:
                self._failed(task, device, "bad-result", f"returned a malformed result ({exc})")
            else:
                task.progress.received += sum(a.nbytes for a in outputs)
                device.last_job_ms = _milliseconds(timings.get("kernel"))
                self._measure(device, task.program.work, _busy_ms(timings))
                if task.check is None:
                    self._succeeded(attempt, outputs)
                else:
                    task.progress.state = "verifying"
                    asyncio.get_running_loop().create_task(self._verify(attempt, outputs))
        self._pump()
        self._changed()

    def error(self, device: Device, attempt_id: str, kind: str, message: str) -> None:
        attempt = self._reply(device, attempt_id)
        if attempt is not None:
            task = attempt.task
            if kind == "missing-inputs" and not task.resent:
                # The worker dropped an input it had cached (the broker's list is updated by now):
                # send the task again, this time with all of its data.  Not a failure of the device.
                task.resent = True
                self.queue.appendleft(task)
            else:
                self._failed(task, device, kind[:40], f"reported a {kind[:40]} error: {message[:4000]}")
        self._pump()
        self._changed()

    def stop(self) -> None:
        """Fail every unfinished task; the broker is going away."""
        self.stopping = True
        for task in list(self.tasks.values()):
            self._finish(task, error=BrokerStopped("the webnet broker was stopped (%webnet stop)"))
        self.queue.clear()

    def usable_devices(self) -> list[Device]:
        return [d for d in self.devices.values() if d.usable]

    def jobs_snapshot(self) -> list[dict[str, Any]]:
        """The notebook's jobs in flight, for the panel: shards done of total, and who holds which."""
        running: dict[str, dict[str, str]] = {}
        for device in self.devices.values():
            attempt = device.attempt
            if attempt is not None and attempt.live and not attempt.task.internal:
                running.setdefault(attempt.task.group, {})[attempt.task.id] = device.id
        return [
            {"id": gid, "done": g.done, "total": g.total, "running": running.get(gid, {})}
            for gid, g in self.groups.items()
        ]

    # -- choosing a device -----------------------------------------------------------------

    def _eligible(self, task: Task) -> list[Device]:
        """Connected devices that may run ``task`` and can hold it, busy or not."""
        return [
            d
            for d in self.devices.values()
            if d.usable and not d.banned and (task.devices is None or d.id in task.devices)
            and d.refusal(task.program) is None
        ]  # fmt: skip

    def _unrunnable(self, task: Task) -> WebnetError | None:
        """Why no connected device could ever run ``task``; None while one could (or may yet come)."""
        if task.devices is not None:
            known = {d.id for d in self.departed.values()}
            for wanted in sorted(task.devices):
                device = self.devices.get(wanted)
                if (device is None and wanted not in known) or (device is not None and not device.webgpu):
                    usable = ", ".join(d.id for d in self.usable_devices()) or "none"
                    what = "is connected" if device is None else "has WebGPU"
                    return DeviceNotFound(f"no device {wanted!r} {what} (usable devices: {usable})")
        connected = [d for d in self.usable_devices() if task.devices is None or d.id in task.devices]
        trusted = [d for d in connected if not d.banned]
        if connected and not trusted:
            banned = "; ".join(f"{d.id}: {d.banned}" for d in connected)
            history = "; ".join(task.progress.failures)
            return VerificationFailed(
                f"job {task.id} has no device left to run on: every device it may use is banned for this "
                f"session ({banned}){'. Failures: ' + history if history else ''}. Connect another device.",
                kind="banned",
            )
        refusals = [d.refusal(task.program) for d in trusted]
        if trusted and all(refusals):
            return DeviceLimitError("; ".join(r for r in refusals if r))
        return None

    def _choose(self, task: Task) -> Device | None:
        """The device to start ``task`` on now, or None to keep it queued.

        Devices it has not failed on come first.  A shard waits for the device it was sized
        for unless an idle one would finish it sooner; any other task goes to the fastest
        idle device.
        """
        eligible = self._eligible(task)
        fresh = [d for d in eligible if d.id not in task.tried]
        idle = [d for d in (fresh or eligible) if d.state == "idle"]
        if not idle:
            return None
        fastest = max(idle, key=self._speed)
        preferred = self.devices.get(task.prefer or "")
        if preferred is None or preferred not in (fresh or eligible):
            return fastest
        if preferred in idle:
            return preferred
        now = time.monotonic()
        free_at = now
        if preferred.attempt is not None:
            free_at = max(now, preferred.attempt.started + preferred.attempt.expected)
        stolen = now + self._expected(task.program, fastest)
        return fastest if stolen < free_at + self._expected(task.program, preferred) else None

    def _speed(self, device: Device) -> float:
        """A device's speed, or the fleet's mean (1 GFLOP/s with none measured) until it is measured."""
        if device.speed is not None:
            return device.speed
        known = [d.speed for d in self.devices.values() if d.speed is not None]
        return sum(known) / len(known) if known else 1e9

    def _expected(self, program: Program, device: Device) -> float:
        return program.work / self._speed(device)

    # -- attempts --------------------------------------------------------------------------

    def _pump(self) -> None:
        """Fail queued tasks no device can run; start the rest, oldest first, where they fit."""
        for task in list(self.queue):
            problem = self._unrunnable(task)
            if problem is not None:
                self.queue.remove(task)
                self._finish(task, error=problem)
                continue
            device = self._choose(task)
            if device is not None:
                self.queue.remove(task)
                self._start(task, device)

    def _start(self, task: Task, device: Device) -> None:
        task.attempts += 1
        expected = self._expected(task.program, device)
        attempt = Attempt(f"{task.id}~{task.attempts}", task, device, time.monotonic(), expected)
        device.attempt, device.state = attempt, "busy"
        device.recent[attempt.id] = task.program.output_bytes
        while len(device.recent) > RECENT_ATTEMPTS:
            device.recent.popitem(last=False)
        task.tried.add(device.id)
        held = frozenset() if task.resent else device.cache  # a resend carries all of its data
        message = task.program.to_message(attempt.id, held=held)
        progress = task.progress
        progress.state, progress.device, progress.attempts = "running", device.id, task.attempts
        progress.sent += sum(a.nbytes for a in message.arrays)
        transfer = (task.program.input_bytes + task.program.output_bytes) / LINK_FLOOR
        self._lease(attempt, self.lease + LEASE_FACTOR * expected + transfer)
        self._send(device, message)

    def _lease(self, attempt: Attempt, seconds: float) -> None:
        attempt.timer = asyncio.get_running_loop().call_later(seconds, self._lease_over, attempt, seconds)

    def _lease_over(self, attempt: Attempt, seconds: float) -> None:
        """An attempt outlived its lease: run the task elsewhere if it can; else give it longer."""
        if not attempt.live:
            return
        if not [d for d in self._eligible(attempt.task) if d is not attempt.device]:
            self._lease(attempt, seconds)  # the only device that can run it is still working on it
            return
        log.warning("attempt %s on %s outlived its %.0f s lease", attempt.id, attempt.device.id, seconds)
        self._abandon(attempt)
        self._failed(attempt.task, attempt.device, "lease", f"did not finish within its {seconds:.0f} s lease")
        self._pump()
        self._changed()

    def _end(self, attempt: Attempt) -> None:
        """The task no longer waits on this attempt (its device may still be working on it)."""
        attempt.live = False
        if attempt.timer is not None:
            attempt.timer.cancel()

    def _abandon(self, attempt: Attempt) -> None:
        """Tell the device to drop a live attempt; it stays busy until it says so (or is dropped)."""
        self._end(attempt)
        device = attempt.device
        self._send(device, Message("cancel", {"job": attempt.id}))
        asyncio.get_running_loop().call_later(self.cancel_grace, self._cancel_overdue, device, attempt)

    def _cancel_overdue(self, device: Device, attempt: Attempt) -> None:
        if device.attempt is attempt and self.devices.get(device.id) is device:
            log.warning("device %s did not drop cancelled attempt %s; disconnecting it", device.id, attempt.id)
            device.close(CLOSE_SILENT, "did not acknowledge a cancelled job")
            self.leave(device, "did not acknowledge a cancelled job")

    def _reply(self, device: Device, attempt_id: str) -> Attempt | None:
        """The device answered ``attempt_id`` and is free again; the attempt, if its answer still counts."""
        attempt = device.attempt
        if attempt is None or attempt.id != attempt_id:
            log.info("dropping a late or duplicate reply for %s from %s", attempt_id, device.id)
            return None
        device.attempt, device.state = None, "idle"
        live = attempt.live
        self._end(attempt)
        if not live or attempt.task.future.done():
            log.info("dropping the reply for %s from %s: the task has moved on", attempt_id, device.id)
            return None
        return attempt

    def _failed(self, task: Task, device: Device, kind: str, text: str) -> None:
        """An attempt on ``device`` ended without a usable result: retry the task, or fail it with its history."""
        if task.future.done():
            return
        device.failures += kind in RETRIED
        task.progress.failures.append(f"{device.describe()}: {text}")
        if kind in RETRIED and len(task.progress.failures) < self.max_attempts:
            log.info("task %s failed on %s (%s); queued again", task.id, device.id, text)
            task.progress.state, task.progress.device = "queued", None
            self.queue.appendleft(task)
            return
        if len(task.progress.failures) == 1:
            message = f"device {device.describe()} {text}"
        else:
            tries = "; ".join(f"on {f}" for f in task.progress.failures)
            message = f"job {task.id} failed {len(task.progress.failures)} times: {tries}"
        error_type = {"disconnected": WorkerLost, "verify": VerificationFailed}.get(kind, WorkerError)
        self._finish(task, error=error_type(message, kind=kind, device=device.id))

    def _succeeded(self, attempt: Attempt, outputs: list[np.ndarray]) -> None:
        attempt.device.jobs_done += not attempt.task.internal
        self._finish(attempt.task, outputs=outputs)

    async def _verify(self, attempt: Attempt, outputs: list[np.ndarray]) -> None:
        """Run the task's check off the loop; a failure bans the device and reruns the task."""
        task, device = attempt.task, attempt.device
        assert task.check is not None
        try:
            problem = await in_daemon_thread(task.check, outputs)
        except Exception as exc:  # a bug in the check is not the device's fault
            log.exception("verifying %s failed", attempt.id)
            self._finish(task, error=WebnetError(f"verifying job {task.id} failed: {type(exc).__name__}: {exc}"))
            return
        if task.future.done():
            return
        if problem is None:
            self._succeeded(attempt, outputs)
        else:
            what = "its calibration check" if task.internal else f"verification of job {task.id}"
            log.warning("device %s failed %s (%s); banned for this session", device.id, what, problem)
            device.banned = f"failed {what}: {problem}"
            other = device.attempt
            if other is not None and other.live:  # it gets no more work, not even what it holds
                self._abandon(other)
                self._failed(other.task, device, "verify", f"was banned ({device.banned})")
            self._failed(task, device, "verify", f"failed verification: {problem}")
        self._pump()
        self._changed()

    def _measure(self, device: Device, work: float, busy_ms: float | None) -> None:
        """Refine a device's speed from a job's work and the time it reports having spent on it."""
        if work < MIN_MEASURED_WORK or not busy_ms:
            return
        rate = work / (max(busy_ms, 0.01) / 1e3)
        device.speed = rate if device.speed is None else (1 - SPEED_SMOOTHING) * device.speed + SPEED_SMOOTHING * rate

    def _calibrate(self, device: Device) -> None:
        """A short matmul on a new device, twice: a first check that its results are right, then its speed.

        The first run pays for what only a first run pays (a lazy shader compile at the first
        dispatch, first allocations: ten times the kernel itself on lavapipe), so it carries no
        work to measure; the second, checked too, gives the speed.
        """
        from .calibration import calibration

        program, check = calibration()
        for run in (dataclasses.replace(program, work=0.0), program):
            task = self.submit(run, devices=frozenset({device.id}), check=check, internal=True)
            device.calibrating.add(task.id)

    def _finish(
        self,
        task: Task,
        *,
        outputs: list[np.ndarray] | None = None,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        self.tasks.pop(task.id, None)
        if task.internal:
            for device in self.devices.values():
                device.calibrating.discard(task.id)
        if not task.future.done():
            if cancelled:
                task.progress.state = "cancelled"
                task.future.cancel()
            elif error is not None:
                task.progress.state = "failed"
                task.future.set_exception(error)
            else:
                task.progress.state = "done"
                task.future.set_result(outputs or [])
            group = self.groups.get(task.group)
            if group is not None:
                group.done += 1
                if group.done >= group.total:
                    del self.groups[task.group]
        self._changed()

    def _send(self, device: Device, message: Message) -> None:
        task = asyncio.get_running_loop().create_task(device.send(message))
        task.add_done_callback(lambda t: self._sent(device, t))

    def _sent(self, device: Device, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # At a stop, sockets close under messages still being sent: expected, not worth a warning.
            log.log(logging.DEBUG if self.stopping else logging.WARNING, "sending to %s failed: %r",
                    device.id, task.exception())  # fmt: skip
            device.close(1011, "send failed")
            self.leave(device, "could not be reached")

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:  # a broken panel must never break scheduling
            log.exception("device panel update failed")


def _milliseconds(value: Any) -> float | None:
    """A worker-reported duration, or None if it is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        ms = float(value)
    except OverflowError:
        return None
    return ms if math.isfinite(ms) and ms >= 0 else None


def _busy_ms(timings: dict[str, Any]) -> float | None:
    """The time a worker says a job kept it busy: everything but compiling (done once per kernel)."""
    parts = [_milliseconds(v) for k, v in timings.items() if k not in ("compile", "total")]
    measured = [p for p in parts if p is not None]
    return sum(measured) if measured else None
