"""A background job's results bound into the notebook on the kernel's own thread, never under a running cell.

A ``--bg`` job finishes on a thread of webnet's (see :mod:`.jobs`).  Binding its names from there
would change them while a cell runs: a cell reading ``C`` twice could see two values.  So a finished job's results
wait here and are bound on the kernel's thread when no cell is running:

- at once, through the kernel's event loop, when the kernel is idle (ipykernel runs one; the
  loop is the one running when the magic launched the job);
- else when the running cell ends (IPython's ``post_execute``);
- else just before the next cell starts (``pre_execute``): a plain IPython shell has no loop
  running between cells.

A cell that awaits (``await h``) is still a running cell: what finishes meanwhile is bound when it
ends.  ``h.result()`` and ``await h`` give the results at once either way.  Results are bound in
the order the jobs finished, all names of a job in one update.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

_binders: dict[int, Binder] = {}  # id(shell) -> its binder, while the extension is loaded
_lock = threading.Lock()


class Binder:
    """The results waiting to be bound into one shell's namespace, and the hooks that bind them."""

    def __init__(self, shell: Any) -> None:
        self._shell = shell
        self._waiting: deque[tuple[tuple[str, ...], list[Any]]] = deque()  # appended on job threads
        self._cells = 0  # cells running now (a cell may run another)
        shell.events.register("pre_execute", self._cell_starts)
        shell.events.register("post_execute", self._cell_ends)

    def later(self, names: Sequence[str]) -> Callable[[list[Any]], None]:
        """A function for a job's thread that has ``names`` bound to its results once no cell runs.

        Called on the kernel's thread (by the magic), so the loop it finds running is the kernel's.
        """
        names = tuple(names)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None

        def bind(results: list[Any]) -> None:
            if len(results) != len(names):  # checked here, so the job fails rather than the binding later
                raise ValueError(f"{len(results)} result(s) for {len(names)} name(s)")
            self._waiting.append((names, results))
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # (a closed loop: the next cell binds them)
                    loop.call_soon_threadsafe(self._when_idle)

        return bind

    def flush(self) -> None:
        """Bind everything waiting, in order (on the kernel's thread)."""
        while self._waiting:
            names, results = self._waiting.popleft()
            self._shell.user_ns.update(zip(names, results, strict=True))

    def close(self) -> None:
        """Stop listening to the shell, binding what waits (the extension is being unloaded)."""
        self._shell.events.unregister("pre_execute", self._cell_starts)
        self._shell.events.unregister("post_execute", self._cell_ends)
        self.flush()

    def _when_idle(self) -> None:
        if not self._cells:
            self.flush()

    def _cell_starts(self) -> None:
        if not self._cells:
            self.flush()
        self._cells += 1

    def _cell_ends(self) -> None:
        # (IPython sends post_execute for an empty cell without pre_execute: never below zero)
        self._cells = max(0, self._cells - 1)
        if not self._cells:
            self.flush()


def binder(shell: Any) -> Binder:
    """``shell``'s binder, made (and hooked into its events) on first use."""
    with _lock:
        found = _binders.get(id(shell))
        if found is None:
            found = _binders[id(shell)] = Binder(shell)
        return found


def detach(shell: Any) -> None:
    """Unhook ``shell``'s binder, if it has one, binding what waits."""
    with _lock:
        found = _binders.pop(id(shell), None)
    if found is not None:
        found.close()
