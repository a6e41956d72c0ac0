"""Many items through one computation: ``session.map``, results in order as they arrive.

Each item is its own job, so the fleet works on several at once: a device holds a few
(its next item's data arrives while it computes the current one), and over a fleet
each item goes to the device that would finish it first, so faster devices take more.
The notebook keeps at most ``in_flight`` items launched and not yet handed back, which
bounds the memory a long stream takes here and on the devices; a slot freed by one
result is refilled at once, before the caller sees that result.

::

    for y in session.map("relu(X @ W)", batches, namespace={"W": W}):   # X is each item
        ...
    ys = list(session.map(lambda x: net(x), batches))   # a function that builds the graph

A stream shows one progress bar for all its items, stops everything on Ctrl-C, and can be
cancelled (``stream.cancel()``, or leaving a ``with`` block), after which it yields no more.
An item that fails raises its error at its place in the order, after the results before it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..broker.link import MAX_DEPTH
from ..errors import BrokerStopped, DtypeError, JobTimeout, NoDeviceError
from ..ops import OPS, Graph, Node
from ..ops.compiler import ContentKeys
from ..ops.dtypes import conversion_note, to_wire
from .expressions import ExpressionError, namespace_resolver, parse
from .jobs import Job, JobProgress
from .progress import ProgressBar

if TYPE_CHECKING:
    from .session import Session

#: What builds one item's computation: the item in, the graph's output node(s) out.
Builder = Callable[[Any], "Node | Sequence[Node]"]
#: One item's graph outputs, and the arrays that are the item's own (sent once, never kept).
Built = tuple[list[Node], list[np.ndarray]]
#: Seconds between checks while waiting: bounds how late a Ctrl-C or a timeout is seen.
POLL = 0.1
#: Items in flight per usable device when not given: twice what a device may hold, so a slot a
#: device frees is filled from the broker's queue at once rather than after a trip to the notebook.
IN_FLIGHT_PER_DEVICE = 2 * MAX_DEPTH


@dataclass(frozen=True)
class StreamProgress(JobProgress):
    """A stream's progress: items handed back of those known, and how many are in flight."""

    in_flight: int = 0
    known: bool = True  # whether ``total`` is the number of items (False: items come from an iterator)

    def __str__(self) -> str:
        total = self.total if self.known else "?"
        text = f"{self.done}/{total} items, {self.in_flight} in flight"
        text += f", {_megabytes(self.sent)} sent, {_megabytes(self.received)} received"
        if self.running:
            text += "; on " + ", ".join(sorted(set(self.running.values())))
        if self.failures:
            text += f"; {len(self.failures)} retried"
        return text


class Stream:
    """The results of one computation on each item, in item order, as an iterator.

    Parameters
    ----------
    session
        The running session whose fleet computes.
    computation
        An expression such as ``"relu(X @ W)"``, or a function that takes an item and returns
        the output node(s) of its graph (see :func:`webnet_magic.ops.call` and
        :class:`~webnet_magic.ops.Graph`).
    items
        Anything iterable; it is read lazily, ``in_flight`` items ahead of the caller.  For an
        expression, an item is a mapping of names to arrays, or one array bound to ``over``
        (by default the one name of the expression that ``namespace`` does not define).
    namespace
        Arrays every item shares (weights); sent to each device once, then kept there.
    in_flight
        At most this many items launched and not yet handed back (default: 8 per usable device).
    timeout
        Seconds to wait for the next result before cancelling the stream (the session's if None).
    progress_after
        Show a progress bar once the stream has run this long, in a notebook (the session's if None).
    launch
        Options for :meth:`Session.launch <webnet_magic.client.session.Session.launch>`:
        ``devices``, ``verify``, ``wire`` (each item runs whole on one device: no sharding).
    """

    def __init__(
        self,
        session: Session,
        computation: str | Builder,
        items: Iterable[Any],
        *,
        namespace: Mapping[str, Any] | None = None,
        over: str | None = None,
        in_flight: int | None = None,
        timeout: float | None = None,
        progress_after: float | None = None,
        on_wait: Callable[[str], None] | None = None,
        **launch: Any,
    ) -> None:
        if "shard" in launch:
            raise TypeError("map runs each item whole on one device; 'shard' is not an option of map")
        self._session = session
        self._build = _builder(computation, namespace or {}, over)
        self._total = len(items) if isinstance(items, Sequence) else None
        self._items: Iterator[Any] = iter(items)
        self._in_flight = _in_flight(session, in_flight)
        self._timeout = session.config.timeout if timeout is None else timeout
        if on_wait is None:
            from .session import _print_waiting

            on_wait = _print_waiting
        self._on_wait = on_wait
        self._launch = launch
        self._pending: deque[Job | BaseException] = deque()  # in item order; an item that could not launch
        self._done = 0
        self._sent = self._received = 0
        self._failures: list[str] = []
        self._exhausted = False
        self._cancelled = False
        label = computation if isinstance(computation, str) else getattr(computation, "__name__", "function")
        after = session.config.progress_after if progress_after is None else progress_after
        self._bar = ProgressBar(f"map {label}", after)

    # -- the iterator ------------------------------------------------------------------------

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        if self._cancelled:
            raise StopIteration
        self._fill()
        if not self._pending:
            self._bar.close(self.progress, f"done: {self.progress}")
            raise StopIteration
        head = self._pending[0]
        try:
            if isinstance(head, BaseException):
                raise head
            results = self._wait(head)
        except BaseException as exc:
            self._stop(f"failed: {type(exc).__name__}" if not isinstance(exc, KeyboardInterrupt) else "interrupted")
            raise
        self._pending.popleft()
        self._done += 1
        progress = head.progress
        self._sent, self._received = self._sent + progress.sent, self._received + progress.received
        self._failures += progress.failures
        self._fill()  # the freed slot goes to the next item before the caller works on this result
        return results[0] if len(results) == 1 else tuple(results)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    # -- the handle --------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop: items in flight are cancelled on their devices, nothing more is launched or yielded."""
        if not self._cancelled:
            self._stop("cancelled")

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def progress(self) -> StreamProgress:
        jobs = [j for j in list(self._pending) if isinstance(j, Job)]  # (a copy: cancel may come from a thread)
        now = [j.progress for j in jobs]
        known = self._total is not None
        return StreamProgress(
            done=self._done,
            total=self._total if self._total is not None else self._done + len(self._pending),
            sent=self._sent + sum(p.sent for p in now),
            received=self._received + sum(p.received for p in now),
            running={k: v for p in now for k, v in p.running.items()},
            failures=(*self._failures, *(f for p in now for f in p.failures)),
            in_flight=len(self._pending),
            known=known,
        )

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else str(self.progress)
        return f"<webnet stream {self._bar.label!r} {state}>"

    # -- inside ------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Launch items until ``in_flight`` are out or there are no more."""
        while not self._exhausted and len(self._pending) < self._in_flight:
            try:
                item = next(self._items)
            except StopIteration:
                self._exhausted = True
                return
            try:
                outputs, once = self._build(item)
                keys = self._launch.get("keys") or ContentKeys()
                keys.send_once(once)  # items travel unkeyed and are not kept: weights stay cached
                job = self._session.launch(outputs, shard="off", **{**self._launch, "keys": keys})
            except Exception as exc:  # raised at this item's place, after the results before it
                self._pending.append(exc)
                self._exhausted = True
                return
            self._pending.append(job)

    def _wait(self, job: Job) -> list[np.ndarray]:
        """The head job's results; a timeout with no result cancels the stream."""
        deadline = time.monotonic() + self._timeout
        told = False
        while True:
            try:
                return job.future.result(POLL)
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                raise BrokerStopped(f"item {self._done} of the stream (job {job.id}) was cancelled") from None
            self._bar.update(self.progress)
            usable = [r for r in self._session.records() if r.usable]
            if not usable and not told:
                self._on_wait(self._session._waiting_text())
                told = True
            if time.monotonic() > deadline:
                if job.done():
                    continue
                if not usable:
                    raise NoDeviceError(
                        f"no WebGPU device connected within {self._timeout:g} s. Open {self._session.url} on a "
                        f"device with WebGPU, or run: python -m webnet_magic.worker '{self._session.local_url}'"
                    )
                raise JobTimeout(
                    f"item {self._done} of the stream (job {job.id}) did not finish within {self._timeout:g} s; "
                    f"the stream was cancelled; allow longer with timeout="
                )

    def _stop(self, final: str) -> None:
        self._cancelled = True
        for job in list(self._pending):
            if isinstance(job, Job):
                job.cancel()
        self._bar.close(self.progress, final)


def _in_flight(session: Session, given: int | None) -> int:
    if given is None:
        usable = [r for r in session.records() if r.usable]
        return IN_FLIGHT_PER_DEVICE * max(1, len(usable))
    if isinstance(given, bool) or not isinstance(given, int) or given < 1:
        raise ValueError(f"in_flight must be a positive number of items, not {given!r}")
    return given


def _builder(computation: str | Builder, namespace: Mapping[str, Any], over: str | None) -> Callable[[Any], Built]:
    """One item -> its graph's outputs and its own arrays, for an expression or a function."""
    if callable(computation):

        def built(item: Any) -> Built:
            outputs = computation(item)
            nodes = [outputs] if isinstance(outputs, Node) else list(outputs) if isinstance(outputs, Sequence) else []
            if not nodes or not all(isinstance(n, Node) for n in nodes):
                raise TypeError(
                    f"map's function must return the output node(s) of a graph (webnet_magic.ops.call, Graph), "
                    f"not {type(outputs).__name__}"
                )
            return nodes, _arrays(item)

        return built
    if not isinstance(computation, str):
        raise TypeError(f"map takes an expression or a function that builds a graph, not {type(computation).__name__}")
    name = over

    def parsed(item: Any) -> Built:
        nonlocal name
        if isinstance(item, Mapping):
            names = dict(item)
        else:
            name = name or _item_name(computation, namespace)
            names = {name: item}
        names = _converted(names)
        outputs = parse(computation, Graph(), namespace_resolver({**namespace, **names}))
        return outputs, _arrays(names)

    return parsed


def _converted(names: dict[str, Any]) -> dict[str, Any]:
    """The item's arrays as they will travel (float64 as float32, ...), converted here and said once.

    Converted in the graph instead, each would be a new array that cannot be told from a weight.
    An array that cannot travel is left for the graph to refuse, if the expression uses it.
    """
    from .session import warn_conversions

    leaves = []
    for key, value in names.items():
        if isinstance(value, np.ndarray):
            try:
                leaves.append(to_wire(key, value))
            except DtypeError:
                continue
            names[key] = leaves[-1].array
    warn_conversions(conversion_note(leaves))
    return names


def _arrays(item: Any) -> list[np.ndarray]:
    """The arrays an item holds: itself, or those among its values (a dict) or elements (a tuple)."""
    if isinstance(item, np.ndarray):
        return [item]
    values = item.values() if isinstance(item, Mapping) else item if isinstance(item, list | tuple) else ()
    return [v for v in values if isinstance(v, np.ndarray)]


def _item_name(expression: str, namespace: Mapping[str, Any]) -> str:
    """The one name of ``expression`` that ``namespace`` does not define: where each item goes."""
    try:
        tree = ast.parse(expression.strip(), mode="exec")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} in {expression.strip()!r}") from None
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name)]
    bound = {n.id for n in names if isinstance(n.ctx, ast.Store)}  # a cell's own assignments
    free = {n.id for n in names if isinstance(n.ctx, ast.Load)} - bound - set(namespace) - (called & set(OPS))
    if len(free) != 1:
        which = ", ".join(sorted(free)) or "none"
        raise ExpressionError(
            f"map cannot tell which name of {expression!r} each item is (names not in namespace: {which}); "
            f"pass over='NAME', or give each item as a dict of names"
        )
    return free.pop()


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"
