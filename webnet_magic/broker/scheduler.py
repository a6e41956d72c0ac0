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

A device may hold several attempts at once (*pipelining*): while it computes one,
the next one's inputs are already on their way and the previous one's results on
their way back, so a phone's link and its GPU are busy at the same time.  It runs
them in the order they were sent; how many it holds follows from its measured link
and speed (:mod:`~webnet_magic.broker.link`) and the memory they take.  Placement
counts the work a device already holds: a task goes where it would finish first.
Only the attempt at the head of a device's line is running; when the device is
lost, that one counts as a failure and the ones behind it go back to the queue as
they were, never having started.

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
from typing import Any

import numpy as np

from .._threads import in_daemon_thread
from ..config import DEFAULTS, Config
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
from ..protocol import CLOSE_SILENT, Message, ProtocolError
from .fleet import Attempt, Check, Device, Group, Progress, Task
from .hello import printable
from .placement import Placement

log = logging.getLogger(__name__)

#: Failures that say something about the device, not the program: another device (or the same
#: one, back from sleep) may well succeed.  Compile, validation and protocol errors are the
#: program's own (see :data:`SECOND_OPINION`).
RETRIED = frozenset({"disconnected", "lease", "device-lost", "out-of-memory", "internal", "bad-result", "verify"})
#: The program's own errors, as a device reports them.  An honest device's report is final, but a
#: hostile one could fail every job it is given by saying so: the task gets a second opinion from a
#: device that has not tried it, where one is connected, before the error is the notebook's.
SECOND_OPINION = frozenset({"compile", "validation", "protocol"})

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
#: Jobs whose tasks have all ended keep their count of finished shards, this many at a time, for a job
#: that submits more tasks later (a model's next stage): it shows its count again, not zero.
ENDED_GROUPS_KEPT = 64
#: Identities of banned devices kept (see :mod:`~webnet_magic.broker.origin`), so a banned device that
#: reconnects without its resume secret is banned again as it joins.
BANS_KEPT = 1024
#: Timings a worker reports that are GPU work, from which its speed is measured.
BUSY_PARTS = ("upload", "kernel", "download", "throttle")


class Scheduler:
    """Pairs queued tasks with devices that have room; ``on_change`` is called after every visible change.

    Its settings come from ``config`` (see :class:`~webnet_magic.config.Config`).  A device has
    the silence limit to acknowledge a cancelled attempt before it is dropped (``cancel_grace``):
    a worker that answers pings but never finishes would otherwise stay busy forever.  ``lease``
    is the base of every attempt's lease (seconds), to which the expected run and transfer times
    are added.  ``calibrate`` runs a short matmul on each device as it joins, to measure its speed
    before real work is sized for it.  ``depth`` fixes how many attempts a device may hold at once
    (None: from its link and speed, see :func:`~webnet_magic.broker.link.pipeline_depth`; 1 turns
    pipelining off), and ``hold_bytes`` bounds their bytes; both live on :attr:`placement` and may
    be changed there.  A worker may report a ``maxJobsHeld`` limit of its own, which is kept to as well.
    """

    def __init__(
        self,
        on_change: Callable[[], None] = lambda: None,
        config: Config = DEFAULTS,
    ) -> None:
        self.devices: dict[str, Device] = {}
        self.departed: OrderedDict[str, Device] = OrderedDict()  # resume secret -> device
        self.bans: OrderedDict[str, str] = OrderedDict()  # identity of a banned device -> its id and why
        self.queue: deque[Task] = deque()
        self.tasks: dict[str, Task] = {}
        self.groups: dict[str, Group] = {}  # jobs with a task not yet finished: what the panel lists
        self.ended_groups: OrderedDict[str, int] = OrderedDict()  # job -> shards done, once none is pending
        self.checks: set[asyncio.Task[None]] = set()  # --verify checks running (the loop keeps only weak references)
        self.cancel_grace = config.silence_limit
        self.lease = config.lease
        self.max_attempts = config.attempts
        self.calibrate = config.calibrate
        self.placement = Placement(self.devices, config.depth, config.hold_bytes)
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
        ban = self.bans.get(device.identity) if device.identity else None
        if ban is not None and not device.banned:
            device.banned = f"same address, browser and adapter as banned device {ban}"
        self.devices[device.id] = device
        log.info("device %s %s: %s (%s)", device.id, "is back" if device.returns else "joined", device.name,
                 device.runtime)  # fmt: skip
        if device.usable:  # a first round trip, before any job's frames can queue ahead of the ping
            self._send(device, Message("ping", {"t": time.time()}))
        if self.calibrate and device.usable and not device.banned and device.speed is None:
            self._calibrate(device)
        self._pump()
        self._changed()

    def pong(self, device: Device, sent: Any) -> None:
        """A heartbeat ping sent at ``sent`` (``time.time()``, echoed by the device) came back: a round trip."""
        if isinstance(sent, int | float) and not isinstance(sent, bool) and abs(sent) < 1e15:  # 10**400 overflows
            device.link.heard(time.time() - sent)

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
        # Its calibration ends with it: a device calibrates once per connection, and one that comes
        # back without a speed calibrates again as it joins.  (Left queued, the runs would wait for it.)
        for task_id in list(device.calibrating):
            task = self.tasks.get(task_id)
            if task is not None:
                self._drop(task)
        device.calibrating.clear()
        held, device.attempts = device.attempts, []
        for position, attempt in reversed(list(enumerate(held))):  # back to the queue in their order
            if not attempt.live:
                continue
            self._end(attempt)
            if position == 0:  # the one it was running
                self._failed(attempt.task, device, "disconnected", reason)
            else:
                self._requeue(attempt)
        self._pump()
        self._changed()

    def _requeue(self, attempt: Attempt) -> None:
        """An attempt that waited behind another on a lost device goes back to the queue: it never ran."""
        task = attempt.task
        if task.future.done():
            return
        task.tried.discard(attempt.device.id)
        task.progress.state, task.progress.device = "queued", None
        self.queue.appendleft(task)

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
            group = self.groups.get(task.group)
            if group is None:
                group = self.groups[task.group] = Group(shards, self.ended_groups.pop(task.group, 0))
            group.pending += 1
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
        self._drop(task)
        self._pump()

    def _drop(self, task: Task) -> None:
        """Cancel ``task`` wherever it is: in the queue, or held by a device (which is told to drop it)."""
        if task in self.queue:
            self.queue.remove(task)
        for device in self.devices.values():
            for attempt in list(device.attempts):
                if attempt.task is task and attempt.live:
                    self._abandon(attempt)
        self._finish(task, cancelled=True)

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
                task.progress.timings = _reported(timings)
                device.last_job_ms = task.progress.timings.get("kernel")
                self._measure(device, task.program.work, _busy_ms(task.progress.timings))
                held = task.progress.timings.get("held")  # on the worker, from arrival to the result going out
                if attempt.quiet and attempt.sent_at is not None and held is not None:
                    took = time.monotonic() - attempt.sent_at - held / 1e3
                    device.link.moved(attempt.payload + task.program.output_bytes, took)
                if task.check is None:
                    self._succeeded(attempt, outputs)
                else:
                    task.progress.state = "verifying"
                    check = asyncio.get_running_loop().create_task(self._verify(attempt, outputs))
                    self.checks.add(check)
                    check.add_done_callback(self.checks.discard)
        self._pump()
        self._changed()

    def error(self, device: Device, attempt_id: str, kind: str, message: str) -> None:
        if kind == "no-device":
            self._gpu_gone(device, message)
            return
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

    def _gpu_gone(self, device: Device, message: str) -> None:
        """``device`` lost its GPU and could not get one back: it can no longer work, and the jobs it
        holds go elsewhere at once, as they were, without waiting for its lease or link to end.

        They never ran there (the one that was running when the GPU went was answered ``device-lost``),
        so handing them back is no failure of theirs; but only ``attempts`` times per task, lest a worker
        that joins again and again and hands its work back each time keep a task forever.
        """
        if self.devices.get(device.id) is not device or not device.webgpu:
            return
        log.info("device %s can no longer work: %s", device.id, message[:200])
        device.webgpu, device.reason = False, printable(message, 500)
        held, device.attempts = device.attempts, []
        if device.state == "busy":
            device.state = "idle"
        for attempt in reversed(held):  # back to the queue in their order
            if not attempt.live:
                continue
            self._end(attempt)
            attempt.task.declined += 1
            if attempt.task.declined > self.max_attempts:
                self._failed(attempt.task, device, "device-lost", f"lost its GPU for good: {message[:4000]}")
            else:
                self._requeue(attempt)
        self._pump()
        self._changed()

    def stop(self) -> None:
        """Fail every unfinished task; the broker is going away."""
        self.stopping = True
        for task in list(self.tasks.values()):
            self._finish(task, error=BrokerStopped("the webnet broker was stopped (%webnet stop)"))
        self.queue.clear()

    def unworkable(self) -> Device | None:
        """The longest connected of the devices that can never be given work (no WebGPU, banned), if any."""
        return min((d for d in self.devices.values() if not d.usable or d.banned), key=lambda d: d.joined,
                   default=None)  # fmt: skip

    def usable_devices(self) -> list[Device]:
        return [d for d in self.devices.values() if d.usable]

    def jobs_snapshot(self) -> list[dict[str, Any]]:
        """The notebook's jobs in flight, for the panel: shards done of total, and who holds which."""
        running: dict[str, dict[str, str]] = {}
        for device in self.devices.values():
            attempt = device.attempt  # the one it runs; those behind it wait on the device
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
        """The device to start ``task`` on now (of those it may use, preferring ones it has not
        failed on), or None to keep it queued: see :meth:`Placement.choose`.

        Once a result of the task has failed verification, it waits for a device whose results
        have passed verification before, if one may run it: a liar that comes back under a new
        identity each time (see :mod:`~webnet_magic.broker.origin`) is a fresh device every time,
        and would otherwise take every retry until the task's attempts ran out.
        """
        eligible = self._eligible(task)
        if task.misled:  # a device lied about it: it goes where results have passed verification, if it can
            eligible = [d for d in eligible if d.verified] or eligible
        fresh = [d for d in eligible if d.id not in task.tried]
        return self.placement.choose(task, fresh or eligible)

    # -- attempts --------------------------------------------------------------------------

    def _pump(self) -> None:
        """Fail queued tasks no device can run; start the rest, oldest first, where they fit.

        A task that cannot be placed for a reason nobody foresaw (a device's figures, say) fails
        with that reason; it is never left out of both the queue and every device.
        """
        for task in list(self.queue):
            try:
                problem = self._unrunnable(task)
                device = None if problem is not None else self._choose(task)
                if problem is None and device is None:
                    continue
                self.queue.remove(task)
                if device is not None:
                    self._start(task, device)
            except Exception as exc:
                log.exception("placing task %s failed", task.id)
                problem = WebnetError(f"job {task.id} could not be placed: {type(exc).__name__}: {exc}")
                if task in self.queue:
                    self.queue.remove(task)
            if problem is not None:
                self._finish(task, error=problem)

    def _start(self, task: Task, device: Device) -> None:
        """Send ``task`` to ``device``, behind whatever the device already holds."""
        now = time.monotonic()
        ahead = self.placement.done_by(task.program, device, now) - now - self.placement.cost(task.program, device)
        behind = list(device.attempts)
        task.attempts += 1
        program = task.program
        held = frozenset() if task.resent else device.holds(device.cache)  # a resend carries all of its data
        message = program.to_message(f"{task.id}~{task.attempts}", held=held)
        payload = sum(a.nbytes for a in message.arrays)
        keys = frozenset(b.key for b in program.buffers if b.key and b.input is not None and b.key not in held)
        attempt = Attempt(message.fields["job"], task, device, now, self.placement.expected(program, device),
                          self.placement.transfer(device, payload + program.output_bytes), payload, keys)  # fmt: skip
        device.attempts.append(attempt)
        device.state = "busy"
        device.recent[attempt.id] = program.output_bytes
        while len(device.recent) > RECENT_ATTEMPTS:
            device.recent.popitem(last=False)
        task.tried.add(device.id)
        progress = task.progress
        progress.state, progress.device, progress.attempts = "running", device.id, task.attempts
        progress.sent += payload
        # Its lease allows for the work ahead of it on the device, and for everyone's bytes on a slow link.
        moved = payload + program.output_bytes + sum(a.payload + a.task.program.output_bytes for a in behind)
        self._lease(attempt, self.lease + LEASE_FACTOR * (attempt.expected + ahead) + moved / LINK_FLOOR)
        self._send_job(device, message, attempt)

    def _send_job(self, device: Device, message: Message, attempt: Attempt) -> None:
        """Send a job once the device's previous one is out, so each job's data arrives whole and in order."""
        previous = device.outbox

        async def send() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            if attempt not in device.attempts:  # given up on before it left: the device never hears of it
                return
            attempt.sent_at = time.monotonic()
            attempt.quiet = device.attempts[0] is attempt  # nothing else of this device's on the link
            await device.send(message)

        device.outbox = self._send(device, send())

    def _lease(self, attempt: Attempt, seconds: float) -> None:
        attempt.timer = asyncio.get_running_loop().call_later(seconds, self._lease_over, attempt, seconds)

    def _lease_over(self, attempt: Attempt, seconds: float) -> None:
        """An attempt outlived its lease: run the task elsewhere if it can; else give it longer."""
        if not attempt.live:
            return
        device = attempt.device
        if attempt.task.internal:  # a device that cannot calibrate in time gets no work: it gives its slot back
            reason = f"did not finish its calibration within {seconds:.0f} s"
            log.warning("device %s %s; disconnecting it", device.id, reason)
            device.close(CLOSE_SILENT, reason)
            self.leave(device, reason)
            return
        if not [d for d in self._eligible(attempt.task) if d is not device]:
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
        """Tell the device to drop a live attempt; it holds it until it says so (or is dropped).

        An attempt still waiting to be sent is simply forgotten: the device never hears of it.
        """
        self._end(attempt)
        device = attempt.device
        if attempt.sent_at is None:
            self._release(device, attempt)
            return
        self._send(device, Message("cancel", {"job": attempt.id}))
        asyncio.get_running_loop().call_later(self.cancel_grace, self._cancel_overdue, device, attempt)

    def _release(self, device: Device, attempt: Attempt) -> None:
        """``device`` no longer holds ``attempt``."""
        if attempt in device.attempts:
            device.attempts.remove(attempt)
        if not device.attempts and device.state == "busy":
            device.state = "idle"

    def _cancel_overdue(self, device: Device, attempt: Attempt) -> None:
        if attempt in device.attempts and self.devices.get(device.id) is device:
            log.warning("device %s did not drop cancelled attempt %s; disconnecting it", device.id, attempt.id)
            device.close(CLOSE_SILENT, "did not acknowledge a cancelled job")
            self.leave(device, "did not acknowledge a cancelled job")

    def _reply(self, device: Device, attempt_id: str) -> Attempt | None:
        """The device answered ``attempt_id`` and no longer holds it; the attempt, if its answer still counts."""
        attempt = next((a for a in device.attempts if a.id == attempt_id), None)
        if attempt is None:
            log.info("dropping a late or duplicate reply for %s from %s", attempt_id, device.id)
            return None
        self._release(device, attempt)
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
        untried = kind in SECOND_OPINION and any(d.id not in task.tried for d in self._eligible(task))
        if (kind in RETRIED or untried) and len(task.progress.failures) < self.max_attempts:
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
            device.verified += not task.internal
            self._succeeded(attempt, outputs)
        else:
            what = "its calibration check" if task.internal else f"verification of job {task.id}"
            log.warning("device %s failed %s (%s); banned for this session", device.id, what, problem)
            device.banned = f"failed {what}: {problem}"
            task.misled = True
            if device.identity:
                self.bans[device.identity] = f"{device.id} ({device.banned})"
                while len(self.bans) > BANS_KEPT:
                    self.bans.popitem(last=False)
            for other in [a for a in device.attempts if a.live]:  # it gets no more work, not even what it holds
                self._abandon(other)
                self._failed(other.task, device, "verify", f"was banned ({device.banned})")
            self._failed(task, device, "verify", f"failed verification: {problem}")
        self._pump()
        self._changed()

    def _measure(self, device: Device, work: float, busy_ms: float | None) -> None:
        """Refine a device's speed from a job's work and the time it reports having spent on it."""
        if work < MIN_MEASURED_WORK or not busy_ms or not math.isfinite(busy_ms):
            return
        rate = work / (max(busy_ms, 0.01) / 1e3)
        if not math.isfinite(rate) or rate <= 0:  # a speed of 0 would be divided by
            return
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
            if not task.future.done():  # one the device cannot hold has failed already
                device.calibrating.add(task.id)
            task.future.add_done_callback(lambda done, device=device.id: _calibrated(device, done))

    def _finish(
        self,
        task: Task,
        *,
        outputs: list[np.ndarray] | None = None,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        """Settle ``task``'s future and forget the task everywhere: queue, task list, its job's count."""
        if self.tasks.pop(task.id, None) is not task:
            return  # finished already
        if task in self.queue:
            self.queue.remove(task)
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
        group = self.groups.get(task.group) if not task.internal else None
        if group is not None:  # finished, failed or cancelled alike: the job no longer waits on it
            group.done += 1
            group.pending -= 1
            if group.pending <= 0:
                del self.groups[task.group]
                self.ended_groups[task.group] = group.done
                while len(self.ended_groups) > ENDED_GROUPS_KEPT:
                    self.ended_groups.popitem(last=False)
        self._changed()

    def _send(self, device: Device, what: Message | Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Send a message (or run a coroutine that sends) in the background; a failure drops the device."""
        coroutine = device.send(what) if isinstance(what, Message) else what
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(lambda t: self._sent(device, t))
        return task

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


def _calibrated(device: str, run: asyncio.Future[list[np.ndarray]]) -> None:
    """A calibration run ended: its outcome is read here, as nobody waits on it (an unread failure
    would be logged by asyncio as "Future exception was never retrieved")."""
    if not run.cancelled() and run.exception() is not None:
        log.info("calibration of %s failed: %s", device, run.exception())


#: The longest duration a worker may report (a day): each part is bounded, so no sum of parts overflows.
MAX_REPORTED_MS = 86_400_000.0


def _milliseconds(value: Any) -> float | None:
    """A worker-reported duration, or None if it is not a number from 0 to :data:`MAX_REPORTED_MS`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        ms = float(value)
    except OverflowError:
        return None
    return ms if 0 <= ms <= MAX_REPORTED_MS else None


def _reported(timings: dict[str, Any]) -> dict[str, float]:
    """A worker's timings, keeping the finite, non-negative numbers (at most 20 of them)."""
    kept = {str(k)[:20]: _milliseconds(v) for k, v in list(timings.items())[:20]}
    return {k: v for k, v in kept.items() if v is not None}


def _busy_ms(timings: dict[str, float]) -> float | None:
    """The time a worker says a job kept its GPU busy: not compiling (once per kernel), nor waiting."""
    measured = [timings[k] for k in BUSY_PARTS if k in timings]
    return sum(measured) if measured else None
