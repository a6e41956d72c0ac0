"""Workers killed mid-job, many times, at random points: every job still ends with the right answer.

A steady native worker and a victim share sharded matmuls.  The victim, a native worker
process or a browser page, is killed (SIGKILL, or the page closed) at a random moment
while it holds a shard, then started again, over and over.  Each lost shard must run
again elsewhere and every result must match numpy.  A task is killed at most
``attempts - 1`` times, since the retries are bounded by design; how many kills the
fleet survived is printed (``pytest -s``).

A hundred kills more follow a fixed schedule: hand-written workers beside a real one, each
dying on the first job it is given, in one of four ways (the connection reset at once, reset
halfway through sending its answer, closed politely, or gone silent).  Every job must end
right or with the real error, and the scheduler must hold nothing afterwards.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from webnet_magic.client.session import Session
from webnet_magic.errors import WorkerLost
from webnet_magic.protocol import Message, encode

from .conftest import Workers, wait_until
from .peers import Peer, held, nothing_held

JOBS = 12  # at least this many jobs
KILLS = 8  # and at least this many kills mid-job
ATTEMPTS = 3


@pytest.fixture
def session() -> Iterator[Session]:
    made = Session(heartbeat=0.2, silence_limit=2.0, attempts=ATTEMPTS, calibrate=False)
    yield made
    made.stop()


class Killer:
    """Kills the victim at random points of the shards it holds, and starts it again each time.

    :meth:`step` runs in the test's own thread (Playwright must be driven from the thread
    that started it) while the jobs run in another.
    """

    def __init__(self, session: Session, start: Callable[[int], None], kill: Callable[[], None]) -> None:
        self.session, self.start, self.kill = session, start, kill
        self.kills: list[str] = []  # the task each kill interrupted
        self.per_task: Counter[str] = Counter()
        self.generation = 0
        self.rng = random.Random(4)
        start(0)

    def victim(self) -> dict | None:
        return next((d for d in self.session.devices() if d["name"] == f"victim {self.generation}"), None)

    def step(self) -> None:
        victim = self.victim()
        task = victim and victim["job"]
        if not task or self.per_task[task] >= ATTEMPTS - 1:
            time.sleep(0.01)
            return
        time.sleep(self.rng.uniform(0.0, 0.3))  # somewhere in its upload, kernel or download
        victim = self.victim()
        if victim is None or victim["job"] != task:
            return  # it finished first
        self.kill()
        self.kills.append(task)
        self.per_task[task] += 1
        self.generation += 1
        self.start(self.generation)


def survive(session: Session, killer: Killer) -> None:
    """Run the jobs in a thread while the killer works here; every result must be right."""
    wait_until(killer.victim, 60, "the first victim to join")
    failure: list[BaseException] = []

    done = [0]

    def jobs() -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + 150
        try:
            while done[0] < JOBS or len(killer.kills) < KILLS:
                assert time.monotonic() < deadline, f"only {len(killer.kills)} kills in 150 s"
                a, b = rng.standard_normal((384, 256), np.float32), rng.standard_normal((256, 384), np.float32)
                c = session.matmul(a, b, shard=2, timeout=120)
                np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
                done[0] += 1
        except BaseException as exc:
            failure.append(exc)

    runner = threading.Thread(target=jobs)
    runner.start()
    while runner.is_alive():
        killer.step()
    if failure:
        raise failure[0]
    print(f"\nchaos: {len(killer.kills)} kills mid-job survived over {done[0]} jobs, all right; tasks hit:")
    print("  " + ", ".join(f"{task} x{count}" for task, count in killer.per_task.items()))


def test_native_workers_killed_mid_job(session: Session, workers: Workers) -> None:
    workers.start(session.url, "--name", "steady")
    session.wait_for_devices(1, 120)
    victims: list = []

    def start(generation: int) -> None:
        victims.append(workers.start(session.url, "--name", f"victim {generation}", "--slowdown", "4"))

    survive(session, Killer(session, start, lambda: victims[-1].kill()))


def test_browser_pages_closed_mid_job(session: Session, workers: Workers, chromium) -> None:
    workers.start(session.url, "--name", "steady")
    session.wait_for_devices(1, 120)
    contexts: list = []

    def start(generation: int) -> None:
        contexts.append(chromium.new_context())
        contexts[-1].new_page().goto(f"{session.url}&name=victim%20{generation}")

    try:
        survive(session, Killer(session, start, lambda: contexts[-1].close()))
    finally:
        for context in contexts:
            context.close()


SCHEDULED_KILLS = 100
WAYS = ("reset", "reset mid-answer", "closed", "silent")


def reset(conn) -> None:
    """End the connection as a killed process's does: a TCP reset, no close frame."""
    stream = conn.protocol.stream
    if stream.socket is not None:  # (the broker may have closed it first)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()


class Victim(Peer):
    """A hand-written worker that dies ``way`` on the first job it is given (its thread ends with its link)."""

    def __init__(self, session: Session, way: str) -> None:
        self.way = way
        super().__init__(session.broker, self.die, name=f"victim ({way})")

    async def die(self, conn, job: Message) -> None:
        if self.way == "silent":
            self.silent = True  # holds the job and answers no more pings: dropped after the silence limit
        elif self.way == "closed":
            conn.close()
        else:
            if self.way == "reset mid-answer":
                (spec,) = job.fields["outputs"]
                answer = Message("result", {"job": job.fields["job"], "timings": {}}, [np.zeros(spec["shape"], "f4")])
                await conn.write_message(next(iter(encode(answer, 7, 4096))), binary=True)  # its first frame only
            reset(conn)


def test_a_hundred_kills_on_a_fixed_schedule(session: Session, workers: Workers) -> None:
    """Two dying workers at a time beside a real one, replaced as each dies, while three threads run sharded
    matmuls: after 100 kills every job has ended, right or with WorkerLost naming the devices it was lost
    on, and the scheduler holds no task, attempt or job."""
    workers.start(session.url, "--name", "steady")
    session.wait_for_devices(1, 120)
    schedule = random.Random(10)
    ways: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    lost: list[str] = []
    stop = threading.Event()

    def jobs(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            a, b = rng.standard_normal((256, 128), np.float32), rng.standard_normal((128, 256), np.float32)
            try:
                c = session.matmul(a, b, shard=2, timeout=120)
            except WorkerLost as exc:
                outcomes["failed"] += 1
                lost.append(str(exc))
                continue
            except BaseException as exc:
                unexpected.append(exc)
                return
            np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
            outcomes["right"] += 1

    def victim() -> Victim:
        return Victim(session, schedule.choice(WAYS))

    runners = [threading.Thread(target=jobs, args=(seed,)) for seed in range(3)]
    for runner in runners:
        runner.start()
    victims = [victim(), victim()]
    try:
        while sum(ways.values()) < SCHEDULED_KILLS and not unexpected:
            time.sleep(0.01)
            for i, peer in enumerate(victims):
                if not peer.thread.is_alive():  # it died on a job it was given
                    ways[peer.way] += 1
                    victims[i] = victim()
    finally:
        stop.set()
        for runner in runners:
            runner.join(180)
        for peer in victims:
            peer.stop()
    if unexpected:
        raise unexpected[0]
    assert not any(runner.is_alive() for runner in runners), "a job did not end"
    assert all("disconnected" in text or "stopped answering" in text for text in lost), lost
    wait_until(lambda: nothing_held(session.broker), 30, f"the scheduler to hold nothing ({held(session.broker)})")
    print(
        f"\nchaos: {sum(ways.values())} kills on a fixed schedule ({dict(ways)}) over {sum(outcomes.values())} "
        f"jobs: {outcomes['right']} right, {outcomes['failed']} failed with WorkerLost; nothing held afterwards"
    )
