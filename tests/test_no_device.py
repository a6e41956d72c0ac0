"""A worker that lost its GPU for good says ``no-device``: the broker stops giving it work and sends
what it held elsewhere at once, without counting a failure, but not forever (hand-written peers)."""

from __future__ import annotations

import pytest

from webnet_magic.broker.thread import BrokerThread
from webnet_magic.errors import WorkerError
from webnet_magic.protocol import Message

from .conftest import settle, wait_until
from .peers import Peer, send, small_program


async def gone(conn, job: Message) -> None:
    """The answer of a worker whose GPU went and did not come back."""
    await send(conn, Message("error", {"job": job.fields["job"], "kind": "no-device", "message": "GPU lost"}))


def test_a_job_handed_back_goes_to_the_next_device_without_a_failure(broker: BrokerThread, peers: list[Peer]) -> None:
    peers.append(Peer(broker, gone))
    handle = broker.submit(small_program())
    wait_until(lambda: peers[0].jobs, 10, "the job to reach the first peer")
    wait_until(lambda: broker.devices()[0]["state"] == "no WebGPU", 10, "the peer to be marked unusable")
    settle(broker)
    assert handle.progress.state == "queued" and handle.progress.failures == []
    assert broker.devices()[0]["reason"] == "GPU lost" and peers[0].close_code is None  # still connected
    peers.append(Peer(broker, gone))
    wait_until(lambda: peers[1].jobs, 10, "the job to reach the second peer")
    assert len(peers[0].jobs) == 1  # the first is never given work again


def test_a_task_handed_back_again_and_again_fails_in_the_end(peers: list[Peer]) -> None:
    """Handing a job back is free only ``attempts`` times: after that each counts as a failure, so
    workers that join and hand it back, one after another, cannot keep it forever."""
    broker = BrokerThread(calibrate=False, attempts=2).start()
    try:
        handle = broker.submit(small_program())
        while not handle.future.done() and len(peers) < 10:
            peers.append(Peer(broker, gone))
            wait_until(lambda: peers[-1].jobs or handle.future.done(), 10, "the job to reach the peer")
            wait_until(lambda: handle.progress.state != "running", 10, "the job to be handed back")
        with pytest.raises(WorkerError, match=r"failed 2 times: .*lost its GPU for good: GPU lost"):
            handle.future.result(10)
        assert len(peers) == 4  # two handed back free, two counted
    finally:
        broker.stop()
