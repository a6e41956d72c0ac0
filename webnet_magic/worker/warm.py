"""Keeping a GPU at full clock while work is on its way, and only then.

A GPU idles at a low clock and raises it only after it has been busy for a while: on
the lent H200 (NVML) a lone job's 4096² matmul ran at the idle 345 MHz and took 28.7 ms,
against 5.7 ms at 1980 MHz in a tight loop, and the clock rose after about 0.2 s of
back-to-back work (phones and laptops ramp the same way).  So while a job's data is
arriving, and while jobs wait here, the worker keeps the GPU's queue busy with a cheap
kernel (one workgroup spinning on integer arithmetic, a few milliseconds a dispatch),
paused while a job's own kernels run.  When nothing is arriving or waiting, it stops:
an idle phone must not burn its battery.

Over a slow link a job's data can take many seconds to arrive; warming through all of it
would waste power, so the warming starts only :data:`LEAD` seconds before the data is
expected to be complete (from the rate at which it has been coming: :class:`Arrival`).
``js/gpu.js`` and ``js/worker.js`` do the same in the browser.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._assets import static_dir

#: Seconds of warming wanted before a job's data is all here: the H200 needed about half a second.
LEAD = 0.6
#: How long one warming dispatch should last (seconds): long enough that the gaps between
#: dispatches (a submit and a wait) are a small part, short enough that a job waits little.
SPIN_SECONDS = 0.004

#: The warming kernel, shared with the worker page (``js/spin.wgsl``).
SPIN = (static_dir() / "spin.wgsl").read_text("utf-8")


class Arrival:
    """When the job data still arriving should be complete, from the rate it has been coming at.

    ``frame`` is told of each frame of the job messages that are arriving; between
    arrivals the last rate is remembered, so the head of the next one can be judged at once.
    """

    def __init__(self) -> None:
        self.rate: float | None = None  # bytes a second, of the last arrival measured
        self.due = 0.0  # when the data still arriving should be here (perf_counter seconds)
        self._since: float | None = None  # when the current arrival's first frame came
        self._bytes = 0  # bytes of its frames after the first

    def frame(self, nbytes: int, now: float, remaining: int) -> None:
        """A frame of ``nbytes`` came at ``now``, and ``remaining`` bytes are still to come."""
        if self._since is None:
            self._since, self._bytes = now, 0
        else:
            self._bytes += nbytes
            if now > self._since:
                self.rate = self._bytes / (now - self._since)
        self.due = now + (remaining / self.rate if self.rate else 0.0)  # no rate yet: soon, as far as we know
        if not remaining:
            self._since = None

    def warm_in(self, now: float) -> float:
        """Seconds from ``now`` until warming should start (0 or less: now)."""
        return self.due - LEAD - now


class Warmer:
    """A thread that dispatches :data:`SPIN` back to back while armed and not paused.

    ``spin(rounds)`` runs one dispatch and returns its seconds; it is called holding
    ``lock`` (the executor's), so warming never runs beside a job's own GPU calls.
    ``prepare`` compiles the kernel, once, as the thread starts and without the lock: a
    job that arrives meanwhile does not wait for it.
    """

    def __init__(self, prepare: Callable[[], None], spin: Callable[[int], float], lock: threading.Lock) -> None:
        self._prepare = prepare
        self._spin = spin
        self._lock = lock
        self._state = threading.Condition()
        self._armed = False
        self._paused = 0
        self._thread: threading.Thread | None = None
        self.rounds = 4096  # adjusted so a dispatch lasts about SPIN_SECONDS
        self.dispatches = 0  # warming dispatches so far (for tests and benchmarks)

    @property
    def armed(self) -> bool:
        return self._armed

    def arm(self, on: bool) -> None:
        """Warm (work is arriving or waiting) or stop (nothing is)."""
        with self._state:
            if on and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="webnet-warm", daemon=True)
                self._thread.start()
            self._armed = on
            self._state.notify_all()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No warming while a job runs: its own kernels keep the GPU busy, and must not share it."""
        with self._state:
            self._paused += 1
        try:
            yield
        finally:
            with self._state:
                self._paused -= 1
                self._state.notify_all()

    def _wanted(self) -> bool:
        return self._armed and not self._paused

    def _run(self) -> None:
        self._prepare()
        while True:
            with self._state:
                self._state.wait_for(self._wanted)
            with self._lock:
                if not self._wanted():  # a job took the GPU meanwhile
                    continue
                seconds = self._spin(self.rounds)
            self.dispatches += 1
            if seconds > 0:  # toward SPIN_SECONDS, a factor of 4 at most per step
                self.rounds = int(min(max(self.rounds * min(max(SPIN_SECONDS / seconds, 0.25), 4), 256), 1 << 24))
