"""One job over several real workers from the notebook: shards, --devices, --verify, --bg, threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from webnet_magic.broker.fleet import Attempt, Device, Task
from webnet_magic.broker.placement import Placement, shard_weights
from webnet_magic.broker.records import DeviceRecord
from webnet_magic.client import session as sessions
from webnet_magic.client.session import Session, _targets
from webnet_magic.ops import call, compile_graph
from webnet_magic.testing.linkrelay import LOOPBACK, LinkRelay

from .conftest import Workers, wait_until
from .peers import Peer, sly


@pytest.fixture
def link(shell: InteractiveShell) -> Iterator[LinkRelay]:
    """The magic's session (``%webnet start``) and a relay to it on loopback, which a test may hold."""
    assert shell.run_cell("%webnet start").success
    session = sessions.current()
    assert session is not None
    with LinkRelay(session.broker.port, LOOPBACK) as relay:
        yield relay


@pytest.fixture
def fleet(shell: InteractiveShell, workers: Workers, link: LinkRelay) -> Iterator[Session]:
    """The magic's session with two calibrated native workers behind ``link``, d1 eight times slower than d2
    (a margin over how much a loaded machine moves one calibration run: d2 once measured 3.5 times slow)."""
    session = sessions.current()
    assert session is not None
    workers.start(link.url(session.url), "--name", "slow", "--slowdown", "8")
    session.wait_for_devices(1, 60)  # past its calibration's check, not just timed (its gflops show first)
    workers.start(link.url(session.url), "--name", "fast")
    session.wait_for_devices(2, 60)
    shell.run_cell("import numpy as np\nrng = np.random.default_rng(0)")
    shell.run_cell("A = rng.standard_normal((640, 384), np.float32)\nB = rng.standard_normal((384, 512), np.float32)")
    yield session


def jobs_done(session: Session) -> dict[str, int]:
    return {d["id"]: d["jobs_done"] for d in session.devices()}


def test_a_large_matmul_is_shared_by_both_devices(shell: InteractiveShell, fleet: Session) -> None:
    speeds = {d["id"]: d["gflops"] for d in fleet.devices()}
    assert speeds["d2"] > speeds["d1"]  # the throttled worker measured slower
    result = shell.run_cell("%webnet A @ B -> C --verify")
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-4, atol=1e-4)
    assert jobs_done(fleet) == {"d1": 1, "d2": 1}


def test_devices_and_shard_off_keep_a_job_in_one_place(shell: InteractiveShell, fleet: Session) -> None:
    assert shell.run_cell("%webnet A @ B -> C --devices d1").success
    assert jobs_done(fleet) == {"d1": 1, "d2": 0}
    assert shell.run_cell("%webnet A @ B -> C --shard off").success
    assert sum(jobs_done(fleet).values()) == 2
    result = shell.run_cell("%webnet A @ B -> C --devices d7")
    assert "no device 'd7' is connected" in str(result.error_in_exec)


def test_shards_are_sized_by_speed_fastest_first() -> None:
    """With speeds 4 and 1 GF/s, four shards go fast, slow, fast, slow."""
    node = call("matmul", np.ones((512, 64), np.float32), np.ones((64, 64), np.float32))
    plan = compile_graph([node])
    fleet = [DeviceRecord("d1", speed=1e9), DeviceRecord("d2", speed=4e9)]
    assert [d.id for d in _targets([node], plan, fleet, 4)] == ["d2", "d1", "d2", "d1"]  # type: ignore[union-attr]
    assert _targets([node], plan, fleet, "auto") == [None]  # 4 Mflop: not worth a round trip each
    assert _targets([node], plan, fleet, "off") == [None]


def test_shards_are_sized_for_each_devices_link_as_placement_counts_it() -> None:
    """Equal GPUs, one link ten times slower: that device gets a smaller share, and both end at once
    by the figures placement uses (compute, bytes at the link's rate, a round trip)."""
    fast = DeviceRecord("d1", speed=1e9, rate=100e6, round_trip=0.01)
    slow = replace(fast, id="d2", rate=10e6)
    work, nbytes = 1e9, 10_000_000
    a, b = shard_weights([fast, slow], work, nbytes)
    assert a > 1.5 * b and a + b == pytest.approx(work)
    ends = [d.round_trip + w / d.speed + nbytes * w / work / d.rate for d, w in ((fast, a), (slow, b))]
    assert ends[0] == pytest.approx(ends[1])
    assert shard_weights([fast, slow], work) == pytest.approx([work / 2, work / 2])  # no bytes: speeds alone


def device(name: str, speed: float, rate: float) -> Device:
    made = Device(name, name, "test", {}, {}, [], send=None, close=None)  # type: ignore[arg-type]
    made.speed, made.link.rate = speed, rate
    made.link.heard(0.005)
    return made


def test_a_shard_stays_on_the_idle_device_it_was_sized_for_and_leaves_a_busy_one() -> None:
    """The slow device's link measured at 1 MB/s (what a loaded machine's loopback can measure) makes
    the fast one, holding its own shard, look sooner: the shard still goes where it was sized to end
    with the others.  Once that device holds a second of other work, it goes to the fast one."""
    program = compile_graph([call("matmul", np.ones((128, 256), np.float32), np.ones((256, 256), np.float32))]).program
    slow, fast = device("d1", program.work / 0.1, 1e6), device("d2", 4 * program.work / 0.1, 1e9)
    placement = Placement({"d1": slow, "d2": fast}, depth=2)
    loop = asyncio.new_event_loop()
    try:
        task = Task("j1.2", program, loop.create_future(), prefer="d1")
        own = Task("j1.1", program, loop.create_future(), prefer="d2")
        fast.attempts.append(Attempt("j1.1~1", own, fast, time.monotonic(), 0.1))
        now = time.monotonic()
        assert placement.done_by(program, fast, now) - now < (placement.done_by(program, slow, now) - now) / 2
        assert placement.choose(task, [slow, fast]) is slow
        slow.attempts.append(Attempt("j0~1", own, slow, time.monotonic(), 1.0))
        assert placement.choose(task, [slow, fast]) is fast
    finally:
        loop.close()


def test_a_background_job_binds_when_done_and_is_awaitable(shell: InteractiveShell, fleet: Session) -> None:
    shell.run_cell("C = 'before'")
    result = shell.run_cell("h = %webnet A @ B -> C --bg")
    assert result.success, result.error_in_exec
    handle = shell.user_ns["h"]
    handle.result(60)
    assert handle.done() and handle.progress.done == handle.progress.total
    assert shell.user_ns["C"] == "before"  # a plain shell has no loop between cells: bound as the next one runs
    shell.run_cell("pass")
    np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-4, atol=1e-4)
    assert "done" in repr(handle)  # `await` on a handle: in test_kernel.py, under ipykernel's own loop


def test_cancelling_a_background_job_stops_its_shards_and_binds_nothing(
    shell: InteractiveShell, fleet: Session, link: LinkRelay
) -> None:
    """Cancelled while both shards' answers are on their way (held in the relay): the devices drop
    them when they arrive, and nothing is bound."""
    shell.run_cell("C = 'before'\nX = np.ones((256, 256), np.float32)")
    link.hold("up")
    handle = shell.run_cell("%webnet X @ X -> C --bg --shard 2").result
    wait_until(lambda: link.waiting("up") >= 256 * 256 * 4, 60, "both shards' answers")
    assert handle.cancel() and handle.cancelled()
    link.release("up")
    wait_until(lambda: all(d["state"] == "idle" for d in fleet.devices()), 60, "both devices to drop their shards")
    wait_until(lambda: all(t.future.done() for t in handle.tasks), 60, "both shards to end")  # as they would bind
    shell.run_cell("pass")  # where a finished job's names would be bound
    assert shell.user_ns["C"] == "before"
    assert fleet.broker.fleet()["jobs"] == []


def test_jobs_in_flight_hold_no_thread_each() -> None:
    """A job hears its tasks settle through their callbacks: launching one starts no thread (a thread's
    start waits for the GIL, up to 5 ms while the broker's thread reads a result); cancelled, each ends so."""
    session = Session(calibrate=False, tunnel="off")
    try:
        x = np.ones((4, 4), np.float32)
        before = set(threading.enumerate())
        jobs = [session.submit("X + 1", {"X": x}) for _ in range(4)]  # no device: they wait
        assert set(threading.enumerate()) - before == set()
        assert all(job.cancel() for job in jobs)
        wait_until(lambda: all(t.future.done() for job in jobs for t in job.tasks), 10, "the tasks to be cancelled")
        assert all(job.cancelled() for job in jobs) and session.broker.fleet()["jobs"] == []
    finally:
        session.stop()


def test_many_jobs_from_threads_run_at_once(fleet: Session) -> None:
    rng = np.random.default_rng(1)
    pairs = [(rng.random((96, 64), np.float32), rng.random((64, 80), np.float32)) for _ in range(8)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = fleet.matmul(*pairs[i], timeout=120)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(results[i], a @ b, rtol=1e-5)
    assert all(n > 0 for n in jobs_done(fleet).values())  # both devices took some


def test_verify_bans_a_device_that_returns_wrong_numbers(shell: InteractiveShell, fleet: Session) -> None:
    """A hand-written worker that passes calibration, then answers zeros, is caught by Freivalds' test;
    its shard reruns on a real device."""
    liar = Peer(fleet.broker, sly(), name="liar")
    try:
        fleet.wait_for_devices(3, 10)  # the liar past its calibration (its check too, not just timed)
        result = shell.run_cell("%webnet A @ B -> C --verify --shard 2 --devices d2,d3")
        assert result.success, result.error_in_exec
        np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-4, atol=1e-4)
        liar_state = {d["id"]: d for d in fleet.devices()}["d3"]
        assert liar_state["banned"] and "Freivalds" in liar_state["reason"]
        shell.run_cell("%webnet devices")
    finally:
        liar.stop()
