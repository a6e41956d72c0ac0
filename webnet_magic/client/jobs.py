"""A computation in flight on the fleet: the handle ``%webnet ... --bg`` returns.

One notebook computation may be many tasks (a sharded matmul, blocks that fit a
phone's limits).  A :class:`Job` gathers them: it hears each one settle, puts
their outputs together, binds the results into the notebook (all names at once,
only on success), and answers the usual future questions.  It is awaitable, so
``C = await h`` works in a cell.  Cancelling it cancels every task on every
device, and nothing is bound afterwards.

A job holds no thread while it runs: its tasks' done-callbacks count them off (on
the broker's thread), and one thread shared by all jobs puts the outputs together.
A thread per job cost each launch a thread start, which waits for the new thread
to get the GIL: up to 5 ms while the broker's thread was busy reading a result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ..broker.thread import BrokerThread, TaskHandle

#: Puts the tasks' outputs (in task order) together into the job's results.
Assemble = Callable[[list[list[np.ndarray]]], list[np.ndarray]]
#: Seconds to wait, after a task fails, for the job's other tasks to confirm their cancellation
#: (immediate while the broker runs) before the failure is reported anyway.
CANCEL_SETTLE = 10.0


@cache
def _finisher() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that puts finished jobs' outputs together and binds them, in the order they finished."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="webnet-jobs")


@dataclass(frozen=True)
class JobProgress:
    """A job's progress at one moment: tasks done of total, bytes moved, and who holds what."""

    done: int
    total: int
    sent: int
    received: int
    running: dict[str, str]  # task id -> device id
    failures: tuple[str, ...]  # attempts that failed (and were retried, or failed the job)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def __str__(self) -> str:
        text = f"{_size(self.sent)} sent, {_size(self.received)} received"
        if self.total > 1:  # of one task, 0/1 would only look frozen
            text = f"{self.done}/{self.total} shards, {text}"
        if self.running:
            text += "; on " + ", ".join(sorted(set(self.running.values())))
        if self.failures:
            text += f"; {len(self.failures)} retried"
        return text


class Job:
    """Tasks on the fleet that make one result; ``result``, ``done``, ``cancel``, ``progress``, ``await``."""

    def __init__(
        self,
        broker: BrokerThread,
        job_id: str,
        tasks: Sequence[TaskHandle],
        assemble: Assemble,
        *,
        text: str = "",
        bind: Callable[[list[np.ndarray]], None] | None = None,
    ) -> None:
        self.id = job_id
        self.text = text
        self.tasks = list(tasks)
        self.future: concurrent.futures.Future[list[np.ndarray]] = concurrent.futures.Future()
        self._broker = broker
        self._assemble = assemble
        self._bind = bind
        self._lock = threading.Lock()  # cancel() and the binding of results exclude each other
        self._tally = threading.Lock()  # the counts below, kept by the tasks' callbacks
        self._unsettled = len(self.tasks)
        self._failing = False  # a task failed or was cancelled: the rest are being cancelled
        self._ended = False  # _end has been handed to the finisher
        self._timer: threading.Timer | None = None  # after a failure, for the rest to confirm their cancellation
        self._follow()

    def _follow(self) -> None:
        """Hear each task settle (see :meth:`_settled`); a job whose tasks come later starts its own thread."""
        if not self.tasks:
            self._end_once()
        for task in self.tasks:
            task.future.add_done_callback(self._settled)

    def _settled(self, future: concurrent.futures.Future[Any]) -> None:
        """One task settled: at the first that failed, cancel the rest; once all have, end the job."""
        with self._tally:
            self._unsettled -= 1
            first = _ended_badly(future) and not self._failing
            self._failing = self._failing or first
            last = not self._unsettled
        if first:
            self._cancel_tasks()
            if not last:  # the rest confirm their cancellation at once while the broker runs
                self._timer = threading.Timer(CANCEL_SETTLE, self._end_once)
                self._timer.daemon = True
                self._timer.start()
        if last:
            self._end_once()

    def _end_once(self) -> None:
        with self._tally:
            ended, self._ended = self._ended, True
        if ended:
            return
        if self._timer is not None:
            self._timer.cancel()
        try:
            _finisher().submit(self._end)
        except RuntimeError:  # the interpreter is exiting (the broker stops last): end it here
            self._end()

    def _end(self) -> None:
        """Fail with the first failure (or as cancelled), else assemble and bind (on the finisher's thread)."""
        futures = [t.future for t in self.tasks]
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception()), None)
        if failed is not None or any(f.cancelled() for f in futures):
            self._fail(failed.exception() if failed is not None else None)
            return
        try:
            results = self._assemble([f.result() for f in futures])
        except Exception as exc:
            self._fail(exc)
            return
        self._succeed(results)

    def _fail(self, error: BaseException | None) -> None:
        """End the job with ``error`` (or as cancelled, for None), unless it has ended already."""
        with self._lock:
            if not self.future.done():
                if error is None:
                    self.future.cancel()
                else:
                    self.future.set_exception(error)

    def _succeed(self, results: list[np.ndarray]) -> None:
        """Bind and publish the results, unless the job was cancelled meanwhile (then nothing is bound)."""
        with self._lock:
            if self.future.done():  # cancelled while the last outputs came in: nothing is bound
                return
            try:
                if self._bind is not None:
                    self._bind(results)
            except Exception as exc:
                self.future.set_exception(exc)
            else:
                self.future.set_result(results)

    # -- the handle ---------------------------------------------------------------------------

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The result (a tuple for several), waiting up to ``timeout`` seconds; raises the job's error."""
        results = self.future.result(timeout)
        return results[0] if len(results) == 1 else tuple(results)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self.future.exception(timeout)

    def cancel(self) -> bool:
        """Stop every task of the job on every device; False if it had already finished."""
        with self._lock:
            if self.future.done():
                return False
            self.future.cancel()
        self._cancel_tasks()
        return True

    def cancelled(self) -> bool:
        return self.future.cancelled()

    @property
    def progress(self) -> JobProgress:
        done = sum(t.future.done() and not t.future.cancelled() and t.future.exception() is None for t in self.tasks)
        return JobProgress(
            done=done,
            total=len(self.tasks),
            sent=sum(t.progress.sent for t in self.tasks),
            received=sum(t.progress.received for t in self.tasks),
            running={t.id: t.progress.device for t in self.tasks
                     if t.progress.state == "running" and t.progress.device is not None},
            failures=tuple(f for t in self.tasks for f in list(t.progress.failures)),
        )  # fmt: skip

    def __await__(self) -> Generator[Any, None, Any]:
        results = yield from asyncio.wrap_future(self.future).__await__()
        return results[0] if len(results) == 1 else tuple(results)

    def _cancel_tasks(self) -> None:
        for task in self.tasks:
            if not task.future.done():
                self._broker.cancel(task.id)

    def __repr__(self) -> str:
        if self.future.cancelled():
            state = "cancelled"
        elif self.future.done():
            error = self.future.exception()
            state = "done" if error is None else f"failed: {type(error).__name__}: {error}"
        else:
            state = f"running: {self.progress}"
        return f"<webnet job {self.id} {self.text!r} {state}>"


def _ended_badly(future: concurrent.futures.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
