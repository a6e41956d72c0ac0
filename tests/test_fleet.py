"""The fleet's rules, driven by hand-written peers over real sockets: nothing lost, nothing mixed in.

Each test scripts workers that fail the way phones do (silence, a dropped link, a lease
outlived, a late or doubled answer, wrong numbers) and checks that the job still ends
with the right answer, or with an error that says what failed where.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.thread import NOTIFY_INTERVAL, BrokerThread
from webnet_magic.errors import VerificationFailed, WorkerError, WorkerLost
from webnet_magic.protocol import Message

from .conftest import settle, wait_until
from .peers import Peer, answering, once, result, send, small_program

RIGHT = np.full((4, 2), 3, np.float32)  # small_program's answer
WRONG = np.full((4, 2), 7, np.float32)


def right_or_not(outputs: list[np.ndarray]) -> str | None:
    return None if np.array_equal(outputs[0], RIGHT) else "not all threes"


@pytest.fixture
def fast_lease() -> Iterator[BrokerThread]:
    """A broker whose leases run out after half a second (plus the expected run time)."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=1.5, lease=0.5, calibrate=False).start()
    yield thread
    thread.stop()


def test_a_silent_device_is_declared_lost_and_its_task_runs_on_another(
    hasty_broker: BrokerThread, peers: list[Peer]
) -> None:
    """Silence past the limit drops the device; its task waits in the queue, then runs on the next one."""
    broker = hasty_broker
    peers.append(Peer(broker, silent=True))
    handle = broker.submit(small_program())
    wait_until(lambda: broker.devices() == [], 5, "the silent device to be dropped")
    assert not handle.future.done()
    peers.append(Peer(broker, answering(RIGHT)))
    np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    assert handle.progress.failures == ["d1 (hand-written peer): stopped answering heartbeats"]
    assert [d["id"] for d in broker.devices()] == ["d2"]


def test_a_task_that_fails_everywhere_fails_naming_each_device(broker: BrokerThread, peers: list[Peer]) -> None:
    """Three devices that each drop the link on receiving the task: after three attempts the job fails."""

    async def hang_up(conn, job: Message) -> None:
        conn.close()

    peers += [Peer(broker, hang_up) for _ in range(3)]
    handle = broker.submit(small_program())
    with pytest.raises(WorkerLost, match=r"failed 3 times: on d\d .*; on d\d .*; on d\d ") as raised:
        handle.future.result(10)
    assert {f.split()[0] for f in handle.progress.failures} == {"d1", "d2", "d3"}
    assert "disconnected" in str(raised.value)


def test_a_task_outliving_its_lease_moves_and_the_late_answer_is_dropped(
    fast_lease: BrokerThread, peers: list[Peer]
) -> None:
    """The slow device is told to cancel; its late (different) answer arrives after the move and is dropped."""
    slow = Peer(fast_lease)
    peers.append(slow)
    handle = fast_lease.submit(small_program())
    wait_until(lambda: slow.jobs, 5, "the slow device to get the task")
    peers.append(Peer(fast_lease, answering(RIGHT)))
    np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    wait_until(lambda: slow.cancels == [slow.jobs[0].fields["job"]], 5, "the slow device to be told to cancel")
    assert "did not finish within its 1 s lease" in handle.progress.failures[0]

    asyncio.run_coroutine_threadsafe(send(slow.conn, result(slow.jobs[0], WRONG)), slow.loop).result(5)
    wait_until(lambda: fast_lease.devices()[0]["state"] == "idle", 5, "the slow device to be free again")
    assert slow.close_code is None  # a late answer is not a protocol error
    np.testing.assert_array_equal(handle.future.result(0)[0], RIGHT)


def test_a_duplicate_answer_is_read_and_dropped(broker: BrokerThread, peers: list[Peer]) -> None:
    async def twice(conn, job: Message) -> None:
        await send(conn, result(job, RIGHT))
        await send(conn, result(job, WRONG))

    peer = Peer(broker, twice)
    peers.append(peer)
    np.testing.assert_array_equal(broker.submit(small_program()).future.result(10)[0], RIGHT)
    np.testing.assert_array_equal(broker.submit(small_program()).future.result(10)[0], RIGHT)
    assert peer.close_code is None and broker.devices()[0]["jobs_done"] == 2


def test_a_device_that_reconnects_with_its_secret_comes_back_as_itself(broker: BrokerThread, peers: list[Peer]) -> None:
    """A phone that slept: same id, same history; a task only it may run waited for it."""
    first = Peer(broker, answering(RIGHT))
    peers.append(first)
    broker.submit(small_program()).future.result(10)
    handle = broker.submit(small_program(), devices=frozenset({"d1"}))
    first.reply = None  # it takes this one and drops its link before answering
    wait_until(lambda: len(first.jobs) == 2, 5, "the second task to reach d1")
    first.stop()
    wait_until(lambda: broker.devices() == [], 5, "d1 to be gone")
    settle(broker)
    assert not handle.future.done()  # waiting for d1, not failed

    secret = first.welcome.fields["resume"]
    back = Peer(broker, answering(RIGHT), resume=secret)
    peers.append(back)
    assert back.welcome.fields["device"] == "d1"
    np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    (device,) = broker.devices()
    assert device["id"] == "d1" and device["returns"] == 1 and device["jobs_done"] == 2

    stranger = Peer(broker, resume="not-a-secret-this-broker-gave")
    peers.append(stranger)
    assert stranger.welcome.fields["device"] == "d2"


def test_a_wrong_answer_bans_the_device_and_the_task_reruns_elsewhere(broker: BrokerThread, peers: list[Peer]) -> None:
    """The liar is alone when the job starts (so it gets it, whatever the devices' round trips) and
    answers once an honest device has joined (so the job has somewhere to go after the ban)."""
    joined = threading.Event()
    liar = Peer(broker, once(joined, answering(WRONG)))
    peers.append(liar)
    handle = broker.submit(small_program(), check=right_or_not)
    wait_until(lambda: liar.jobs, 10, "the liar to get the job")
    peers.append(Peer(broker, answering(RIGHT)))
    joined.set()
    np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    banned = {d["id"]: d for d in broker.devices()}["d1"]
    assert banned["banned"] and banned["state"] == "banned" and banned["failures"] == 1
    assert "failed verification of job" in banned["reason"] and "not all threes" in banned["reason"]
    broker.submit(small_program()).future.result(10)
    assert len(liar.jobs) == 1  # a banned device gets no more work


def reporting(kind: str):
    """A peer's reply that says the job's program failed on it with an error of ``kind``."""

    async def reply(conn, job: Message) -> None:
        await send(conn, Message("error", {"job": job.fields["job"], "kind": kind, "message": "shader: bad"}))

    return reply


def test_a_device_saying_the_program_failed_gets_a_second_opinion(broker: BrokerThread, peers: list[Peer]) -> None:
    """A device that reports a compile error for every job (hostile, or broken) cannot fail the notebook's
    jobs while another device may try them; with none, or when every device says so, the error is final."""
    joined = threading.Event()
    liar = Peer(broker, once(joined, reporting("compile")))
    peers.append(liar)
    handle = broker.submit(small_program())
    wait_until(lambda: liar.jobs, 10, "the liar to get the job")
    peers.append(Peer(broker, answering(RIGHT)))
    joined.set()
    np.testing.assert_array_equal(handle.future.result(10)[0], RIGHT)
    assert handle.progress.failures == ["d1 (hand-written peer): reported a compile error: shader: bad"]

    peers.append(Peer(broker, reporting("validation")))
    both = broker.submit(small_program(), devices=frozenset({"d1", "d3"}))
    with pytest.raises(WorkerError, match=r"failed 2 times: on d\d .*validation|compile.*; on d\d "):
        both.future.result(10)
    alone = broker.submit(small_program(), devices=frozenset({"d3"}))
    with pytest.raises(WorkerError, match=r"^device d3 \(hand-written peer\) reported a validation error"):
        alone.future.result(10)


def test_a_job_whose_only_devices_are_banned_fails_at_once(broker: BrokerThread, peers: list[Peer]) -> None:
    peers.append(Peer(broker, answering(WRONG)))
    with pytest.raises(VerificationFailed, match=r"banned for this session .*not all threes.*Connect another device"):
        broker.submit(small_program(), check=right_or_not).future.result(10)


def test_a_device_that_fails_its_calibration_gets_no_work(peers: list[Peer]) -> None:
    """Calibration is a real 256-cube matmul checked against numpy: a device answering zeros is banned."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=1.5).start()
    try:
        liar = Peer(thread, answering(np.zeros((256, 256), np.float32)))
        peers.append(liar)
        wait_until(lambda: thread.devices()[0]["banned"], 10, "the calibration check")
        assert "failed its calibration check" in thread.devices()[0]["reason"]
        assert thread.devices()[0]["jobs_done"] == 0  # calibration is not one of the notebook's jobs
    finally:
        thread.stop()


def test_independent_jobs_go_to_the_fastest_idle_device(broker: BrokerThread, peers: list[Peer]) -> None:
    """Speeds come from work over reported time; with both idle, the faster device gets the next job."""
    x = np.ones((128, 128), np.float32)
    program = ops.plan("matmul", x, x).program  # 4 Mflop: enough to measure
    answer = np.full((128, 128), 128, np.float32)

    def timed(ms: float):
        async def reply(conn, job: Message) -> None:
            await send(conn, result(job, answer, timings={"kernel": ms}))

        return reply

    slow, fast = Peer(broker, timed(400.0)), Peer(broker, timed(4.0))
    peers += [slow, fast]
    broker.submit(program, devices=frozenset({"d1"})).future.result(10)
    broker.submit(program, devices=frozenset({"d2"})).future.result(10)
    speeds = {d["id"]: d["gflops"] for d in broker.devices()}
    assert speeds["d2"] == pytest.approx(100 * speeds["d1"], rel=0.01)
    for _ in range(3):
        broker.submit(program).future.result(10)
    assert (len(slow.jobs), len(fast.jobs)) == (1, 4)


def test_the_fleet_snapshot_lists_jobs_in_flight_and_bytes(broker: BrokerThread, peers: list[Peer]) -> None:
    peer = Peer(broker)  # holds what it gets
    peers.append(peer)
    handles = [broker.submit(small_program(), group="j100", shards=2, task_id=f"j100.{i}") for i in (1, 2)]
    wait_until(lambda: peer.jobs, 5, "a shard to start")
    fleet = broker.fleet()
    assert fleet["jobs"] == [{"id": "j100", "done": 0, "total": 2, "running": {"j100.1": "d1"}}]
    assert fleet["sent"] > 0 and fleet["received"] > 0
    assert fleet["devices"][0]["job"] == "j100.1" and fleet["devices"][0]["group"] == "j100"
    for handle in handles:
        broker.cancel(handle.id)
    wait_until(lambda: broker.fleet()["jobs"] == [], 5, "the job to leave the list")


def test_the_panel_is_told_of_changes_at_most_ten_times_a_second(broker: BrokerThread, peers: list[Peer]) -> None:
    """A hundred jobs make some three hundred changes; the panel hears of them at most once every
    NOTIFY_INTERVAL (a hostile device could otherwise flood the notebook's front end), and the last
    thing it hears is the final state."""
    peers.append(Peer(broker, answering(RIGHT)))
    told: list[dict] = []
    broker.add_listener(told.append)
    started = time.monotonic()
    for _ in range(100):
        broker.submit(small_program()).future.result(10)
    elapsed = time.monotonic() - started
    wait_until(lambda: told and told[-1]["devices"][0]["jobs_done"] == 100, 5, "the last change to be told")
    assert len(told) <= elapsed / NOTIFY_INTERVAL + 2, f"{len(told)} updates in {elapsed:.2f} s"
