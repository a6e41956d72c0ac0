"""What the broker knows of one device's link: its round trip and its rate, from real traffic.

A phone's link, not the GPU, often sets the pace, so placement needs both figures:

- the **round trip** from heartbeat pings (small messages, so the bytes hardly count), keeping
  the least of the recent ones: a ping that waited behind a job's frames measured the queue,
  not the link;
- the **rate** from jobs: the broker times a job from its first frame going out to its result
  being in, and the worker says how long it held the job (waiting its turn, computing, waiting
  for the link back).  What is left, less one round trip, is the bytes of both ways on the wire.
  Only jobs sent while the device held nothing else count (otherwise their bytes queued behind
  other jobs' bytes).  The rate is one figure for both directions (their mean, in effect).

From the two, :func:`pipeline_depth` says how many jobs a device should hold so that its link
and its GPU are both kept busy: the next job's inputs arrive while the current one computes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

#: Round trips kept (heartbeats every 3 s: the last half minute).
RTT_SAMPLES = 10
#: Jobs moving fewer bytes than this say little about the rate.
MIN_RATE_BYTES = 64 * 1024
#: Weight of the newest job in the rate estimate.
RATE_SMOOTHING = 0.5
#: Jobs a device holds when nothing is known of its link: one computing, one arriving.
DEFAULT_DEPTH = 2
#: Never more than this many jobs on one device, whatever the link: each holds memory there.
MAX_DEPTH = 4


@dataclass
class LinkEstimate:
    """A device's round trip (seconds) and rate (bytes per second), None until measured."""

    round_trips: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
    rate: float | None = None

    @property
    def round_trip(self) -> float | None:
        return min(self.round_trips) if self.round_trips else None

    def heard(self, seconds: float) -> None:
        """A ping came back after ``seconds``."""
        if math.isfinite(seconds) and seconds >= 0:
            self.round_trips.append(seconds)

    def moved(self, nbytes: int, seconds: float) -> None:
        """``nbytes`` crossed the link (both ways together) in ``seconds`` of a job's time, round trip included."""
        wire = seconds - (self.round_trip or 0.0)
        if nbytes < MIN_RATE_BYTES or not math.isfinite(wire) or wire <= 0:
            return
        sample = nbytes / wire
        self.rate = sample if self.rate is None else (1 - RATE_SMOOTHING) * self.rate + RATE_SMOOTHING * sample

    def transfer(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` (both ways together) and hear back: 0 for what is not measured."""
        return (self.round_trip or 0.0) + (nbytes / self.rate if self.rate else 0.0)


def pipeline_depth(link: LinkEstimate, sent: int, returned: int, compute: float) -> int:
    """How many jobs like this one a device should hold so that link and GPU both stay busy.

    A job's cycle is its inputs arriving, its compute, its results leaving and a round trip;
    the slowest of the three stages sets the pace, so the device needs cycle / slowest jobs in
    hand to never wait (Little's law), at least :data:`DEFAULT_DEPTH` and at most :data:`MAX_DEPTH`.
    """
    rtt, rate = link.round_trip, link.rate
    if rtt is None or rate is None:
        return DEFAULT_DEPTH
    down, up = sent / rate, returned / rate
    slowest = max(down, up, compute, 1e-3)
    return max(DEFAULT_DEPTH, min(MAX_DEPTH, math.ceil((down + compute + up + rtt) / slowest)))
