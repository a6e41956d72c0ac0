"""Where a task goes: of the devices with room for it, the one that would finish it first.

A device has room while it holds fewer jobs than its pipeline depth (from its link and
speed, :func:`~webnet_magic.broker.link.pipeline_depth`, or fixed) and their bytes leave
room for this one's.  "Finish first" counts the work a device already holds, the task's
compute at the device's measured speed, and the time its link takes to move the task's
bytes, so a fast phone on a slow link can lose to a slower laptop on a fast one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import DEFAULTS
from ..program import Program
from .fleet import Device, Task
from .link import pipeline_depth
from .records import DeviceRecord

#: Seconds a job costs beyond its compute and transfer while nothing is measured (so held work counts).
JOB_OVERHEAD = 1e-3
#: A shard leaves the busy device it was sized for only for one that would finish it this much sooner
#: (a fraction of the time it would take there): a round trip measured a millisecond shorter is noise.
PREFER_MARGIN = 0.1


@dataclass
class Placement:
    """Placement over ``devices`` (the scheduler's own dict); ``depth`` fixes how many jobs a device
    holds (None: from its link), ``hold_bytes`` bounds their bytes."""

    devices: dict[str, Device]
    depth: int | None = None
    hold_bytes: int = DEFAULTS.hold_bytes  # (a job alone on a device is never held back by it)

    def choose(self, task: Task, pool: list[Device]) -> Device | None:
        """The device of ``pool`` to start ``task`` on now, or None to keep it queued.

        Of those with room, it goes to the one that would finish it first, counting the work
        each already holds and the time its link takes to move the task's bytes.  A shard goes
        to the device it was sized for while that device holds nothing: :func:`shard_weights`
        sized it, from the same figures, to end with the job's other shards there, so another
        device would finish it sooner only by the figures' noise (a link's rate measured while
        the machine was busy), and it would finish it behind its own shard.  A busy one (work
        came after the sizing, or it is slower than measured) keeps it unless another would
        finish it clearly sooner (by :data:`PREFER_MARGIN` of its time there).
        """
        now = time.monotonic()
        preferred = self.devices.get(task.prefer or "")
        if preferred is not None and preferred in pool and not preferred.attempts:
            return preferred
        roomy = [d for d in pool if self.has_room(d, task.program)]
        if not roomy:
            return None
        best = min(roomy, key=lambda d: self.done_by(task.program, d, now))
        if preferred is None or preferred not in pool or preferred is best:
            return best
        there = self.done_by(task.program, preferred, now) - now
        if self.done_by(task.program, best, now) - now < there * (1 - PREFER_MARGIN):
            return best
        return preferred if preferred in roomy else None

    def has_room(self, device: Device, program: Program) -> bool:
        """Whether ``device`` may take ``program`` now: it is idle, or holds fewer jobs than its depth
        and their bytes leave room for this one's."""
        held = device.attempts
        if not held:
            return True
        if len(held) >= self.depth_for(device, program):
            return False
        budget = min(self.hold_bytes, device.limits.get("maxBufferSize", self.hold_bytes))
        return sum(a.payload + a.task.program.output_bytes for a in held) + _moved(program) <= budget

    def depth_for(self, device: Device, program: Program) -> int:
        """How many jobs like ``program`` the device may hold: configured, or from its link and speed."""
        held = device.limits.get("maxJobsHeld")
        if self.depth is not None:
            depth = self.depth
        else:
            sent = sent_bytes(program, device.holds(device.cache))
            depth = pipeline_depth(device.link, sent, program.output_bytes, self.expected(program, device))
        return max(1, min(depth, held) if held is not None else depth)

    def done_by(self, program: Program, device: Device, now: float) -> float:
        """When ``device`` would be done with ``program`` if given it now, after the work it holds."""
        return now + device.backlog(now) + self.cost(program, device)

    def cost(self, program: Program, device: Device) -> float:
        """Seconds ``program`` takes on ``device``: compute, and its bytes both ways on the link."""
        sent = sent_bytes(program, device.holds(device.cache))
        return self.expected(program, device) + self.transfer(device, sent + program.output_bytes)

    def transfer(self, device: Device, nbytes: int) -> float:
        """Seconds to move ``nbytes`` over the device's link and hear back (a token amount while unmeasured).

        A round trip not yet measured counts as the fleet's mean, as a speed does: counted as
        none, a device that joined a moment ago looked nearer than every measured one.
        """
        seconds = device.link.transfer(nbytes)
        if device.link.round_trip is None:
            known = [d.link.round_trip for d in self.devices.values() if d.link.round_trip is not None]
            seconds += sum(known) / len(known) if known else 0.0
        return seconds or JOB_OVERHEAD

    def speed(self, device: Device) -> float:
        """A device's speed, or the fleet's mean (1 GFLOP/s with none measured) until it is measured."""
        if device.speed is not None:
            return device.speed
        known = [d.speed for d in self.devices.values() if d.speed is not None]
        return sum(known) / len(known) if known else 1e9

    def expected(self, program: Program, device: Device) -> float:
        return program.work / self.speed(device)


def sent_bytes(program: Program, held: set[str]) -> int:
    """Input bytes a job message carries to a worker holding the content keys ``held``."""
    return sum(program.inputs[b.input].nbytes for b in program.buffers if b.input is not None and b.key not in held)


def _moved(program: Program) -> int:
    """Bytes a job and its result take on a device, at most: all of its inputs and outputs."""
    return program.input_bytes + program.output_bytes


def shard_weights(targets: Sequence[DeviceRecord | None], work: float, nbytes: int = 0) -> list[float]:
    """Weights to cut ``work`` (flops) over ``targets`` so that every device ends at once.

    ``targets`` are device records, one per shard (a device with several shards appears that
    many times; None sizes nothing).  Each device gets ``speed * (T - backlog)`` of the work, where
    ``backlog`` is the work it already holds and ``T`` the common end (water-filling: a device
    whose backlog outlasts ``T`` gets none), shared evenly among its shards.  Its link counts as
    placement counts it: its round trip is held work, and its share of ``nbytes`` (the job's
    bytes both ways, taken as cut in proportion to the work) at its measured rate slows its
    ``speed``, so a fast phone on a slow link gets the share it can finish in time, and each
    shard's own device is where it ends soonest.  Until every device's speed is measured, or
    for work that is not measured in flops, the shares follow speeds alone.
    """
    devices = {d.id: d for d in targets if d is not None}
    counts = Counter(d.id for d in targets if d is not None)
    speed = {i: d.speed or 1e9 for i, d in devices.items()}  # (1 GF/s for all until all are measured)
    backlog = {i: d.backlog for i, d in devices.items()}
    if work > 0 and all(d.speed for d in devices.values()):
        for i, d in devices.items():
            speed[i] = 1 / (1 / speed[i] + (nbytes / work / d.rate if d.rate else 0.0))
            backlog[i] += d.round_trip or 0.0
        order = sorted(devices, key=backlog.__getitem__)
        for k in range(1, len(order) + 1):
            active = order[:k]
            end = (work + sum(speed[i] * backlog[i] for i in active)) / sum(speed[i] for i in active)
            if k == len(order) or end <= backlog[order[k]]:
                break
        share = {i: speed[i] * max(0.0, end - backlog[i]) for i in devices}
    else:
        share = speed
    return [1.0 if d is None else share[d.id] / counts[d.id] for d in targets]
