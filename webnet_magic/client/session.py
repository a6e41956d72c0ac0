"""The notebook's handle on its broker: start it once, run ops on devices, stop it.

The magics are a thin layer over this module, and so is the Python API
(``webnet_magic.start()``), so both take the same path to a device.  Calls
block the notebook thread on a ``concurrent.futures`` future in short waits,
which keeps Ctrl-C responsive and lets the session say, once, that it is
waiting for a device and where to open one.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..broker.thread import BrokerThread, JobHandle
from ..errors import BrokerStopped, DeviceLimitError, JobTimeout, NoDeviceError
from ..ops import Graph, Node, call, compile_graph, evaluate
from ..ops.compiler import CACHE_MIN_BYTES, content_key
from ..ops.dtypes import conversion_note, to_wire
from ..ops.graph import topological
from ..ops.split import buffer_limit, split
from ..program import Program
from ..worker.launch import LocalWorker, launch
from .expressions import namespace_resolver, parse

_warned: dict[Any, Any] = {}  # warnings registry: each conversion note is shown once
POLL = 0.1  # seconds between checks while waiting; bounds how late a Ctrl-C or timeout is seen


@dataclass(frozen=True)
class Pinned:
    """What :meth:`Session.put` did: the bytes as they travel, and which devices hold them."""

    nbytes: int
    devices: dict[str, bool]
    kept: bool  # False for an array too small to keep (it goes with every job)


class PrecisionWarning(UserWarning):
    """An operand was converted to float32 (WGSL has no float64)."""


def _print_waiting(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


class Session:
    """A broker running in a daemon thread of this process, and the calls a notebook makes on it.

    Parameters
    ----------
    host, port
        Where the broker listens.  ``127.0.0.1`` (the default) is reachable from this
        machine only; port 0 picks a free port.
    heartbeat, silence_limit
        Seconds between pings to each worker, and of silence after which a worker
        is declared lost (its running job then fails with :class:`~webnet_magic.errors.WorkerLost`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        heartbeat: float = 3.0,
        silence_limit: float = 30.0,
    ) -> None:
        self.broker = BrokerThread(host, port, heartbeat=heartbeat, silence_limit=silence_limit).start()
        self._panel: Any = None
        self._local_workers: list[LocalWorker] = []
        self._pinned: dict[str, str] = {}  # name -> content key, for put / free

    @property
    def url(self) -> str:
        """The worker URL with its token: open it on a device with WebGPU."""
        return self.broker.url

    @property
    def running(self) -> bool:
        return self.broker.running

    def devices(self) -> list[dict[str, Any]]:
        """A snapshot of the connected devices (id, name, adapter, state, jobs done, ...)."""
        return self.broker.devices() if self.running else []

    def panel(self) -> Any:
        """The anywidget showing the QR code and the live device panel (made on first use)."""
        if self._panel is None:
            from .widget import DevicePanel

            self._panel = DevicePanel(self)
        return self._panel

    def local_worker(self, kind: str = "auto") -> LocalWorker:
        """Start a worker on this machine (headless Chromium, else wgpu-py); stopped with the session.

        For a notebook with no phone at hand, and for demos and tests.
        """
        worker = launch(self.url, kind)
        self._local_workers.append(worker)
        return worker

    def wait_for_devices(self, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Block until ``count`` devices with WebGPU are connected; returns them.

        A local worker that dies meanwhile (no GPU adapter, no display, ...) is reported
        at once with its own last words, rather than as a timeout.
        """
        deadline = time.monotonic() + _checked_timeout(timeout)
        while True:
            usable = [d for d in self.devices() if d["state"] != "no WebGPU"]
            if len(usable) >= count:
                return usable
            for worker in self._local_workers:
                if worker.process.poll() is not None:
                    self._local_workers.remove(worker)
                    raise NoDeviceError(f"the local {worker.kind} worker exited: {worker.last_words()}")
            if time.monotonic() > deadline:
                raise NoDeviceError(f"{len(usable)} of {count} device(s) connected after {timeout:g} s")
            time.sleep(POLL)

    def put(self, name: str, value: Any) -> Pinned:
        """Keep ``value`` on every device (and devices that join later) until :meth:`free`.

        Jobs using the same array then send none of its bytes.  The answer says, per device id,
        whether it holds the array (one whose cache or limits are too small does not); arrays
        too small to be worth keeping (they go with every job anyway) are not sent.  Putting a
        name again replaces what it held.
        """
        leaf = to_wire(name, value)
        if leaf.array.nbytes < CACHE_MIN_BYTES:
            return Pinned(leaf.array.nbytes, {}, kept=False)
        key = content_key(leaf.array)
        held = self.broker.put(key, leaf.array)
        old, self._pinned[name] = self._pinned.get(name), key
        if old is not None and old not in self._pinned.values():
            self.broker.free(old)
        return Pinned(leaf.array.nbytes, held, kept=True)

    def free(self, name: str) -> None:
        """Let devices drop what :meth:`put` pinned under ``name`` (unless another name pins the same array)."""
        key = self._pinned.pop(name, None)
        if key is None:
            raise KeyError(f"nothing is pinned under {name!r}; pinned: {', '.join(self._pinned) or 'nothing'}")
        if key not in self._pinned.values():
            self.broker.free(key)

    @property
    def pinned(self) -> list[str]:
        return list(self._pinned)

    def stop(self) -> None:
        """Close every worker connection, fail pending jobs, free the port, stop local workers."""
        self.broker.stop()
        for worker in self._local_workers:
            worker.stop()
        self._local_workers.clear()
        if self._panel is not None:
            self._panel.stopped()

    # -- computing ---------------------------------------------------------------------------

    def evaluate(
        self,
        expression: str,
        namespace: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        device: str | None = None,
        local: bool = False,
        wire: str = "f32",
        on_wait: Callable[[str], None] = _print_waiting,
    ) -> Any:
        """An expression such as ``"relu(X @ W1 + b1) @ W2"``, run as one job on a device.

        Names are looked up in ``namespace``; intermediates stay on the device and only the
        result comes back (a tuple of results for a tuple expression).  Shapes and dtypes are
        checked before anything is sent.  ``local=True`` computes with numpy here instead,
        with the same conversions.  Without a device, ``on_wait`` is told once where to open
        one, and :class:`~webnet_magic.errors.NoDeviceError` is raised at ``timeout``.
        """
        outputs = parse(expression, Graph(), namespace_resolver(namespace or {}))
        results = self.run_graph(outputs, timeout=timeout, device=device, local=local, wire=wire, on_wait=on_wait)
        return results[0] if len(results) == 1 else tuple(results)

    def compute(
        self,
        op: str,
        *operands: Any,
        names: Sequence[str] | None = None,
        options: Mapping[str, Any] | None = None,
        **run: Any,
    ) -> np.ndarray:
        """One op on arrays, e.g. ``compute("sum", X, options={"axis": 0})``; ``run`` as for :meth:`evaluate`."""
        return self.run_graph([call(op, *operands, names=names, **(options or {}))], **run)[0]

    def matmul(self, a: Any, b: Any, **run: Any) -> np.ndarray:
        """``a @ b`` on a connected device, in float32; ``run`` as for :meth:`evaluate`."""
        return self.compute("matmul", a, b, names=("a", "b"), **run)

    def run_graph(
        self,
        outputs: Sequence[Node],
        *,
        timeout: float = 60.0,
        device: str | None = None,
        local: bool = False,
        wire: str = "f32",
        on_wait: Callable[[str], None] = _print_waiting,
    ) -> list[np.ndarray]:
        """Compile ``outputs`` into one program, run it, and return the results in order.

        ``wire="f16"`` sends float data as float16 both ways: half the bytes, at float16's
        precision (about 3 significant digits) and range (|x| <= 65504).
        """
        if local:
            return run_local(outputs)
        plan = compile_graph(outputs, wire)
        warn_conversions(plan.note)
        if wire == "f16":
            warn_conversions("webnet --wire f16: float data travels as float16 (about 3 significant digits)")
        limit = self._buffer_limit(device)
        if plan.program.largest_buffer <= limit:
            return plan.finish(self.run(plan.program, timeout=timeout, device=device, on_wait=on_wait))
        if len(outputs) != 1:
            raise DeviceLimitError(
                f"this job needs a {plan.program.largest_buffer}-byte buffer, above the device's buffer limit of "
                f"{limit}; ask for one result at a time so it can be split"
            )
        pieces = split(outputs[0], limit, wire)
        programs = [piece.plan.program for piece in pieces.pieces]
        results = self.run_many(programs, timeout=timeout, device=device, on_wait=on_wait)
        return [pieces.assemble([p.plan.finish(r)[0] for p, r in zip(pieces.pieces, results, strict=True)])]

    def _buffer_limit(self, device: str | None) -> int:
        """The largest buffer every device that may run the job binds (WebGPU's defaults if none is here yet)."""
        devices = [d for d in self.devices() if d["state"] != "no WebGPU" and device in (None, d["id"])]
        return min((buffer_limit(d["limits"]) for d in devices), default=buffer_limit({}))

    def run(
        self,
        program: Program,
        *,
        timeout: float,
        device: str | None = None,
        on_wait: Callable[[str], None] = _print_waiting,
    ) -> list[np.ndarray]:
        """Submit ``program`` and block until its outputs arrive; Ctrl-C cancels it."""
        return self.run_many([program], timeout=timeout, device=device, on_wait=on_wait)[0]

    def run_many(
        self,
        programs: Sequence[Program],
        *,
        timeout: float,
        device: str | None = None,
        on_wait: Callable[[str], None] = _print_waiting,
    ) -> list[list[np.ndarray]]:
        """Submit ``programs`` at once (devices share them) and wait for all; Ctrl-C or a failure cancels the rest."""
        if not self.running:
            raise BrokerStopped("the webnet broker is not running; start it with %webnet start")
        deadline = time.monotonic() + _checked_timeout(timeout)
        handles = [self.broker.submit(program, device) for program in programs]
        told = False
        try:
            while True:
                done, _ = concurrent.futures.wait([h.future for h in handles], POLL, concurrent.futures.FIRST_EXCEPTION)
                failed = [h for h in handles if h.future.done() and (h.future.cancelled() or h.future.exception())]
                if failed:
                    self._cancel(handles)
                    if failed[0].future.cancelled():
                        raise BrokerStopped(f"job {failed[0].id} was cancelled")
                    raise failed[0].future.exception()  # type: ignore[misc]
                if len(done) == len(handles):
                    return [h.future.result() for h in handles]
                usable = [d for d in self.devices() if d["state"] != "no WebGPU"]
                if not usable and not told:
                    on_wait(self._waiting_text())
                    told = True
                if time.monotonic() > deadline:
                    self._cancel(handles)
                    if all(h.future.done() and not h.future.cancelled() for h in handles):
                        return [h.future.result() for h in handles]  # they arrived just before the cancel
                    if not usable:
                        raise NoDeviceError(
                            f"no WebGPU device connected within {timeout:g} s. Open {self.url} on a device "
                            f"with WebGPU, or run: python -m webnet_magic.worker '{self.url}'"
                        )
                    unfinished = ", ".join(h.id for h in handles if not h.future.done())
                    raise JobTimeout(
                        f"job {unfinished} did not finish within {timeout:g} s and was cancelled; "
                        f"allow longer with --timeout"
                    )
        except KeyboardInterrupt:
            self._cancel(handles)
            raise

    def _cancel(self, handles: Sequence[JobHandle]) -> None:
        for handle in handles:
            if not handle.future.done():
                self.broker.cancel(handle.id)

    def _waiting_text(self) -> str:
        lines = [f"webnet: waiting for a device. Open {self.url} in a browser with WebGPU"]
        lines.append(f"        or run: python -m webnet_magic.worker '{self.url}'")
        lines += [
            f"        device {d['id']} ({d['name']}) joined without WebGPU: {d['reason']}"
            for d in self.devices()
            if d["state"] == "no WebGPU"
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<webnet Session {state} at {self.url}, {len(self.devices())} device(s)>"


def _checked_timeout(timeout: float) -> float:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def warn_conversions(note: str | None) -> None:
    """The one short dtype-conversion warning of a job, shown once per distinct message."""
    if note:  # under a short name rather than this file's
        warnings.warn_explicit(note, PrecisionWarning, "<webnet>", 1, registry=_warned)


def evaluate_expression(expression: str, namespace: Mapping[str, Any], *, local: bool = False, **run: Any) -> Any:
    """``expression`` on this process's session (or with numpy, ``local=True``, which needs none)."""
    if local:
        results = run_local(parse(expression, Graph(), namespace_resolver(namespace)))
        return results[0] if len(results) == 1 else tuple(results)
    session = current()
    if session is None:
        raise BrokerStopped("no webnet broker is running: call webnet_magic.start() (or pass local=True)")
    return session.evaluate(expression, namespace, **run)


def run_local(outputs: Sequence[Node]) -> list[np.ndarray]:
    """``outputs`` computed here with numpy, after the same checks and conversions as on a device."""
    leaves = [n.leaf for n in topological(outputs) if n.leaf is not None]
    warn_conversions(conversion_note(leaves))
    return evaluate(outputs)


# -- this process's session ----------------------------------------------------------------

_current: Session | None = None
_lock = threading.Lock()


def start(**options: Any) -> Session:
    """This process's running session, started with ``options`` if there is none."""
    global _current
    with _lock:
        if _current is None or not _current.running:
            _current = Session(**options)
        return _current


def current() -> Session | None:
    """The running session, if any."""
    return _current if _current is not None and _current.running else None


def stop() -> None:
    """Stop this process's session, if one runs."""
    global _current
    with _lock:
        if _current is not None:
            _current.stop()
            _current = None


atexit.register(stop)  # kernel shutdown: no thread or port left behind
