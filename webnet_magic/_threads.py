"""Blocking work off an asyncio loop, in threads that never hold up the process's exit; and the
notebook's few threads for work that numpy and hashlib do without the GIL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

#: Threads for slices of one array's work that run without the GIL (numpy's casts, hashlib's hashes); at most 8.
THREADS = max(1, min(8, os.cpu_count() or 1))


@cache
def gil_free_pool() -> ThreadPoolExecutor:
    """The shared threads for :data:`THREADS`-wide work on an array's slices (made on first use)."""
    return ThreadPoolExecutor(THREADS, thread_name_prefix="webnet-slices")


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread, awaited on the running loop.

    A GPU call or a large numpy check cannot be interrupted, and a process told to stop
    must not wait for one at exit (a ThreadPoolExecutor's workers would be joined).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="webnet-work", daemon=True).start()
    return await done


def run_with_deadline(fn: Callable[[], T], timeout: float, on_timeout: Callable[[], None]) -> T:
    """``fn()`` in a daemon thread, waited for at most ``timeout`` seconds from this thread.

    For library calls with no deadline of their own (pyngrok reads an agent's log until a line
    it wants).  On timeout ``on_timeout`` runs (it should make ``fn`` return, e.g. by killing
    the process it waits on) and TimeoutError is raised; ``fn``'s own error is re-raised here.
    """
    outcome: list[tuple[T | None, BaseException | None]] = []

    def work() -> None:
        try:
            outcome.append((fn(), None))
        except BaseException as exc:
            outcome.append((None, exc))

    thread = threading.Thread(target=work, name="webnet-deadline", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        on_timeout()
        raise TimeoutError(f"no answer within {timeout:g} s")
    result, error = outcome[0]
    if error is not None:
        raise error
    return result  # type: ignore[return-value]
