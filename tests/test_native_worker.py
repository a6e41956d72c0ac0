"""The native worker (wgpu-py on lavapipe) against a broker on loopback."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread, TaskHandle
from webnet_magic.errors import WorkerError
from webnet_magic.program import Buffer, Kernel, Output, Program, Step
from webnet_magic.testing.linkrelay import LOOPBACK, LinkRelay

from .conftest import Workers, join_native, run_async, wait_until


@pytest.fixture
def patient_broker() -> Iterator[BrokerThread]:
    """A broker with fast heartbeats that waits ten minutes for a silent worker: a test may hold
    a worker's answers in a relay (which silences it) for as long as it acts on its job."""
    thread = BrokerThread(heartbeat=0.2, silence_limit=600, calibrate=False).start()
    yield thread
    thread.stop()


def test_a_native_worker_joins_with_its_adapter_and_limits(broker: BrokerThread, workers: Workers) -> None:
    """The hello carries the adapter (lavapipe here) and the device limits, in WebGPU's names."""
    (device,) = join_native(broker, workers)
    assert device["runtime"] == "native" and device["state"] == "idle"
    assert "llvmpipe" in device["name"] or "llvmpipe" in device["adapter"]
    assert device["limits"]["maxStorageBufferBindingSize"] >= 128 * 2**20


def test_matmul_of_any_shape_runs_on_the_native_worker(broker: BrokerThread, workers: Workers) -> None:
    """300x129 @ 129x77 (nothing a multiple of the tile) equals numpy within float32 tolerance."""
    join_native(broker, workers)
    rng = np.random.default_rng(1)
    a, b = rng.random((300, 129)), rng.random((129, 77))
    plan = ops.plan("matmul", a, b)
    (c,) = plan.finish(broker.submit(plan.program).future.result(60))
    assert ops.error_ratio(plan.nodes[0], c) <= 1
    devices = broker.devices()
    assert devices[0]["jobs_done"] == 1 and devices[0]["last_job_ms"] > 0


def test_a_wgsl_compile_error_comes_back_within_seconds(broker: BrokerThread, workers: Workers) -> None:
    """The worker's compiler message (with line and column) reaches the notebook as WorkerError, as the
    worker's own answer (long before the job's lease would end)."""
    join_native(broker, workers)
    bad = Program(
        (),
        (Buffer(4),),
        (Step(Kernel("@compute @workgroup_size(1)\nfn main() { let x = ; }"), (0,), (1, 1, 1)),),
        (),
    )
    with pytest.raises(WorkerError, match=r"(?s)compile error.*wgsl:2:21") as info:
        broker.submit(bad).future.result(30)
    assert info.value.kind == "compile" and info.value.device == "d1"
    assert broker.devices()[0]["state"] == "idle"  # the worker is fine and takes the next job


@pytest.fixture
def relay(patient_broker: BrokerThread) -> Iterator[LinkRelay]:
    """A relay to ``patient_broker`` on loopback, for a test to hold a direction of (see LinkRelay.hold)."""
    with LinkRelay(patient_broker.port, LOOPBACK) as made:
        yield made


def answer_held(relay: LinkRelay, handle: TaskHandle, nbytes: int) -> None:
    """Wait until the worker has answered ``handle``'s job (``nbytes`` of outputs) and its answer
    waits, whole, in the held relay."""
    wait_until(lambda: relay.waiting("up") >= nbytes, 60, f"the answer to {handle.id} to be held")
    assert not handle.future.done()


def test_a_worker_killed_mid_job_hands_its_job_to_the_next_worker(
    patient_broker: BrokerThread, relay: LinkRelay, workers: Workers
) -> None:
    """Killed before its answer gets through, the worker's job is queued again at once (not after the
    silence limit); the next worker runs it."""
    broker = patient_broker
    workers.start(relay.url(broker.url))
    wait_until(broker.devices, 60, "the worker to join")
    x = np.ones((64, 64), np.float32)
    plan = ops.plan("matmul", x, x)
    relay.hold("up")  # its answer (and everything else it says) waits in the relay
    handle = broker.submit(plan.program)
    answer_held(relay, handle, plan.program.output_bytes)
    workers.processes[0].send_signal(signal.SIGKILL)
    wait_until(lambda: handle.progress.state == "queued", 30, "the job to go back to the queue")
    assert handle.progress.failures == ["d1 (" + handle.progress.failures[0].split("(", 1)[1]]
    assert handle.progress.failures[0].endswith("disconnected")
    workers.start(broker.url)
    (c,) = plan.finish(handle.future.result(120))
    assert c[0, 0] == 64 and handle.progress.attempts == 2 and handle.progress.device == "d2"


def test_a_cancelled_job_frees_the_worker_and_its_late_result_is_dropped(
    patient_broker: BrokerThread, relay: LinkRelay, workers: Workers
) -> None:
    """Cancelled while its answer is on the way, the device stays busy until the answer arrives (and is
    dropped), then runs the next job correctly."""
    broker = patient_broker
    workers.start(relay.url(broker.url))
    wait_until(broker.devices, 60, "the worker to join")
    x = np.ones((64, 64), np.float32)
    relay.hold("up")
    program = ops.plan("matmul", x, x).program
    first = broker.submit(program)
    answer_held(relay, first, program.output_bytes)
    broker.cancel(first.id)
    wait_until(first.future.cancelled, 5, "the cancellation")
    assert broker.devices()[0]["state"] == "busy"  # until the device says it has dropped the job
    relay.release("up")
    a, b = np.eye(3, dtype=np.float32), np.arange(9, dtype=np.float32).reshape(3, 3)
    plan = ops.plan("matmul", a, b)
    np.testing.assert_array_equal(plan.finish(broker.submit(plan.program).future.result(60))[0], b)
    assert broker.devices()[0]["jobs_done"] == 1  # the cancelled job did not count


def test_the_worker_exits_cleanly_when_the_broker_stops(workers: Workers) -> None:
    """`%webnet stop` ends a native worker with status 0 instead of leaving it retrying forever."""
    thread = BrokerThread().start()
    join_native(thread, workers)
    thread.stop()
    assert workers.processes[0].wait(15) == 0


def test_a_worker_with_a_wrong_token_exits_with_a_clear_message(broker: BrokerThread, workers: Workers) -> None:
    """The CLI says it was refused, points at %webnet url, and exits with status 2."""
    process = workers.start(broker.url.replace("token=", "token=x"))
    assert process.wait(30) == 2
    assert "%webnet url" in process.stderr.read().decode()


@pytest.mark.parametrize("url", ["ftp://host/?token=t", "http://127.0.0.1:9/", "not a url"])
def test_a_malformed_worker_url_is_refused_before_connecting(url: str, workers: Workers) -> None:
    process = workers.start(url)
    assert process.wait(30) == 1
    assert "%webnet url" in process.stderr.read().decode()


def test_a_ping_with_arrays_comes_back_bit_exact(broker: BrokerThread, workers: Workers) -> None:
    """The link probe: 10 MB (several frames) to the worker and back, unchanged, no GPU involved."""
    join_native(broker, workers)
    data = np.random.default_rng(0).integers(0, 2**31, 10 * 2**20 // 4, dtype=np.int32)
    (back,) = broker.echo([data])
    np.testing.assert_array_equal(back, data)


def test_the_token_can_come_from_the_environment_instead_of_the_command_line(
    broker: BrokerThread, workers: Workers, monkeypatch
) -> None:
    """`WEBNET_TOKEN` keeps the token out of `ps`; the URL then carries none."""
    from webnet_magic.worker.native import TOKEN_ENV, split_token

    page, token = split_token(broker.url)
    assert "token" not in page
    monkeypatch.setenv(TOKEN_ENV, token)
    workers.start(page)
    wait_until(broker.devices, 60, "the worker to join with the token from its environment")


def test_outputs_that_are_not_a_multiple_of_four_bytes_come_back(broker: BrokerThread, workers: Workers) -> None:
    """Workers are generic: a 3-byte uint8 output is read back (padded on the GPU, trimmed after)."""
    join_native(broker, workers)
    source = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1) fn main() { out[0] = 0x00030201u; }
"""
    program = Program((), (Buffer(4),), (Step(Kernel(source), (0,), (1, 1, 1)),), (Output(0, "uint8", (3,)),))
    (out,) = broker.submit(program).future.result(60)
    np.testing.assert_array_equal(out, np.array([1, 2, 3], np.uint8))


def test_a_local_worker_that_dies_is_reported_with_its_last_words(monkeypatch) -> None:
    """A local worker on a machine without a GPU driver fails the wait at once, saying why."""
    from webnet_magic.client.session import Session
    from webnet_magic.errors import NoDeviceError

    for name in ("VK_ICD_FILENAMES", "VK_DRIVER_FILES"):  # no Vulkan driver for the child process
        monkeypatch.setenv(name, "/nonexistent/icd.json")
    monkeypatch.setenv("WGPU_BACKEND_TYPE", "Vulkan")
    session = Session()
    try:
        session.local_worker("native")
        with pytest.raises(NoDeviceError, match=r"local native worker exited: status 1: .*no GPU adapter found"):
            session.wait_for_devices(1, timeout=60)  # (the timeout would say "0 of 1 device(s) ready")
    finally:
        session.stop()


def test_both_ends_of_a_worker_link_send_small_frames_at_once(broker: BrokerThread) -> None:
    """TCP_NODELAY on the worker's socket and the broker's: a job's head frame, a result's last
    frame or a pong never waits for the ACK of the segment before it (up to 40 ms on loopback)."""
    from webnet_magic.worker.native import connect, socket_url

    from .peers import say_hello

    def nodelay(sock: socket.socket) -> int:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    async def worker_end() -> int:
        conn = await connect(socket_url(broker.url))
        await say_hello(conn)  # the broker has opened its end, and knows the device
        mine = nodelay(conn.protocol.stream.socket)
        broker_end = broker.call(lambda: [nodelay(s.ws_connection.stream.socket) for s in broker.broker.sockets])
        conn.close()
        return mine, broker_end

    mine, broker_end = run_async(worker_end())
    assert mine and broker_end == [1]


def test_warming_stops_a_dispatch_before_the_data_is_due_and_resumes_when_it_is_late() -> None:
    """While a job's data arrives: warm from LEAD before it is due until one warming dispatch before
    (a dispatch begun later would hold the job up; over loopback that is no warming at all), and
    again once the data is a dispatch late."""
    from webnet_magic.worker.native import warming
    from webnet_magic.worker.warm import LEAD, SPIN_SECONDS

    def at(due: float) -> tuple[bool, float | None]:  # the data due in `due` seconds
        return warming(due - LEAD, due)

    assert at(LEAD + 0.5) == (False, pytest.approx(0.5))  # not yet: ask again when it is time
    assert at(LEAD - 0.1) == (True, pytest.approx(LEAD - 0.1 - SPIN_SECONDS))
    assert at(SPIN_SECONDS / 2) == (False, pytest.approx(1.5 * SPIN_SECONDS))
    assert at(-SPIN_SECONDS / 2) == (False, pytest.approx(SPIN_SECONDS / 2))
    assert at(-2 * SPIN_SECONDS) == (True, None)  # late: warm until it is here
