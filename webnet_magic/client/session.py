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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..broker.placement import shard_weights
from ..broker.records import DeviceRecord, DeviceState
from ..broker.thread import BrokerThread
from ..config import DEFAULTS, Config
from ..errors import BrokerStopped, DeviceLimitError, DeviceLost, JobTimeout, NoDeviceError
from ..ops import Graph, Node, Plan, call, compile_graph, evaluate
from ..ops.compiler import CACHE_MIN_BYTES, ContentKeys, content_key, parallelism
from ..ops.dtypes import conversion_note, to_wire
from ..ops.graph import topological
from ..ops.split import buffer_limit, shardable, sized_for, split
from ..ops.verify import checker
from ..program import Program
from ..tunnel import expose
from ..worker.launch import LocalWorker, launch
from ..worker.native import split_token
from .devices import DeviceTable
from .expressions import namespace_resolver, parse
from .jobs import Assemble, Job
from .progress import ProgressBar

if TYPE_CHECKING:
    from .stream import Stream

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
    config, settings
        The session's settings (:class:`~webnet_magic.config.Config`: heartbeat, silence limit,
        lease, attempts, calibration, pipelining depth, timeouts, ...): ``config`` (the defaults
        if None) with any of its fields given as keywords, e.g. ``Session(heartbeat=1.0)``.
    tunnel, authtoken, lan
        How a phone reaches the broker (see :func:`webnet_magic.tunnel.expose`): ``tunnel``
        is ``"auto"`` (ngrok in Colab and Kaggle when an authtoken is found), ``"ngrok"`` or
        ``"off"``; ``lan=True`` (or an address) serves https on the local network instead.
        If a tunnel cannot be opened the broker still serves this machine and
        ``reach.problem`` says why.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: Config | None = None,
        tunnel: str = "auto",
        authtoken: str | None = None,
        lan: bool | str = False,
        **settings: Any,
    ) -> None:
        self.config = (config or DEFAULTS).updated(**settings)  # checked before any thread or port exists
        self.broker = BrokerThread(host, port, config=self.config).start()
        try:
            self.reach = expose(self.broker, tunnel=tunnel, authtoken=authtoken, lan=lan)
        except BaseException:
            self.broker.stop()
            raise
        self._panel: Any = None
        self._local_workers: list[LocalWorker] = []
        self._pinned: dict[str, str] = {}  # name -> content key, for put / free

    @property
    def url(self) -> str:
        """The worker URL with its token, for a phone: the tunnel's or the LAN's when there is one."""
        return self.reach.url

    @property
    def local_url(self) -> str:
        """The worker URL on this machine (127.0.0.1), which local workers use."""
        return self.broker.url

    @property
    def running(self) -> bool:
        return self.broker.running

    def devices(self) -> list[dict[str, Any]]:
        """A snapshot of the connected devices (id, name, adapter, state, jobs done, ...), shown as a table."""
        return DeviceTable(self.broker.devices() if self.running else [])

    def records(self) -> list[DeviceRecord]:
        """The connected devices, typed (:class:`~webnet_magic.broker.records.DeviceRecord`): what to decide from."""
        return self.broker.records() if self.running else []

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
        worker = launch(self.local_url, kind)
        self._local_workers.append(worker)
        return worker

    def wait_for_devices(self, count: int = 1, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until ``count`` devices are ready for jobs; returns them.

        Ready means connected with WebGPU, past the short calibration run every device does
        on joining (so its speed is known and its first figures are not the calibration's),
        and not banned.  A local worker that dies meanwhile (no GPU adapter, no display, ...) is reported
        at once with its own last words, rather than as a timeout (``timeout``: the session's if None).
        """
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            ready = [r for r in self.records() if r.ready]
            if len(ready) >= count:
                return DeviceTable([r.display() for r in ready])
            for worker in self._local_workers:
                if worker.process.poll() is not None:
                    self._local_workers.remove(worker)
                    raise NoDeviceError(f"the local {worker.kind} worker exited: {worker.last_words()}")
            if time.monotonic() > deadline:
                raise NoDeviceError(f"{len(ready)} of {count} device(s) ready after {timeout:g} s")
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
        """Close every worker connection, fail pending jobs, free the port, close the tunnel, stop local workers.

        The tunnel closes last, so a phone behind it hears that the notebook stopped (and stops
        reconnecting) rather than seeing its link drop.
        """
        self.broker.stop()
        self.reach.close()
        for worker in self._local_workers:
            worker.stop()
        self._local_workers.clear()
        if self._panel is not None:
            self._panel.stopped()

    # -- computing ---------------------------------------------------------------------------

    def evaluate(self, expression: str, namespace: Mapping[str, Any] | None = None, **run: Any) -> Any:
        """An expression such as ``"relu(X @ W1 + b1) @ W2"``, run as one job on the fleet.

        Names are looked up in ``namespace``; intermediates stay on the device and only the
        result comes back (a tuple of results for a tuple expression).  Shapes and dtypes are
        checked before anything is sent.  ``run`` takes the options of :meth:`run_graph`.
        """
        outputs = parse(expression, Graph(), namespace_resolver(namespace or {}))
        results = self.run_graph(outputs, **run)
        return results[0] if len(results) == 1 else tuple(results)

    def submit(self, expression: str, namespace: Mapping[str, Any] | None = None, **launch: Any) -> Job:
        """Like :meth:`evaluate`, but returns a :class:`~webnet_magic.client.jobs.Job` at once
        (``.result()``, ``.done()``, ``.cancel()``, ``.progress``, ``await``); ``launch`` as for :meth:`launch`."""
        return self.launch(parse(expression, Graph(), namespace_resolver(namespace or {})), **launch)

    def map(
        self, computation: str | Callable[[Any], Node | Sequence[Node]], items: Iterable[Any], **options: Any
    ) -> Stream:
        """``computation`` on every item, one job each: an iterator of the results, in order, as they arrive.

        ``computation`` is an expression (each item a dict of names, or an array for its one free
        name) or a function that builds one item's graph.  At most ``in_flight`` items are out at
        once; devices hold several each and faster ones take more.  See
        :class:`~webnet_magic.client.stream.Stream` for the options (``namespace``, ``in_flight``,
        ``timeout``, ``devices``, ``wire``, ...), ``cancel()`` and ``progress``.
        """
        from .stream import Stream

        return Stream(self, computation, items, **options)

    def compute(
        self,
        op: str,
        *operands: Any,
        names: Sequence[str] | None = None,
        options: Mapping[str, Any] | None = None,
        **run: Any,
    ) -> np.ndarray:
        """One op on arrays, e.g. ``compute("sum", X, options={"axis": 0})``; ``run`` as for :meth:`run_graph`."""
        return self.run_graph([call(op, *operands, names=names, **(options or {}))], **run)[0]

    def matmul(self, a: Any, b: Any, **run: Any) -> np.ndarray:
        """``a @ b`` on the fleet, in float32; ``run`` as for :meth:`run_graph`."""
        return self.compute("matmul", a, b, names=("a", "b"), **run)

    def run_graph(
        self,
        outputs: Sequence[Node],
        *,
        timeout: float | None = None,
        local: bool = False,
        on_wait: Callable[[str], None] = _print_waiting,
        progress_after: float | None = None,
        **launch: Any,
    ) -> list[np.ndarray]:
        """Run ``outputs`` on the fleet and block until the results are back (Ctrl-C cancels).

        ``launch`` takes the options of :meth:`launch` (``devices``, ``shard``, ``verify``,
        ``wire``).  ``local=True`` computes with numpy here instead, with the same conversions.
        Without a device, ``on_wait`` is told once where to open one, and
        :class:`~webnet_magic.errors.NoDeviceError` is raised at ``timeout``.  A job still
        running after ``progress_after`` seconds shows a progress bar in a notebook.  Both are
        the session's (:attr:`config`) when None.
        """
        if local:
            return run_local(outputs)
        return self.wait(self.launch(outputs, **launch), timeout, on_wait=on_wait, progress_after=progress_after)

    def launch(
        self,
        outputs: Sequence[Node],
        *,
        devices: str | Sequence[str] | None = None,
        shard: str | int = "auto",
        verify: bool = False,
        wire: str = "f32",
        bind: Callable[[list[np.ndarray]], None] | None = None,
        keys: ContentKeys | None = None,
    ) -> Job:
        """Compile ``outputs``, cut them into shards and blocks, and submit them; returns at once.

        ``devices`` (ids, or ``"all"``) limits where the job runs.  ``shard`` is ``"auto"``
        (a large job is cut over every device it may use, in proportion to their measured
        speeds), a number of shards, or ``"off"``; work too large for a device's buffers is cut
        to fit in any case.  ``verify=True`` checks every shard's result here (Freivalds' test
        for a matmul, a sampled recomputation otherwise); a device that fails is banned for the
        session and the shard reruns elsewhere.  ``wire="f16"`` sends float data as float16 both
        ways: half the bytes, at float16's precision (about 3 significant digits) and range.
        ``bind`` is called with the results once all have arrived and been checked.  ``keys`` hashes the
        inputs (a model passes its own, which knows its weights: see :class:`webnet_magic.models.Model`).
        """
        if not self.running:
            raise BrokerStopped("the webnet broker is not running; start it with %webnet start")
        allowed = _device_set(devices)
        keys = keys or ContentKeys()  # the whole plan and every shard share their inputs' hashes
        fleet = [r for r in self.records() if r.usable and (allowed is None or r.id in allowed)]
        plan = compile_graph(outputs, wire, keys, parallelism(max(fleet, key=_speed, default=None)))
        warn_conversions(plan.note)
        if wire == "f16":
            warn_conversions("webnet --wire f16: float data travels as float16 (about 3 significant digits)")
        sized = sized_for(fleet)  # a device that caps its buffers, or is calibrating, shrinks no one's work
        limit = min((buffer_limit(r.limits) for r in sized), default=buffer_limit({}))
        targets = _targets(outputs, plan, sized, shard)
        if len(targets) == 1 and plan.program.largest_buffer <= limit:
            pieces = [(plan, 0)]
            assemble: Assemble = lambda results: plan.finish(results[0])  # noqa: E731
        elif len(outputs) == 1:
            moved = plan.program.input_bytes + plan.program.output_bytes  # held work and links count in the sizes
            cut = split(outputs[0], limit, wire, shard_weights(targets, plan.program.work, moved), keys)
            pieces = [(p.plan, p.shard) for p in cut.pieces]
            assemble = lambda results: [  # noqa: E731
                cut.assemble([p.plan.finish(r)[0] for p, r in zip(cut.pieces, results, strict=True)])
            ]
        else:
            raise DeviceLimitError(
                f"this job needs a {plan.program.largest_buffer}-byte buffer, above the device's buffer limit of "
                f"{limit}; ask for one result at a time so it can be split"
            )
        job_id = self.broker.new_job_id()
        tasks = []
        for i, (part, shard) in enumerate(pieces, 1):
            target = targets[shard] if len(targets) > 1 else None
            tasks.append(
                self.broker.submit(
                    part.program,
                    task_id=job_id if len(pieces) == 1 else f"{job_id}.{i}",
                    devices=allowed,
                    prefer=target.id if target else None,
                    check=checker(part, wire) if verify else None,
                    group=job_id,
                    shards=len(pieces),
                )
            )
        text = ", ".join(n.text for n in outputs)
        return Job(self.broker, job_id, tasks, assemble, text=text, bind=bind)

    def wait(
        self,
        job: Job,
        timeout: float | None = None,
        *,
        on_wait: Callable[[str], None] = _print_waiting,
        progress_after: float | None = None,
    ) -> list[np.ndarray]:
        """Block until ``job`` is done and return its results; Ctrl-C or the timeout cancels it."""
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        after = self.config.progress_after if progress_after is None else progress_after
        bar, told = ProgressBar(f"{job.id} {job.text}", after), False
        try:
            while True:
                try:
                    results = job.future.result(POLL)
                except concurrent.futures.TimeoutError:
                    pass
                except concurrent.futures.CancelledError:
                    bar.close(job.progress, "cancelled")
                    raise BrokerStopped(f"job {job.id} was cancelled") from None
                except BaseException as exc:
                    bar.close(job.progress, f"failed: {type(exc).__name__}")
                    raise
                else:
                    bar.close(job.progress, f"done: {job.progress}")
                    return results
                bar.update(job.progress)
                usable = [r for r in self.records() if r.usable]
                if not usable and not told:
                    on_wait(self._waiting_text())
                    told = True
                if time.monotonic() > deadline:
                    if not job.cancel():  # it finished just now
                        continue
                    bar.close(job.progress, "timed out")
                    if not usable and job.progress.failures:
                        raise _lost(job, timeout, split_token(self.url)[0])
                    if not usable:
                        raise NoDeviceError(
                            f"no WebGPU device connected within {timeout:g} s. Open the worker link "
                            f"({split_token(self.url)[0]}; %webnet url shows the link with its token) on a device "
                            "with WebGPU, or run: python -m webnet_magic.worker LINK"
                        )
                    failures = job.progress.failures
                    history = f" (failed attempts: {'; '.join(failures)})" if failures else ""
                    raise JobTimeout(
                        f"job {job.id} did not finish within {timeout:g} s and was cancelled{history}; "
                        f"allow longer with --timeout"
                    )
        except KeyboardInterrupt:
            job.cancel()
            bar.close(job.progress, "interrupted")
            raise

    def run_model(self, model: Any, bound: Mapping[str, np.ndarray], *, timeout: float | None = None,
                  progress_after: float | None = None, **launch: Any) -> list[np.ndarray]:  # fmt: skip
        """A loaded model on checked inputs (see :meth:`webnet_magic.models.Model.__call__`); blocks."""
        job = self.submit_model(model, bound, **launch)
        return self.wait(job, timeout, progress_after=progress_after)

    def submit_model(self, model: Any, bound: Mapping[str, np.ndarray], **launch: Any) -> Job:
        """A model call as a :class:`Job`, its batch cut over devices (see :mod:`webnet_magic.models.run`)."""
        from ..models.run import launch_model

        if not self.running:
            raise BrokerStopped("the webnet broker is not running; start it with %webnet start")
        return launch_model(self, model, bound, **launch)

    def run(self, program: Program, *, timeout: float | None = None, device: str | None = None) -> list[np.ndarray]:
        """One prepared program on a device (a custom kernel's compile check); Ctrl-C cancels it."""
        job_id = self.broker.new_job_id()
        task = self.broker.submit(program, task_id=job_id, devices=_device_set(device), group=job_id)
        return self.wait(Job(self.broker, job_id, [task], lambda results: results[0]), timeout)

    def _timeout(self, timeout: float | None) -> float:
        """``timeout`` checked, or the session's when None."""
        return self.config.timeout if timeout is None else _checked_timeout(timeout)

    def _waiting_text(self) -> str:
        where = split_token(self.url)[0]
        lines = [f"webnet: waiting for a device at {where} (%webnet url shows the link with its token)"]
        lines.append("        Open that link in a browser with WebGPU, or run: python -m webnet_magic.worker LINK")
        lines += [
            f"        device {r.id} ({r.name}) joined without WebGPU: {r.reason}"
            for r in self.records()
            if r.state is DeviceState.NO_WEBGPU
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<webnet Session {state} at {self.url}, {len(self.devices())} device(s)>"


def _lost(job: Job, timeout: float, where: str) -> DeviceLost:
    """Why a job whose devices were lost ended at its timeout: which ones, and that it was retried."""
    failures = job.progress.failures  # "d1 (Chrome on Android): disconnected", oldest first
    lost = tuple(dict.fromkeys(f.split(" ", 1)[0] for f in failures))
    who = "its device" if len(lost) == 1 else f"{len(lost)} devices"
    retries = f"{len(failures)} retr{'y' if len(failures) == 1 else 'ies'}"
    return DeviceLost(
        f"job {job.id} lost {who} ({'; '.join(failures)}) and was queued again ({retries}), but no device took it "
        f"within {timeout:g} s, so it was cancelled. Keep the worker page open (it reconnects by itself) or open "
        f"the worker link ({where}) on another device",
        devices=lost,
        failures=failures,
    )


def _checked_timeout(timeout: float) -> float:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def _device_set(devices: str | Sequence[str] | None) -> frozenset[str] | None:
    """``--devices`` as a set of ids; None for any device (``None`` or ``"all"``)."""
    if devices is None or devices == "all":
        return None
    ids = [d.strip() for d in devices.split(",")] if isinstance(devices, str) else list(devices)
    if not ids or not all(ids):
        raise ValueError(f"devices must be ids such as d1,d2 or 'all', not {devices!r}")
    return frozenset(ids)


#: A job with less work than this (flops) is not worth sharding automatically: each shard costs a
#: round trip, and a phone's link latency is tens of milliseconds.
AUTO_SHARD_WORK = 2e8
#: Nor is an elementwise job with a smaller result (bytes).
AUTO_SHARD_BYTES = 16 << 20


def _targets(
    outputs: Sequence[Node], plan: Plan, fleet: Sequence[DeviceRecord], shard: str | int
) -> list[DeviceRecord | None]:
    """The device each shard is sized for (fastest first, round robin); ``[None]`` for one unsized job."""
    if shard == "off" or len(outputs) != 1 or not shardable(outputs[0]):
        return [None]
    if shard == "auto":
        big = plan.program.work >= AUTO_SHARD_WORK or plan.program.output_bytes >= AUTO_SHARD_BYTES
        count = len(fleet) if big else 1
    else:
        count = _shard_count(shard)
    if count <= 1:
        return [None]
    ranked = sorted(fleet, key=_speed, reverse=True)
    return [ranked[i % len(ranked)] for i in range(count)] if ranked else [None] * count


def _shard_count(shard: str | int) -> int:
    try:
        count = int(shard)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"shard must be 'auto', 'off' or a positive number of shards, not {shard!r}")
    return count


def _speed(device: DeviceRecord | None) -> float:
    """A device's measured speed in flop/s for sizing its shard (1 GF/s when none is known yet: equal shares)."""
    return device.speed if device is not None and device.speed else 1e9


def warn_conversions(note: str | None) -> None:
    """The one short dtype-conversion warning of a job, shown once per distinct message."""
    if note:  # under a short name rather than this file's
        warnings.warn_explicit(note, PrecisionWarning, "<webnet>", 1, registry=_warned)


#: The keywords of :func:`webnet_magic.run` that are options rather than arrays.
RUN_OPTIONS = ("timeout", "devices", "shard", "verify", "wire")


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
