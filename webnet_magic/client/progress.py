"""The progress bar under a cell whose job runs for more than a moment.

Shown only in a Jupyter kernel (a terminal would print each update as a new line),
only once a job has run for ``after`` seconds (quick jobs stay quiet), and updated
in place through a display id at most a few times a second.  A job of one task has
nothing to count: its bar is indeterminate and its line shows the time elapsed.
"""

from __future__ import annotations

import html
import time

from .jobs import JobProgress

UPDATE_EVERY = 0.25  # seconds


class ProgressView:
    """What is displayed: an HTML ``<progress>`` bar, or one line of text where HTML is not shown."""

    def __init__(self, label: str, progress: JobProgress, elapsed: float, final: str = "") -> None:
        self.label, self.progress, self.elapsed, self.final = label, progress, elapsed, final

    def __repr__(self) -> str:
        return f"webnet {self.label}: {self.final or self.progress} ({self.elapsed:.1f} s)"

    def _repr_html_(self) -> str:
        p = self.progress
        # One task is done or not: a bar at 0/1 would only look frozen, so it is indeterminate (it moves).
        count = f'value="{p.done}" max="{p.total}" ' if p.total > 1 else ""
        bar = "" if self.final else f'<progress {count}style="width:12em"></progress> '
        text = html.escape(f"{self.label}: {self.final or p} ({self.elapsed:.1f} s)")
        return f'<div class="webnet-progress" style="font-family:monospace">{bar}webnet {text}</div>'


class ProgressBar:
    """Call :meth:`update` while waiting and :meth:`close` at the end; it shows itself when due."""

    def __init__(self, label: str, after: float = 1.0) -> None:
        self.label = label
        self.after = after
        self.started = time.monotonic()
        self._handle: object | None = None
        self._shown_at = 0.0
        self.enabled = _in_kernel()

    def update(self, progress: JobProgress) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.started < self.after or now - self._shown_at < UPDATE_EVERY:
            return
        self._show(ProgressView(self.label, progress, now - self.started))
        self._shown_at = now

    def close(self, progress: JobProgress, final: str) -> None:
        """Replace the bar (if it was shown) by a last line: done, failed or cancelled."""
        if self._handle is not None:
            self._show(ProgressView(self.label, progress, time.monotonic() - self.started, final))

    def _show(self, view: ProgressView) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(view, display_id=True)
        else:
            self._handle.update(view)  # type: ignore[attr-defined]


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel, where a display can be updated in place."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
