"""Devices that joined, jobs waiting for them, and the pairing of the two.

Everything here runs on the broker's event loop thread and knows nothing of
sockets: a :class:`Device` is given a ``send`` coroutine function and a
``close`` callable by whoever accepted its connection.  Futures handed out by
:meth:`Scheduler.submit` resolve to the checked output arrays, or fail with an
error from :mod:`webnet_magic.errors` that says what happened and where.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BrokerStopped, DeviceLimitError, DeviceNotFound, WebnetError, WorkerError, WorkerLost
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


@dataclass
class Device:
    """A connected worker, as the scheduler and the device panel see it."""

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
    state: str = "idle"
    jobs_done: int = 0
    last_job_ms: float | None = None
    job: Job | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    cache: set[str] = field(default_factory=set)  # content keys the worker says it keeps

    @property
    def usable(self) -> bool:
        return self.webgpu and self.state != "closing"

    def refusal(self, program: Program) -> str | None:
        """Why this device cannot run ``program`` (naming the limit), or None if it can."""
        for limit, what, measure in LIMIT_CHECKS:
            have, need = self.limits.get(limit, WIRE_LIMITS.get(limit)), measure(program)
            if have is not None and need > have:
                return f"{what} is {need}, above device {self.id}'s {limit} of {have}"
        return None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for the widget, ``%webnet devices`` and tests."""
        return {
            "id": self.id,
            "name": self.name,
            "runtime": self.runtime,
            "adapter": self.adapter.get("description")
            or " ".join(filter(None, (self.adapter.get(k) for k in ("vendor", "architecture", "device"))))
            or "",
            "state": self.state if self.webgpu else "no WebGPU",
            "reason": self.reason,
            "jobs_done": self.jobs_done,
            "last_job_ms": self.last_job_ms,
            "job": self.job.id if self.job else None,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "cached": len(self.cache),
            "limits": dict(self.limits),
        }


@dataclass
class Job:
    """One program on its way to a device and back."""

    id: str
    program: Program
    future: asyncio.Future[list[np.ndarray]]
    device_id: str | None = None
    device: Device | None = None
    resent: bool = False  # sent again with all its inputs after a worker had dropped some


class Scheduler:
    """Pairs queued jobs with idle devices; ``on_change`` is called after every visible change.

    ``cancel_grace`` is how long a device may take to acknowledge a cancelled job
    before it is dropped: a worker that answers pings but never finishes its job
    would otherwise stay busy forever.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None, *, cancel_grace: float = 30.0) -> None:
        self.devices: dict[str, Device] = {}
        self.queue: deque[Job] = deque()
        self.jobs: dict[str, Job] = {}
        self.cancel_grace = cancel_grace
        self._on_change = on_change
        self._job_ids = itertools.count(1)
        self._device_ids = itertools.count(1)

    def new_device_id(self) -> str:
        return f"d{next(self._device_ids)}"

    def new_job_id(self) -> str:
        """A fresh job id; safe to call from any thread (``next`` on a count is atomic)."""
        return f"j{next(self._job_ids)}"

    # -- devices ---------------------------------------------------------------------------

    def join(self, device: Device) -> None:
        self.devices[device.id] = device
        log.info("device %s joined: %s (%s)", device.id, device.name, device.runtime)
        self._pump()
        self._changed()

    def leave(self, device_id: str, reason: str) -> None:
        """Forget a device; a job it was running fails now, with ``reason``, rather than at a timeout."""
        device = self.devices.pop(device_id, None)
        if device is None:
            return
        log.info("device %s left: %s", device_id, reason)
        if device.job is not None:
            job, device.job = device.job, None
            self._finish(
                job,
                error=WorkerLost(
                    f"device {device_id} ({device.name}) {reason} while running job {job.id}",
                    kind="disconnected",
                    device=device_id,
                ),
            )
        self._pump()
        self._changed()

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, program: Program, device_id: str | None = None, job_id: str | None = None) -> Job:
        """Queue ``program``; the returned job's future resolves to its outputs."""
        job = Job(job_id or self.new_job_id(), program, asyncio.get_running_loop().create_future(), device_id)
        self.jobs[job.id] = job
        self.queue.append(job)
        self._pump()
        self._changed()
        return job

    def cancel(self, job_id: str) -> None:
        """Stop a job: drop it from the queue, or tell its device to drop it; nothing is bound.

        A device told to drop its job stays busy until it says it has; one that does not
        within ``cancel_grace`` seconds is disconnected.
        """
        job = self.jobs.get(job_id)
        if job is None:
            return
        if job in self.queue:
            self.queue.remove(job)
        elif job.device is not None:
            device = job.device
            self._send(device, Message("cancel", {"job": job.id}))
            asyncio.get_running_loop().call_later(self.cancel_grace, self._cancel_overdue, device, job.id)
        self._finish(job, cancelled=True)

    def result(self, device: Device, job_id: str, arrays: list[np.ndarray], timings: dict[str, Any]) -> None:
        job = self._release(device, job_id)
        if job is None:
            return
        try:
            outputs = job.program.check_results(arrays)
        except ProtocolError as exc:
            error = WorkerError(f"device {device.id}: {exc}", kind="bad-result", device=device.id)
            self._finish(job, error=error)
            return
        device.jobs_done += 1
        device.last_job_ms = _milliseconds(timings.get("kernel"))
        self._finish(job, outputs=outputs)

    def error(self, device: Device, job_id: str, kind: str, message: str) -> None:
        job = self._release(device, job_id)
        if job is not None and kind == "missing-inputs" and not job.resent:
            # The worker dropped an input it had cached (the broker's list is updated by now):
            # send the job again, this time with the data.
            job.resent, job.device = True, None
            self.queue.appendleft(job)
            self._pump()
            return
        if job is not None:
            text = f"device {device.id} ({device.name}) reported a {kind[:40]} error: {message[:4000]}"
            self._finish(job, error=WorkerError(text, kind=kind[:40], device=device.id))

    def stop(self) -> None:
        """Fail every unfinished job; the broker is going away."""
        for job in list(self.jobs.values()):
            self._finish(job, error=BrokerStopped("the webnet broker was stopped (%webnet stop)"))
        self.queue.clear()

    def usable_devices(self) -> list[Device]:
        return [d for d in self.devices.values() if d.usable]

    # -- internals -------------------------------------------------------------------------

    def _unrunnable(self, job: Job) -> WebnetError | None:
        """Why no connected device could ever run ``job``; None while one could (or may yet join)."""
        if job.device_id is not None:
            device = self.devices.get(job.device_id)
            if device is None or not device.usable:
                known = ", ".join(d.id for d in self.usable_devices()) or "none"
                what = "is connected" if device is None else "has WebGPU"
                return DeviceNotFound(f"no device {job.device_id!r} {what} (usable devices: {known})")
            candidates = [device]
        else:
            candidates = self.usable_devices()
        refusals = [d.refusal(job.program) for d in candidates]
        if candidates and all(refusals):
            return DeviceLimitError("; ".join(r for r in refusals if r))
        return None

    def _pump(self) -> None:
        """Fail queued jobs no device can run; send the rest, oldest first, to idle devices that fit."""
        for job in list(self.queue):
            problem = self._unrunnable(job)
            if problem is not None:
                self.queue.remove(job)
                self._finish(job, error=problem)
                continue
            device = next(
                (
                    d
                    for d in self.usable_devices()
                    if d.state == "idle" and (job.device_id in (None, d.id)) and d.refusal(job.program) is None
                ),
                None,
            )
            if device is None:
                continue
            self.queue.remove(job)
            job.device = device
            device.job, device.state = job, "busy"
            held = frozenset() if job.resent else device.cache  # a resend carries all of its data
            self._send(device, job.program.to_message(job.id, held=held))

    def _cancel_overdue(self, device: Device, job_id: str) -> None:
        if device.job is not None and device.job.id == job_id and device.id in self.devices:
            log.warning("device %s did not drop cancelled job %s; disconnecting it", device.id, job_id)
            device.close(CLOSE_SILENT, "did not acknowledge a cancelled job")
            self.leave(device.id, "did not acknowledge a cancelled job")

    def _release(self, device: Device, job_id: str) -> Job | None:
        """The device is free again; return its job if ``job_id`` is still the one it was given."""
        job = device.job
        if job is None or job.id != job_id:
            log.info("dropping a late or unknown reply for job %s from %s", job_id, device.id)
            return None
        device.job, device.state = None, "idle"
        self._pump()
        return job if not job.future.done() else None

    def _finish(
        self,
        job: Job,
        *,
        outputs: list[np.ndarray] | None = None,
        error: BaseException | None = None,
        cancelled: bool = False,
    ) -> None:
        self.jobs.pop(job.id, None)
        if not job.future.done():
            if cancelled:
                job.future.cancel()
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(outputs or [])
        self._changed()

    def _send(self, device: Device, message: Message) -> None:
        task = asyncio.get_running_loop().create_task(device.send(message))
        task.add_done_callback(lambda t: self._sent(device, t))

    def _sent(self, device: Device, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("sending to %s failed: %r", device.id, task.exception())
            device.close(1011, "send failed")
            self.leave(device.id, "could not be reached")

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
