"""Jobs pipelined on a device, streams of items, and links like a phone's (a shaped relay on loopback).

The overlap tests run real native workers behind :class:`~webnet_magic.testing.linkrelay.LinkRelay`
(whose own tests are in test_linkrelay.py).
They check what happened rather than how long it took where they can (a job that arrived
while the one ahead of it still ran says so itself); the one ratio of times has a margin of
about two against what pipelining gives, and its data sizes and the link are fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.placement import shard_weights
from webnet_magic.broker.records import DeviceRecord
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client.expressions import ExpressionError
from webnet_magic.client.session import Session
from webnet_magic.errors import ShapeError
from webnet_magic.testing.linkrelay import Link, LinkRelay

from .conftest import Workers, join_native, settle, wait_until
from .peers import Peer, answering, result, send, small_program

RIGHT = np.full((4, 2), 3, np.float32)  # small_program's answer


@pytest.fixture
def session() -> Iterator[Session]:
    made = Session(heartbeat=0.2, silence_limit=2.0, calibrate=False)
    yield made
    made.stop()


@pytest.fixture
def relays() -> Iterator[list[LinkRelay]]:
    made: list[LinkRelay] = []
    yield made
    for relay in made:
        relay.stop()


def shaped(broker: BrokerThread, relays: list[LinkRelay], rate: float, delay: float) -> str:
    """The worker URL through a relay of ``rate`` bytes/s and ``delay`` seconds each way."""
    relay = LinkRelay(broker.port, Link.symmetric("test link", rate, delay)).start()
    relays.append(relay)
    return relay.url(broker.url)


# -- pipelining on a device ------------------------------------------------------------------------


def test_a_device_holds_two_jobs_and_the_rest_wait_in_the_queue(broker: BrokerThread, peers: list[Peer]) -> None:
    """With nothing known of its link a device holds two jobs; a third waits for room."""
    holder = Peer(broker)  # holds what it gets
    peers.append(holder)
    handles = [broker.submit(small_program()) for _ in range(3)]
    wait_until(lambda: len(holder.jobs) == 2, 5, "two jobs on the device")
    settle(broker)
    assert len(holder.jobs) == 2 and handles[2].progress.state == "queued"
    (device,) = broker.devices()
    assert device["state"] == "busy" and device["queued"] == 1 and device["job"] == handles[0].id


def test_a_lost_device_s_waiting_jobs_go_elsewhere_without_counting_as_failures(
    broker: BrokerThread, peers: list[Peer]
) -> None:
    """The running job failed with the device; the one waiting behind it never ran, so it is only requeued."""
    holder = Peer(broker)
    peers.append(holder)
    first, second = broker.submit(small_program()), broker.submit(small_program())
    wait_until(lambda: len(holder.jobs) == 2, 5, "both jobs on the device")
    holder.stop()
    peers.append(Peer(broker, answering(RIGHT)))
    for handle in (first, second):
        np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    assert [f.split(":")[-1].strip() for f in first.progress.failures] == ["disconnected"]
    assert second.progress.failures == [] and second.progress.device == "d2"


def test_held_work_counts_when_placing(broker: BrokerThread, peers: list[Peer]) -> None:
    """A device a hundred times faster takes a job behind its own rather than leave it to the slow one,
    until it holds all it may; then the slow one gets the next."""
    x = np.ones((128, 128), np.float32)
    program = ops.plan("matmul", x, x).program  # 4 Mflop: enough to measure
    answer = np.full((128, 128), 128, np.float32)

    async def timed(conn, job) -> None:
        await send(conn, result(job, answer, timings={"kernel": 400.0}))

    slow = Peer(broker, timed)
    fast = Peer(broker, answering(answer))
    peers += [slow, fast]
    broker.submit(program, devices=frozenset({"d1"})).future.result(10)
    fast.reply = lambda conn, job: send(conn, result(job, answer, timings={"kernel": 4.0}))
    broker.submit(program, devices=frozenset({"d2"})).future.result(10)
    fast.reply = None  # now it holds what it gets
    handles = [broker.submit(program) for _ in range(3)]
    wait_until(lambda: len(fast.jobs) == 3 and len(slow.jobs) == 2, 5, "the three jobs placed")
    assert [h.progress.device for h in handles] == ["d2", "d2", "d1"]


def test_placement_weighs_a_slow_link_against_a_fast_gpu(broker: BrokerThread, peers: list[Peer], relays) -> None:
    """A device twice as fast behind a 2 MB/s link loses a 1 MB job to one on loopback: the link's
    rate and round trip, measured from its first job and a ping, count with the compute."""
    x, w = np.ones((512, 512), np.float32), np.ones((512, 8), np.float32)
    program = ops.plan("matmul", x, w).program  # 4 Mflop on 1 MB of input
    answer = np.full((512, 8), 512, np.float32)

    def timed(ms: float):
        async def reply(conn, job) -> None:
            await send(conn, result(job, answer, timings={"kernel": ms, "held": 0.5}))

        return reply

    phone = Peer(SimpleNamespace(url=shaped(broker, relays, 2e6, 0.05)), timed(2.0))
    laptop = Peer(broker, timed(4.0))
    peers += [phone, laptop]
    for device in ("d1", "d2"):  # each one's speed and link, from a job of its own
        broker.submit(program, devices=frozenset({device})).future.result(20)
    phone_link = {d["id"]: d for d in broker.devices()}["d1"]
    assert phone_link["link_mbps"] < 3 and phone_link["rtt_ms"] >= 100
    handle = broker.submit(program)
    handle.future.result(20)
    assert handle.progress.device == "d2"


def test_a_job_waiting_on_a_device_is_cancelled_at_once(broker: BrokerThread, workers: Workers) -> None:
    """Cancelling the job behind a long one frees its place now; the long one still finishes right."""
    join_native(broker, workers)
    x = np.ones((768, 768), np.float32)
    plan = ops.plan("matmul", x, x)  # seconds on lavapipe
    long, waiting = broker.submit(plan.program), broker.submit(plan.program)
    wait_until(lambda: broker.devices()[0]["queued"] == 1, 10, "the second job to wait on the device")
    broker.cancel(waiting.id)
    wait_until(waiting.future.cancelled, 5, "the cancellation")
    wait_until(lambda: broker.devices()[0]["queued"] == 0, 10, "the worker to drop the waiting job")
    assert not long.future.done()  # it answered for the waiting job while the long one ran
    (c,) = plan.finish(long.future.result(120))
    assert c[0, 0] == 768 and broker.devices()[0]["jobs_done"] == 1


def test_jobs_arrive_while_the_one_ahead_computes(broker: BrokerThread, workers: Workers, relays) -> None:
    """Over a 20 MB/s, 10 ms link, a long job (a 768-cube matmul: seconds on lavapipe) and three short
    ones sent at once: each short one had fully arrived (64 KB: a few ms) while a job ahead of it still
    ran.  A worker that holds one job at a time (--depth 1) gets each only after the one before."""
    broker.broker.scheduler.placement.depth = 4
    rng = np.random.default_rng(3)
    url = shaped(broker, relays, 20e6, 0.01)

    def run(*extra: str) -> list[float]:
        process = workers.start(url, *extra)
        wait_until(lambda: [d for d in broker.devices() if d["state"] == "idle"], 60, "the worker")
        long = ops.plan("matmul", np.ones((768, 768), np.float32), np.ones((768, 768), np.float32))
        plans = [long] + [ops.plan("matmul", *rng.standard_normal((2, 128, 128), np.float32)) for _ in range(3)]
        handles = [broker.submit(p.program) for p in plans]
        for plan, handle in zip(plans, handles, strict=True):
            assert ops.error_ratio(plan.nodes[0], plan.finish(handle.future.result(120))[0]) <= 1
        process.kill()
        wait_until(lambda: not broker.devices(), 10, "the worker to leave")
        return [h.progress.timings["ahead"] for h in handles]

    assert run() == [0, 1, 2, 3]
    assert run("--depth", "1") == [0, 0, 0, 0]


Join = Callable[[str], Callable[[], object]]  # starts a worker on a URL, returns what stops it


#: Why the counts are asked only to be non-zero while data arrives: how many ~4 ms dispatches fit in
#: the half second depends on the machine (an idle one does dozens; a loaded CI machine did one).
WARMING_COUNTS = "warming dispatches: a job's data arriving should have some, an idle second at most one"


def warm_counts(
    broker: BrokerThread, relays: list[LinkRelay], join: Join, dispatched: Callable[[], int] | None = None
) -> list[float]:
    """Warming dispatches a worker reports for three jobs over a 1 MB/s link, each followed by a second
    idle: two with a fresh 512 KiB input (half a second arriving), then the second again (kept on the
    device: one small frame).  With ``dispatched`` (the worker's count of warming dispatches so far),
    the dispatches during the idle seconds come fourth: at most one per second (one in flight as
    the job ended), where a warmer left running would make hundreds."""
    rng = np.random.default_rng(8)
    plans = [ops.plan("sum", rng.standard_normal((256, 512), np.float32), axis=0) for _ in range(2)]
    stop = join(shaped(broker, relays, 1e6, 0.01))
    wait_until(lambda: [d for d in broker.devices() if d["state"] == "idle"], 60, "the worker")
    counts, idle = [], 0
    for plan in (*plans, plans[1]):
        handle = broker.submit(plan.program)
        (got,) = plan.finish(handle.future.result(120))
        assert ops.error_ratio(plan.nodes[0], got) <= 1
        counts.append(handle.progress.timings["warmed"])
        before = dispatched() if dispatched else 0
        time.sleep(1.0)  # idle: a warmer left running would dispatch hundreds of times meanwhile
        idle += max(dispatched() - before - 1, 0) if dispatched else 0
    if dispatched:
        counts.append(idle)
    stop()
    wait_until(lambda: not broker.devices(), 10, "the worker to leave")
    return counts


def test_the_gpu_is_kept_busy_while_a_job_arrives_and_not_while_idle(
    broker: BrokerThread, workers: Workers, relays
) -> None:
    """The native worker dispatches its warming kernel while a job's data arrives (the first job ever also
    pays for compiling it), not while idle; started with --no-warm, never."""
    _, arriving, idle = warm_counts(broker, relays, lambda url: workers.start(url).kill)
    assert arriving >= 1 and idle <= 1, WARMING_COUNTS
    assert warm_counts(broker, relays, lambda url: workers.start(url, "--no-warm").kill) == [0, 0, 0]


def test_the_page_keeps_its_gpu_busy_while_a_job_arrives_and_not_while_idle(page, broker: BrokerThread, relays) -> None:
    """The same in Chromium's WebGPU; ``?warm=0`` in the link turns it off."""

    def join(url: str) -> Callable[[], object]:
        page.goto(url)
        return lambda: page.goto("about:blank")

    def dispatched() -> int:
        return page.evaluate("window.webnetWorker.executor ? window.webnetWorker.executor.warmDispatches : 0")

    # The kept-input job's own count is not asked for here: a page on a loaded machine warms (rightly)
    # while that job waits its turn, for as long as the machine makes it wait.
    _, arriving, _, idle = warm_counts(broker, relays, join, dispatched)
    assert arriving >= 1 and idle == 0, WARMING_COUNTS
    assert warm_counts(broker, relays, lambda url: join(url + "&warm=0"), dispatched) == [0, 0, 0, 0]


def test_a_stream_over_a_slow_link_is_paced_by_the_link_not_the_round_trips(
    session: Session, workers: Workers, relays
) -> None:
    """Eight 1 MB items over 10 MB/s with 150 ms each way: one at a time that is at least 3.2 s of link;
    pipelined, about 1.2 s.  It must come in under 0.7 of the one-at-a-time figure."""
    url = shaped(session.broker, relays, 10e6, 0.15)
    workers.start(url)
    session.wait_for_devices(1, 60)
    rng = np.random.default_rng(4)
    items = [rng.standard_normal((512, 512), np.float32) for _ in range(8)]  # 1 MiB each
    list(session.map("sum(X, axis=0)", items[:1]))  # compiles the kernels
    one_at_a_time = len(items) * (items[0].nbytes / 10e6 + 0.3)
    started = time.perf_counter()
    sums = list(session.map("sum(X, axis=0)", items))
    elapsed = time.perf_counter() - started
    for x, s in zip(items, sums, strict=True):
        np.testing.assert_allclose(s, x.sum(axis=0), rtol=1e-4, atol=1e-3)
    assert elapsed < 0.7 * one_at_a_time, f"{elapsed:.2f} s against {one_at_a_time:.2f} s one at a time"
    (device,) = session.devices()
    assert device["rtt_ms"] >= 300  # the relay's floor: 150 ms each way
    assert device["link_mbps"] is not None and device["link_mbps"] < 30


# -- streams ---------------------------------------------------------------------------------------


def test_map_returns_results_in_order_with_at_most_k_in_flight(session: Session, workers: Workers) -> None:
    """Items are read lazily: never more than k launched and not yet handed back."""
    workers.start(session.local_url)
    session.wait_for_devices(1, 60)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 32), np.float32)
    xs = [rng.standard_normal((16, 64), np.float32) for _ in range(12)]
    pulled = []

    def items() -> Iterator[np.ndarray]:
        for i, x in enumerate(xs):
            pulled.append(i)
            yield x

    stream = session.map("relu(X @ W)", items(), namespace={"W": w}, in_flight=3)
    for i, y in enumerate(stream):
        np.testing.assert_allclose(y, np.maximum(xs[i] @ w, 0), rtol=1e-4, atol=1e-4)
        assert len(pulled) <= i + 1 + 3 and stream.progress.in_flight <= 3
    assert stream.progress.done == 12 and len(pulled) == 12
    assert str(stream.progress).startswith("12/? items, 0 in flight")  # the progress bar's text


def test_map_takes_a_function_that_builds_the_graph_and_dict_items(session: Session, workers: Workers) -> None:
    """A function of the item gives the outputs (several make a tuple); a dict item names its arrays."""
    workers.start(session.local_url)
    session.wait_for_devices(1, 60)
    xs = [np.arange(12, dtype=np.float32).reshape(3, 4) + i for i in range(4)]

    def both(x: np.ndarray):
        graph = ops.Graph()
        node = graph.input("x", x)
        return graph.apply("relu", [node], {}, "relu(x)"), graph.apply("sum", [node], {"axis": 1}, "sum(x)")

    for x, (relu, total) in zip(xs, session.map(both, xs), strict=True):
        np.testing.assert_array_equal(relu, np.maximum(x, 0))
        np.testing.assert_allclose(total, x.sum(axis=1))
    pairs = [{"A": x, "B": x.T} for x in xs]
    for x, c in zip(xs, session.map("A @ B", pairs), strict=True):
        np.testing.assert_allclose(c, x @ x.T, rtol=1e-5)


def test_an_item_that_cannot_run_fails_the_stream_at_its_place(session: Session, workers: Workers) -> None:
    """Results before the bad item come out; its error is raised in its turn; nothing runs on afterwards."""
    workers.start(session.local_url)
    session.wait_for_devices(1, 60)
    w = np.ones((4, 4), np.float32)
    items = [np.ones((2, 4), np.float32), np.ones((2, 4), np.float32), np.ones((2, 5), np.float32)]
    items += [np.ones((2, 4), np.float32)] * 3
    stream = session.map("X @ W", items, namespace={"W": w})
    assert [y.shape for y in (next(stream), next(stream))] == [(2, 4), (2, 4)]
    with pytest.raises(ShapeError):
        next(stream)
    assert list(stream) == [] and stream.cancelled
    wait_until(lambda: session.broker.fleet()["jobs"] == [], 10, "no job left in flight")


def test_a_cancelled_stream_stops_its_jobs_and_yields_no_more(session: Session, workers: Workers) -> None:
    workers.start(session.local_url, "--slowdown", "5")
    session.wait_for_devices(1, 60)
    x = np.ones((128, 128), np.float32)
    with session.map("X @ X", [x] * 10, in_flight=4) as stream:
        np.testing.assert_array_equal(next(stream), np.full((128, 128), 128, np.float32))
    assert stream.cancelled and list(stream) == []
    wait_until(lambda: session.broker.fleet()["jobs"] == [], 10, "the cancelled jobs to leave")
    assert stream.progress.done == 1


def test_map_says_which_name_is_the_item_when_it_cannot_tell(session: Session) -> None:
    with pytest.raises(ExpressionError, match="over='NAME'"):
        next(session.map("A @ B", [np.ones((2, 2), np.float32)]))
    with pytest.raises(ValueError, match="in_flight must be a positive number"):
        session.map("X", [], in_flight=0)
    with pytest.raises(TypeError, match="output node"):
        next(session.map(lambda x: x, [np.ones(3, np.float32)]))


def test_a_stream_s_items_are_sent_uncached_and_its_weights_stay_cached(session: Session, workers: Workers) -> None:
    """Six fresh items (128 KiB each, float64 converted, and float32 through a function) and one
    256 KiB weight: the device keeps only the weight; the items would only have churned its cache."""
    workers.start(session.local_url)
    session.wait_for_devices(1, 60)
    rng = np.random.default_rng(6)
    w = rng.standard_normal((256, 256), np.float32)
    xs = [rng.standard_normal((128, 256)) for _ in range(3)]  # float64: converted to float32 for the wire
    for x, y in zip(xs, session.map("X @ W", xs, namespace={"W": w}), strict=True):
        np.testing.assert_allclose(y, x.astype(np.float32) @ w, rtol=1e-4, atol=1e-3)
    fs = [rng.standard_normal((128, 256), np.float32) for _ in range(3)]
    for x, y in zip(fs, session.map(lambda x: ops.call("matmul", x, w), fs), strict=True):
        np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-3)
    (device,) = session.devices()
    assert device["cached"] == 1  # W alone
    received = session.broker.fleet()["sent"]
    list(session.map("X @ W", xs[:1], namespace={"W": w}))
    assert session.broker.fleet()["sent"] - received < w.nbytes  # W was not sent again


def test_depth_set_on_the_session_reaches_every_device(workers: Workers) -> None:
    """``Session(depth=3)``: a long job and two short ones are all on the device at once; ``depth=1``:
    each short one is sent only after the job before it has answered."""
    rng = np.random.default_rng(7)

    def aheads(depth: int) -> list[float]:
        made = Session(heartbeat=0.2, silence_limit=2.0, calibrate=False, tunnel="off", depth=depth)
        try:
            workers.start(made.local_url)
            made.wait_for_devices(1, 60)
            long = ops.plan("matmul", np.ones((768, 768), np.float32), np.ones((768, 768), np.float32))
            plans = [long] + [ops.plan("matmul", *rng.standard_normal((2, 128, 128), np.float32)) for _ in range(2)]
            handles = [made.broker.submit(p.program) for p in plans]
            for plan, handle in zip(plans, handles, strict=True):
                assert ops.error_ratio(plan.nodes[0], plan.finish(handle.future.result(120))[0]) <= 1
            return [h.progress.timings["ahead"] for h in handles]
        finally:
            made.stop()

    assert aheads(3) == [0, 1, 2]
    assert aheads(1) == [0, 0, 0]
    with pytest.raises(ValueError, match="depth must be a positive number"):
        Session(depth=0)


def test_webnet_start_takes_a_depth(shell) -> None:
    """``%webnet start --depth 1`` reaches the scheduler; a depth that is not a positive integer is refused."""
    from webnet_magic.client import session as sessions

    assert not shell.run_cell("%webnet start --depth 0 --tunnel off", store_history=False).success
    assert sessions.current() is None  # nothing started
    assert shell.run_cell("%webnet start --depth 1 --tunnel off", store_history=False).success
    running = sessions.current()
    assert running is not None and running.broker.call(lambda: running.broker.broker.scheduler.placement.depth) == 1


def test_over_a_fleet_the_faster_device_takes_more_items(workers: Workers) -> None:
    """Two native workers, one slowed eightfold: each item goes where it would finish first."""
    fleet = Session(heartbeat=0.2, silence_limit=2.0)  # calibrated: speeds known before the stream
    try:
        workers.start(fleet.local_url, "--name", "fast")
        workers.start(fleet.local_url, "--name", "slow", "--slowdown", "8")
        fleet.wait_for_devices(2, 120)
        x = np.ones((192, 192), np.float32)
        ys = list(fleet.map("X @ X", [x] * 16))
        assert all(np.array_equal(y, np.full((192, 192), 192, np.float32)) for y in ys)
        done = {d["name"]: d["jobs_done"] for d in fleet.devices()}
        assert done["fast"] > done["slow"] and done["fast"] + done["slow"] == 16
    finally:
        fleet.stop()


@pytest.mark.browser
def test_the_page_runs_a_stream_with_jobs_held_ahead(page, broker: BrokerThread) -> None:
    """In Chromium's WebGPU: items in order and right, jobs arriving while others ran, the page idle after."""
    page.goto(broker.url)
    wait_until(broker.devices, 30, "the page to join")
    rng = np.random.default_rng(6)
    plans = [ops.plan("matmul", rng.standard_normal((96, 64), np.float32), np.eye(64, dtype=np.float32))
             for _ in range(6)]  # fmt: skip
    handles = [broker.submit(p.program) for p in plans]
    for plan, handle in zip(plans, handles, strict=True):
        np.testing.assert_allclose(plan.finish(handle.future.result(60))[0], plan.program.inputs[0], rtol=1e-6)
    assert any(h.progress.timings["ahead"] >= 1 for h in handles)
    page.wait_for_function("window.webnet.status === 'idle'")


def test_join_native_still_gives_one_idle_device(broker: BrokerThread, workers: Workers) -> None:
    """A worker that holds nothing is idle, with its round trip measured at once (a ping at join)."""
    (device,) = join_native(broker, workers)
    wait_until(lambda: broker.devices()[0]["rtt_ms"] is not None, 10, "the first round trip")
    assert device["state"] == "idle" and device["queued"] == 0


def test_shards_are_sized_for_the_work_each_device_already_holds() -> None:
    """Equal devices, one holding a second of work: it gets that much less of the new job; one holding
    more than the whole job gets none; unmeasured speeds fall back to equal shares."""
    idle, busy = DeviceRecord("d1", speed=1e9), DeviceRecord("d2", speed=1e9, backlog=1.0)
    assert shard_weights([idle, busy], 3e9) == pytest.approx([2e9, 1e9])
    assert shard_weights([idle, replace(busy, backlog=5.0)], 3e9) == pytest.approx([3e9, 0.0])
    assert shard_weights([idle, busy, idle], 3e9) == pytest.approx([1e9, 1e9, 1e9])  # d1's share over two shards
    assert shard_weights([replace(idle, speed=None), busy], 3e9) == [1e9, 1e9]
    assert shard_weights([None], 0.0) == [1.0]
